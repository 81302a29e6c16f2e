"""Run a command on a pseudo-terminal of a fixed size, as a person at a terminal would, and read what the
terminal showed."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_pty(
    args: list[str], columns: int, env: dict | None = None, stdout=None, timeout: float = 600
) -> tuple[int, str]:
    """(exit status, everything written to the terminal) of `python -m avsr_cli ARGS` with stdin, stderr and
    (unless `stdout` is given, e.g. an open file) stdout on a terminal `columns` wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    environ = {**os.environ, "TERM": "xterm-256color", **(env or {})}
    for name in ("COLUMNS", "LINES", "NO_COLOR"):  # the terminal's own size, as a user's shell has it
        environ.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "avsr_cli", *map(str, args)],
        stdin=slave,
        stdout=slave if stdout is None else stdout,
        stderr=slave,
        env=environ,
        close_fds=True,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=timeout), b"".join(chunks).decode("utf-8", errors="replace")


def visible_lines(screen: str) -> list[str]:
    """Each line as it was left on the terminal: escape sequences dropped, and of text rewritten in place
    (after a carriage return) only the last."""
    lines = []
    for line in screen.split("\n"):
        lines.append(ANSI.sub("", line).rstrip("\r").split("\r")[-1])
    return lines
