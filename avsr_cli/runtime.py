"""CPU threads for the whole process: one number for torch, onnxruntime and ffmpeg (--threads, AVSR_THREADS).

On a small machine every pool sized on its own oversubscribes the cores (torch, onnxruntime and ffmpeg each
start one), and OpenMP threads that spin at barriers collapse under load: the CLI also sets a passive
OpenMP wait policy before torch loads (cli.app.entrypoint). The process's other settings: malloc hands freed
memory back at once (`return_freed_memory`), and Python's garbage collector stays out of start-up
(`collection_paused`) and of the exit (`skip_final_collection`), and a finished command ends without
tearing the interpreter down (`end_process`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import gc
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

_chosen: int | None = None


def physical_cores() -> int:
    """Cores this process may run on, counting each physical core once (hyper-threads share one)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return usable
    cores, physical = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            physical = value.strip()
        elif key.strip() == "core id":
            cores.add((physical, value.strip()))
    return max(1, min(usable, len(cores) or usable))


def cpu_threads() -> int:
    """The thread count in force: set_cpu_threads's, else the default."""
    return _chosen or default_threads()


def default_threads() -> int:
    """AVSR_THREADS, else the physical cores shared among the processes torchrun started on this machine
    (LOCAL_WORLD_SIZE), so that N ranks on one CPU machine do not each start a pool of every core."""
    env = os.environ.get("AVSR_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    return max(1, physical_cores() // int(local)) if local.isdigit() and int(local) > 0 else physical_cores()


def set_cpu_threads(threads: int | None = None) -> int:
    """Use `threads` (None: AVSR_THREADS, else the physical cores) for torch and the ffmpeg decoders;
    returns the number. Before torch loads, it goes into OMP_NUM_THREADS/MKL_NUM_THREADS, which torch
    reads when it starts (a command that never needs torch does not pay for importing it); once torch is
    loaded, torch.set_num_threads. torch's inter-op pool can be sized only once per process."""
    global _chosen
    if threads is not None and threads < 1:
        raise ValueError("threads must be >= 1")
    _chosen = threads or default_threads()
    if "torch" not in sys.modules:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(_chosen)
        return _chosen
    # lazy: torch is loaded by now (checked above); at the top it would load before OMP_NUM_THREADS is set,
    # and in every command, those that never need torch included
    import torch

    torch.set_num_threads(_chosen)
    try:
        torch.set_num_interop_threads(_chosen)
    except RuntimeError:  # already set, or inter-op work already started
        pass
    return _chosen


M_TRIM_THRESHOLD = -1  # glibc malloc.h


def return_freed_memory() -> bool:
    """Have glibc's malloc hand freed memory back to the system at once (M_TRIM_THRESHOLD 0). Setting it also
    stops malloc from raising its mmap threshold after a large free (up to 32 MB): loading a model frees
    large temporaries, and blocks that later land on the heap between live ones stay resident (one clip's
    peak RSS 731-781 MB without, 674 MB with, the same time). False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 0))
    except (OSError, AttributeError):  # no such library, or no mallopt (musl, macOS)
        return False


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No garbage collection inside, and what was made there frozen after (gc.freeze: left out of later
    collections), for importing torch and loading a model: the collector otherwise walks their ~300,000
    objects again and again as they are made, 0.2 s of importing torch and avsr's modules."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def skip_final_collection() -> None:
    """Leave every object alive now out of the garbage collection Python runs as it exits (gc.freeze): that
    collection walks every object torch's ~1,300 modules made, 0.35 s after an import of torch alone and
    0.3-0.4 s of a one-clip `avsr transcribe`. The process is ending, so it would free nothing the exit does
    not; atexit handlers, stream flushes and module teardown still run."""
    gc.freeze()


def end_process(code: object) -> None:
    """Exit as `sys.exit(code)` would, without tearing the interpreter down: the helper threads finish their
    work, atexit handlers run and the standard streams are flushed, then the process ends (os._exit).
    Tearing down torch's modules and the model's objects took 0.11-0.16 s of every call, and frees nothing
    an ending process needs. Returns (the caller then exits as usual) while a thread it did not start runs."""
    for helper in _helpers.values():
        helper.shutdown(wait=True)
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    atexit._run_exitfuncs()  # noqa: SLF001 - what the interpreter runs before its teardown
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # as SystemExit: a message on stderr, status 1
        print(code, file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # a closed pipe: Python's own exit says 120
            status = status or 120
    os._exit(status)


def cuda_device_for(local_rank: int) -> str:
    """The device of a torchrun rank with --device auto: its own GPU when there are GPUs, else the CPU."""
    import torch  # lazy: as in set_cpu_threads, torch loads only after the thread count is set

    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


_helpers: dict = {}


def helper_thread(name: str):
    """A one-thread executor for side work beside the main thread (mouth crops, face detection ahead), made
    once per process and name. Use it only when cpu_threads() > 1: it is a thread more on the cores."""
    if name not in _helpers:
        _helpers[name] = ThreadPoolExecutor(1, thread_name_prefix=f"avsr-{name}")
    return _helpers[name]


def _forget_helpers() -> None:
    # A forked child (evaluate's worker processes) inherits the executors but not their threads: it would
    # queue work that nothing runs. It makes its own.
    _helpers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)
