"""Where avsr keeps things and how it writes them: cache roots, the one atomic-write helper (with the
umask's permissions), atomic cache folders, and safe joins of untrusted names under a root."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import UnsafeNameError


def cache_root() -> Path:
    """Where avsr keeps converted and downloaded models (`AVSR_CACHE`, default ~/.cache/avsr)."""
    return Path(os.environ.get("AVSR_CACHE") or Path.home() / ".cache" / "avsr")


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is process-wide)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def safe_join(root: Path | str, *names: str) -> Path:
    """`root/name/...` for names that come from outside (cards, servers, checkpoints, file names).

    Each name must be relative and the joined path must stay inside `root` once `..` are folded: no
    absolute paths, no escaping `..`, no NUL, no empty name. The check is lexical (links inside the root are
    the cache's own, such as huggingface-hub's snapshot links). Raises UnsafeNameError naming the offender.
    """
    root = Path(root)
    for name in names:
        text = os.fspath(name)
        if not text or "\0" in text or Path(text).is_absolute():
            raise UnsafeNameError(f"unsafe name {text!r}: not a plain relative name under {root}")
    base = os.path.normpath(os.path.abspath(root))
    joined = os.path.normpath(os.path.join(base, *map(os.fspath, names)))
    if joined == base or not joined.startswith(base.rstrip(os.sep) + os.sep):
        raise UnsafeNameError(f"unsafe name {'/'.join(map(os.fspath, names))!r}: it leads outside {root}")
    return root.joinpath(*names)


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside `path` and rename it over `path` when the block ends without error; on any
    error (a full disk, a kill) nothing partial stays. The file gets the usual permissions (0666 less the
    umask), not mkstemp's 0600, so a media server running as another user can read outputs."""
    path = Path(path)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` (UTF-8) atomically: readers see the old file or the whole new one."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def build_cache_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Make the cache folder `final` atomically: `build(tmp)` fills a temporary folder beside it (named
    `.<name>.tmp-<host>@<pid>-*`), which gets the usual permissions and is renamed into place, so readers see
    no folder or a complete one. If a concurrent run got there first, its folder is used."""
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-{socket.gethostname()}@{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    try:
        build(tmp)
        set_usual_modes(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def set_usual_modes(folder: Path) -> None:
    """mkdtemp makes 0700 and mkstemp 0600; a shared cache wants 0777/0666 less the umask."""
    mask = current_umask()
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
