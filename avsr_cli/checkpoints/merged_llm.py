"""A merged decoder kept on disk: a card's LLM with its LoRA folded in and its matrices stored as the card's
`llm.cpu_matrices` says, written to the cache by the first load and read straight by the next ones, which
then skip converting the LLM's weights and merging its LoRA (most of a one-clip call's load)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError
from ..modeling.config import ADAPTER_FILE, CONFIG_FILE, ModelConfig, weights_file
from ..modeling.llama import LlamaDecoder
from ..modeling.llama_config import LlamaSettings, SafetensorsReader
from ..storage import atomic_path, cache_root

log = logging.getLogger(__name__)

FORMAT = "avsr-merged-llm/1"
KEEP = 4  # decoders kept in all (e.g. one per clone of avsr); the least recently used beyond go


@dataclass(frozen=True)
class MergedEntry:
    """Where the merged decoder of a checkpoint is kept (`path`), and what it is made of (`key`)."""

    key: str
    path: Path


def merged_llm_dir() -> Path:
    return cache_root() / "merged-llm"


def merged_llm_entry(config: ModelConfig, ckpt_dir: Path, llm_dir: Path, matrices: str) -> MergedEntry:
    """The key: every file of the LLM's directory, the checkpoint's config and adapter (each by path, size
    and modification time), the matrices' storage and torch's version. The file is named by the checkpoint
    folder and the key, so a new adapter replaces its folder's older decoder."""
    files = [p for p in sorted(Path(llm_dir).iterdir()) if p.is_file()]
    files += [Path(ckpt_dir) / CONFIG_FILE, Path(ckpt_dir) / ADAPTER_FILE]
    if (weights := weights_file(config.llm.weights, ckpt_dir)) is not None:
        files.append(weights)
    identity = []
    for path in files:
        st = path.stat()
        identity.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    key = json.dumps(
        {"format": FORMAT, "matrices": matrices, "torch": torch.__version__, "files": identity},
        sort_keys=True,
    )
    name = f"{_digest(str(Path(ckpt_dir).resolve()))}-{_digest(key)}.safetensors"
    return MergedEntry(key, merged_llm_dir() / name)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_merged_llm(entry: MergedEntry, llm_dir: Path) -> LlamaDecoder | None:
    """The decoder kept for `entry`; None when there is none or it does not match (then the caller builds it
    and saves it again). Its matrices are read into memory; the embedding stays a memory map of the file,
    of which lookups touch a few rows."""
    path, key = entry.path, entry.key
    if not path.is_file():
        return None
    embed_name = "model.embed_tokens.weight"
    try:
        reader = SafetensorsReader([path])
        if reader.metadata.get("key") != key:
            return None
        state = {
            n: reader.mapped(n) if n == embed_name else reader.read(n, reader.stored_dtype(n))
            for n in reader.names()
        }
        settings = replace(LlamaSettings.read(llm_dir), vocab_size=state[embed_name].shape[0])
        model = LlamaDecoder(settings, state).eval()
    except (CheckpointError, KeyError, RuntimeError, ValueError) as exc:
        log.debug("merged decoder %s not used: %s", path, exc)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used (save_merged_llm removes the least recently used)
    return model


def save_merged_llm(entry: MergedEntry, llm: LlamaDecoder) -> None:
    """Write `llm` for `entry` (atomically), removing the older decoders of the same checkpoint folder and
    all but the `KEEP` most recently used. A cache that cannot be written only costs the next load time."""
    path = entry.path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in llm.stored_state().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"key": entry.key})
        folder = path.name.split("-", 1)[0]
        kept = sorted(path.parent.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
        for rank, old in enumerate(kept):
            if old != path and (rank >= KEEP or old.name.startswith(f"{folder}-")):
                old.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("merged decoder not saved to %s: %s", path, exc)
