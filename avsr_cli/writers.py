"""Output writers (txt, json, srt, vtt, tsv) and atomic file writing."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UsageError
from .transcribe import Result

FORMATS = ("txt", "json", "srt", "vtt", "tsv")


def format_timestamp(seconds: float, decimal: str = ",", always_hours: bool = True) -> str:
    """`HH:MM:SS,mmm` (SRT) or `HH:MM:SS.mmm` (WebVTT); rounds to the millisecond first, so 1.9996 s is
    00:00:02,000, never 00:00:01,1000."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def to_txt(result: Result) -> str:
    return result.text + "\n"


def to_json(result: Result) -> str:
    return json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n"


def to_srt(result: Result) -> str:
    cues = [
        f"{i}\n{format_timestamp(s.start)} --> {format_timestamp(s.end)}\n{s.text}\n"
        for i, s in enumerate(result.segments, start=1)
    ]
    return "\n".join(cues)


def to_vtt(result: Result) -> str:
    cues = [
        f"{format_timestamp(s.start, '.')} --> {format_timestamp(s.end, '.')}\n{s.text}\n"
        for s in result.segments
    ]
    return "\n".join(["WEBVTT\n", *cues])


def to_tsv(result: Result) -> str:
    """Whisper's tsv layout: start and end in integer milliseconds, then the text."""
    rows = ["start\tend\ttext"]
    rows += [
        f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{s.text.replace(chr(9), ' ')}"
        for s in result.segments
    ]
    return "\n".join(rows) + "\n"


WRITERS: dict[str, Callable[[Result], str]] = {
    "txt": to_txt,
    "json": to_json,
    "srt": to_srt,
    "vtt": to_vtt,
    "tsv": to_tsv,
}


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and rename: readers never see a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_dir(output_dir: Path) -> Path:
    """Create `output_dir` if needed and prove it writable before any work is done."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output_dir).close()
    except OSError as exc:
        raise UsageError(f"{output_dir}: output directory is not writable ({exc.strerror or exc})") from None
    return output_dir


def write_result(result: Result, output_dir: Path, formats: list[str]) -> list[Path]:
    """Write `<stem>.<ext>` for each format; returns the paths written."""
    written = []
    for fmt in formats:
        path = Path(output_dir) / f"{Path(result.path).stem}.{fmt}"
        atomic_write_text(path, WRITERS[fmt](result))
        written.append(path)
    return written
