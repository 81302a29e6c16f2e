"""Where avsr keeps things and how it writes them: cache roots, the one atomic-write helper (with the
umask's permissions), atomic cache folders, and safe joins of untrusted names under a root."""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import IO

from .errors import UnsafeNameError, UsageError


def cache_root() -> Path:
    """Where avsr keeps converted and downloaded models (`AVSR_CACHE`, default ~/.cache/avsr)."""
    return Path(os.environ.get("AVSR_CACHE") or Path.home() / ".cache" / "avsr")


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface-hub reads it: avsr fetches nothing then."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


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


def side_packages_dir() -> Path:
    """Where `make install` puts packages that only carry model files or whose pins clash with the main
    environment (the PyPI model wheels, mediapipe, face-alignment): `pip install --target`, outside
    site-packages, so `pip check` stays clean. AVSR_PACKAGES overrides it."""
    return Path(os.environ.get("AVSR_PACKAGES") or Path(sys.prefix) / "share" / "avsr" / "packages")


def _side_spec(module: str) -> ModuleSpec | None:
    side = side_packages_dir()
    return importlib.machinery.PathFinder.find_spec(module, [str(side)]) if side.is_dir() else None


def package_spec(module: str) -> ModuleSpec | None:
    """The spec of top-level package `module`, found without importing it and without changing sys.path:
    the environment's own packages first (they keep precedence), then side_packages_dir()."""
    return importlib.util.find_spec(module) or _side_spec(module)


def package_version(dist: str) -> str | None:
    """The version of distribution `dist`: installed in the environment (which keeps precedence), else in
    side_packages_dir(); None when neither has its metadata. sys.path is not changed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    side = side_packages_dir()
    found = importlib.metadata.distributions(name=dist, path=[str(side)]) if side.is_dir() else ()
    return next((d.version for d in found), None)


def find_package(module: str) -> ModuleSpec | None:
    """package_spec(module), made importable: a package found only in side_packages_dir() gets that folder
    appended to sys.path, after the environment's own packages, which keep precedence. The append stays
    because callers import what this finds: the face backends (frontends/face_backends.py) import
    mediapipe and face-alignment from there, whose pins clash with the environment's. Mere lookups use
    package_spec."""
    spec = importlib.util.find_spec(module)
    if spec is None and (spec := _side_spec(module)) is not None:
        side = str(side_packages_dir())
        if side not in sys.path:
            sys.path.append(side)
            importlib.invalidate_caches()
    return spec


def display_name(path: str | os.PathLike) -> str:
    """A path as text that can always be printed or stored as UTF-8: undecodable bytes of a file name
    (Python keeps them as surrogates) become `\\xNN`."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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
def atomic_path(path: Path | str, suffix: str = ".tmp", durable: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (ffmpeg, safetensors,
    torch.save): renamed over `path` with the usual permissions when the block ends without error, removed
    otherwise, so no partial file is ever seen under `path`. `durable`: the file's data reach the disk
    before the rename (and the rename after it), so a power cut leaves the old file or the whole new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
        if durable:
            with contextlib.suppress(OSError):  # some file systems cannot sync a folder; the data are synced
                _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: Path | str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside `path` and rename it over `path` when the block ends without error; on any
    error (a full disk, a kill) nothing partial stays. The file gets the usual permissions (0666 less the
    umask), not mkstemp's 0600, so a media server running as another user can read outputs."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
        yield f


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` (UTF-8) atomically: readers see the old file or the whole new one."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def exclusive_lock(folder: Path, user: str) -> Iterator[None]:
    """Hold `folder`'s lock (`.avsr.lock`, filelock) while the block runs; if another process holds it,
    raise UsageError saying who (pid, host, since when) instead of waiting."""
    from filelock import FileLock, Timeout  # lazy: 70 ms (asyncio) that --help and most commands never need

    folder = Path(folder)
    owner = folder / ".avsr.lock.owner"
    lock = FileLock(str(folder / ".avsr.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            who = json.loads(owner.read_text())
            holder = f"{who['user']} (pid {who['pid']} on {who['host']}, since {who['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            holder = "another process"
        raise UsageError(f"{folder} is in use by {holder}: wait for it or choose another folder") from None
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        record = {"user": user, "pid": os.getpid(), "host": socket.gethostname(), "since": since}
        atomic_write_text(owner, json.dumps(record) + "\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


@contextlib.contextmanager
def atomic_dir(final: Path, on_exists: str = "keep") -> Iterator[Path]:
    """A temporary folder beside `final` (`.<name>.tmp-<host>@<pid>-*`) to fill; when the block ends without
    error it gets the usual permissions and is renamed into place, so readers see no folder or a complete
    one. If `final` exists by then: "keep" it (a concurrent run built the same cache entry), "replace" it,
    or raise FileExistsError ("error"). On error nothing is left."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name[:100]}.tmp-{socket.gethostname()}@{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    try:
        yield tmp
        set_usual_modes(tmp)
        if final.exists() and on_exists == "replace":
            shutil.rmtree(final)
        if final.exists() and on_exists == "error":
            raise FileExistsError(f"{final} already exists")
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_cache_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Make the cache folder `final` atomically with `build(tmp)`; a concurrent run's folder is kept."""
    with atomic_dir(final) as tmp:
        build(tmp)
    return final


def set_usual_modes(folder: Path) -> None:
    """mkdtemp makes 0700 and mkstemp 0600; a shared cache wants 0777/0666 less the umask."""
    mask = current_umask()
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
