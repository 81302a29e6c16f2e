"""What a run keeps in its output folder to resume: the training state (adapter, optimizer, schedule,
position, random streams), written whole or not at all, and read back with nothing unpickled."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

from ...errors import OutputError, UsageError
from ...storage import atomic_path

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "training.json"


@contextmanager
def saving(path: Path, what: str) -> Iterator[Path]:
    """A temporary path to save `what` into, renamed over `path` once written and synced to disk, so the
    previous file stays whole until the new one is; a failed write (a full disk) is an OutputError."""
    try:
        with atomic_path(path, durable=True) as tmp:
            yield tmp
    except (OSError, RuntimeError, SafetensorError) as exc:  # torch.save: RuntimeError (iostream error)
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else "the write failed: disk full?"
        raise OutputError(
            f"{path}: cannot save {what} ({detail}); the one saved before is kept: make room and run the "
            "same command again to resume from it"
        ) from exc


STATE_KEYS = ("adapter", "optimizer", "scheduler", "step", "epoch", "batch_pos", "losses", "validations")
STATE_KEYS += ("rng", "torch_rng")


def read_train_state(path: Path) -> dict:
    """The resumable state saved in a run's folder, read whole (torch.load with weights_only: tensors and
    plain containers, nothing unpickled). A state that cannot be read (truncated by a full disk or a killed
    copy, or not a state at all) is a UsageError naming the ways out: --no-resume, or the last epoch
    adapter as the checkpoint to fine-tune on from."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        complete = isinstance(state, dict) and all(k in state for k in STATE_KEYS)
    except Exception:  # torch raises RuntimeError, EOFError or UnpicklingError for a broken file
        complete = False
    if complete:
        return state
    empty = path.is_file() and path.stat().st_size == 0
    out = path.parent
    epochs = sorted((out / "epochs").glob("epoch*.safetensors")) if (out / "epochs").is_dir() else []
    keep = (
        f", or train on from the last epoch adapter {epochs[-1]} (copy it into a folder as "
        f"adapter.safetensors with {out / 'train_config.json'} as config.json, and give that folder to "
        "--checkpoint)"
        if epochs and (out / "train_config.json").is_file()
        else ""
    )
    what = "empty" if empty else "truncated or corrupt"
    raise UsageError(
        f"{path}: cannot resume: the training state is unreadable ({what}): start over with --no-resume "
        f"(it removes the state and the epoch adapters){keep}"
    )


def rng_tensor(state) -> torch.Tensor:
    version, internal, gauss = state
    return torch.tensor([version, *internal, -1 if gauss is None else 1], dtype=torch.int64)


def rng_state(t: torch.Tensor):
    values = t.tolist()
    return values[0], tuple(values[1:-1]), None
