"""`-` as an input: standard input copied to a temporary file (the decoders seek), removed however the
command ends, and named `- (standard input)` in every message, never by its temporary copy."""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from ..errors import AvsrError
from .app import fail

STDIN = "-"
STDIN_STEM = "stdin"  # outputs of `-` are DIR/stdin.<ext>
STDIN_NAME = "- (standard input)"  # how messages name `-` (never by its temporary copy)
# Signals that end the command: their handlers raise, so the temporary copy of `-` is removed as on Ctrl-C.
ENDING_SIGNALS = ("SIGTERM", "SIGHUP")


class _Ended(BaseException):
    """A signal in ENDING_SIGNALS came: unwind (finally blocks run), then die of it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _unwound_on_ending_signals():
    """While the block runs, SIGTERM and SIGHUP unwind it as Ctrl-C does (their default is to end the
    process at once, leaving temporary files behind); the process then dies of the signal, as it would
    have, so a shell or supervisor sees the same status."""
    if threading.current_thread() is not threading.main_thread():  # handlers belong to the main thread
        yield
        return

    def ended(signum, frame):
        raise _Ended(signum)

    numbers = [getattr(signal, name) for name in ENDING_SIGNALS if hasattr(signal, name)]
    # only where the signal would end the process: one ignored (nohup) or handled by an embedder stays so
    previous = {n: signal.signal(n, ended) for n in numbers if signal.getsignal(n) == signal.SIG_DFL}
    try:
        yield
    except _Ended as exc:
        for n, handler in previous.items():
            signal.signal(n, handler)
        signal.signal(exc.signum, signal.SIG_DFL)
        os.kill(os.getpid(), exc.signum)
        raise
    finally:
        for n, handler in previous.items():
            signal.signal(n, handler)


@contextmanager
def stdin_as_file(files: list[Path]):
    """`-` becomes a temporary copy of standard input (ffprobe and the decoders need to seek; ffmpeg
    reading a pipe cannot); yields (paths, {temporary path: "-"}). The copy is removed however the command
    ends: done, failed, Ctrl-C, SIGTERM or SIGHUP."""
    if STDIN not in map(str, files):
        yield list(files), {}
        return
    if sys.stdin is None or sys.stdin.isatty():
        raise fail("- reads media from standard input, but standard input is a terminal")
    with _unwound_on_ending_signals():
        folder = Path(tempfile.mkdtemp(prefix="avsr-stdin-"))
        try:
            spooled = folder / STDIN_STEM
            with open(spooled, "wb") as out:
                _copy_stdin(out)
            if spooled.stat().st_size == 0:
                raise fail(f"{STDIN_NAME}: no data was given")
            yield [spooled if str(f) == STDIN else f for f in files], {str(spooled): STDIN}
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _copy_stdin(out) -> None:
    """Standard input into `out`, waking at least twice a second: a signal that the kernel hands to another
    thread (torch starts some) does not end a blocked read, so Ctrl-C or SIGTERM would wait for more input
    that may never come; between reads, Python runs the handler."""
    source = getattr(sys.stdin, "buffer", sys.stdin)
    try:
        fd = source.fileno()
    except (AttributeError, OSError, ValueError):  # not a file descriptor (an embedding's stream)
        shutil.copyfileobj(source, out, 1 << 20)
        return
    while True:
        if not select.select([fd], [], [], 0.5)[0]:
            continue  # nothing yet: back to select, after any signal handler has run
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return
        out.write(chunk)


def relabelled(text: str, labels: dict[str, str]) -> str:
    """`text` with the temporary copy of `-` named as the user gave it: `- (standard input)`."""
    for path in labels:
        text = text.replace(path, STDIN_NAME)
    return text


def named(exc: AvsrError, labels: dict[str, str]) -> AvsrError:
    """`exc`, its message `relabelled`."""
    exc.args = (relabelled(str(exc), labels),)
    return exc
