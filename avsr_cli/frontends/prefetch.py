"""Work on one file done ahead on the helper thread (`runtime.helper_thread`), for a caller that has other
work to do first: `start_prefetch` runs it, and `prefetched_for` hands its results to whoever asks for the
same unchanged file (media.py: its probe and its audio). One file at a time; nothing is done ahead on a
single core."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..runtime import cpu_threads, helper_thread


@dataclass
class Prefetched:
    """What was learnt of one file ahead, identified by `key` (file_key)."""

    key: tuple[int, ...]
    done: Future | None = None
    info: Any = None  # media.MediaInfo
    blocks: list | None = None  # media.iter_audio's blocks, the whole stream

    def take_blocks(self) -> list | None:
        blocks, self.blocks = self.blocks, None  # once: a second reading decodes again
        return blocks


_current: Prefetched | None = None


def start_prefetch(path: str | os.PathLike, work: Callable[[Prefetched], None]) -> None:
    """Run `work` on a new Prefetched of `path` on the helper thread, replacing the last one. A failure of
    `work` is dropped: the caller does the same work again and reports what fails."""
    global _current
    if cpu_threads() < 2:
        return
    try:
        key = file_key(path)
    except OSError:
        return
    job = _current = Prefetched(key)
    job.done = helper_thread("prefetch").submit(_quietly, work, job)


def _quietly(work: Callable[[Prefetched], None], job: Prefetched) -> None:
    try:
        work(job)
    except Exception:  # noqa: BLE001 - done again, and reported, by the caller
        pass


def prefetched_for(path: str | os.PathLike) -> Prefetched | None:
    """The prefetch of `path` if one was started for this very file, unchanged since (finished first)."""
    job = _current
    if job is None or job.done is None:
        return None
    try:
        if file_key(path) != job.key:
            return None
    except OSError:
        return None
    job.done.result()
    return job


def file_key(path: str | os.PathLike) -> tuple[int, ...]:
    """The identity of a file's contents as far as stat tells: device, inode, size, modification time."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device is never opened ahead of its checks
        raise OSError(f"{path}: not a regular file")
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
