"""Output writers (txt, json, srt, vtt, tsv) and atomic file writing."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError, UsageError
from ..storage import atomic_write_text, display_name
from .subtitles import CueOptions, clean_segments, make_cues
from .transcript import Result, Segment
from .word_cues import word_cues

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


def to_txt(result: Result, cues: CueOptions | None = None) -> str:
    """One line per segment (a short clip is one segment; a long file, one per speech chunk)."""
    return "".join(s.text + "\n" for s in result.segments) or "\n"


def to_json(result: Result, cues: CueOptions | None = None) -> str:
    return json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n"


def _cue_lines(text: str) -> list[str]:
    return [line for line in (" ".join(line.split()) for line in text.splitlines()) if line]


def srt_text(cues: Iterable[Segment]) -> str:
    """SubRip text: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, blank line between cues."""
    blocks = []
    for c in cues:
        lines = _cue_lines(c.text)
        if lines:
            stamp = f"{format_timestamp(c.start)} --> {format_timestamp(c.end)}"
            blocks.append("\n".join([str(len(blocks) + 1), stamp, *lines]) + "\n")
    return "\n".join(blocks)


def _vtt_escape(line: str) -> str:
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt_text(cues: Iterable[Segment], escaped: bool = False) -> str:
    """WebVTT text: `WEBVTT` header, `HH:MM:SS.mmm --> HH:MM:SS.mmm` cues; & < > escaped (a `-->` in the
    text would otherwise end the cue timing) unless `escaped` says the cues' text already is, markup kept."""
    blocks = ["WEBVTT\n"]
    for c in cues:
        lines = [line if escaped else _vtt_escape(line) for line in _cue_lines(c.text)]
        if lines:
            stamp = f"{format_timestamp(c.start, '.')} --> {format_timestamp(c.end, '.')}"
            blocks.append("\n".join([stamp, *lines]) + "\n")
    return "\n".join(blocks)


def cues_of(
    result: Result, options: CueOptions | None = None, escape: Callable[[str], str] = str
) -> list[Segment]:
    """Subtitle cues of a result: repeat loops collapsed, lines <= 42 chars, <= 2 lines, timed by the words
    when the segments have them, else by the segmentation (see subtitles.py); in whisper's word layout when
    the options ask for it (word_cues.py, whose text `escape` makes safe for the format)."""
    options = options or CueOptions()
    segments = clean_segments(result.segments)
    return word_cues(segments, options, escape) if options.word_layout else make_cues(segments, options)


def to_srt(result: Result, cues: CueOptions | None = None) -> str:
    return srt_text(cues_of(result, cues))


def to_vtt(result: Result, cues: CueOptions | None = None) -> str:
    if cues is not None and cues.word_layout:  # words escaped one by one, so <u> stays markup
        return vtt_text(cues_of(result, cues, _vtt_escape), escaped=True)
    return vtt_text(cues_of(result, cues))


def to_tsv(result: Result, cues: CueOptions | None = None) -> str:
    """Whisper's tsv layout (start and end in integer milliseconds, the text), then the segment's
    avg_logprob and low_confidence (1 or 0), as faster-whisper reports them."""
    rows = ["start\tend\ttext\tavg_logprob\tlow_confidence"]
    for s in result.segments:
        score = "" if s.avg_logprob is None else f"{s.avg_logprob:.4f}"
        text = " ".join(s.text.split())  # no tab or newline inside a field
        rows.append(
            f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{text}\t{score}\t{int(s.low_confidence)}"
        )
    return "\n".join(rows) + "\n"


# Each writer takes the result and, for subtitle formats, the cue layout options.
WRITERS: dict[str, Callable[[Result, CueOptions | None], str]] = {
    "txt": to_txt,
    "json": to_json,
    "srt": to_srt,
    "vtt": to_vtt,
    "tsv": to_tsv,
}


def check_output_dir(output_dir: Path) -> Path:
    """Create `output_dir` if needed and prove it writable before any work is done."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output_dir).close()
    except OSError as exc:
        raise UsageError(f"{output_dir}: output directory is not writable ({exc.strerror or exc})") from None
    return output_dir


def output_paths(
    source: str | Path, output_dir: Path, formats: Iterable[str], stem: str | None = None
) -> list[Path]:
    """Where the outputs of `source` go: `<output_dir>/<stem>.<ext>` per format (stem: the file's own)."""
    stem = stem if stem is not None else Path(source).stem
    return [Path(output_dir) / f"{stem}.{fmt}" for fmt in formats]


_SRT_TIME = r"\d{2,}:\d{2}:\d{2},\d{3}"
_SRT_CUE = re.compile(rf"\d+\n{_SRT_TIME} --> {_SRT_TIME}[^\n]*\n[^\n]+(\n[^\n]+)*")
_VTT_TIME = r"(\d{2,}:)?\d{2}:\d{2}\.\d{3}"
_VTT_CUE = re.compile(rf"([^\n]*\n)?{_VTT_TIME} --> {_VTT_TIME}[^\n]*\n[^\n]+(\n[^\n]+)*")
_TSV_TIMES = re.compile(r"-?\d+\t-?\d+\t")


def _parses(fmt: str, text: str) -> bool:
    """Whether `text` is a whole output of `fmt` (json, srt, vtt, tsv): it parses, and the formats written
    line by line end with their last newline, so a copy cut inside a cue or a row is caught."""
    if fmt == "json":
        try:
            return isinstance(json.loads(text), dict)
        except ValueError:
            return False
    if fmt == "txt":
        return True
    if not text.endswith("\n"):
        return False
    if fmt == "srt":
        return all(_SRT_CUE.fullmatch(block) for block in text.strip("\n").split("\n\n"))
    if fmt == "vtt":
        head, *blocks = text.strip("\n").split("\n\n")
        return (head == "WEBVTT" or head.startswith(("WEBVTT ", "WEBVTT\t", "WEBVTT\n"))) and all(
            _VTT_CUE.fullmatch(b) or b.startswith(("NOTE", "STYLE", "REGION")) for b in blocks
        )
    if fmt == "tsv":
        header, *rows = text.rstrip("\n").split("\n")
        columns = header.count("\t")
        return header.startswith("start\tend\ttext") and all(
            _TSV_TIMES.match(row) and row.count("\t") == columns for row in rows
        )
    return True


FORMAT_NAMES = {"json": "JSON", "srt": "SubRip (srt)", "vtt": "WebVTT", "tsv": "tab-separated values"}


def incomplete_output(path: Path, fmt: str) -> str | None:
    """Why the existing output `path` of format `fmt` cannot be kept as done (it is empty, not UTF-8 text,
    or does not parse: a half-written copy), or None when it is whole."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not data:
        return "is empty"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    return None if _parses(fmt, text) else f"does not parse as {FORMAT_NAMES.get(fmt, fmt)}"


@dataclass(frozen=True)
class Planned:
    """What to do with one input of a batch: run it or not, and, when some of its outputs exist, why they
    are made again ("DIR/a.json does not parse as JSON", "DIR/a.tsv is missing")."""

    run: bool
    redo: tuple[str, ...] = ()


def plan_outputs(
    sources: list[tuple[str, str | None]], output_dir: Path, formats: list[str], existing: str = "error"
) -> list[Planned]:
    """Check a batch's outputs before any work: two inputs that would write the same file (`a.wav` and
    `a.m4a` both write `a.txt`) are a UsageError; so are outputs already there, unless `existing` is
    "overwrite" or "skip". With "skip" an input is skipped when all its outputs exist whole: one that is
    missing, empty or does not parse (`incomplete_output`) is made again. `sources` are (input, stem or
    None). Returns, per input, what to do."""
    owners: dict[Path, str] = {}
    for source, stem in sources:
        for path in output_paths(source, output_dir, formats, stem):
            key = Path(str(path).casefold())  # a case-insensitive file system would collide too
            if key in owners and owners[key] != source:
                raise UsageError(
                    f"{display_name(owners[key])} and {display_name(source)} would both write "
                    f"{display_name(path)}: use separate --output-dir folders, or rename one"
                )
            owners[key] = source
    run = []
    clashes = []
    for source, stem in sources:
        # os.path.exists: a name the file system refuses (too long) is not there; writing it fails per file
        paths = output_paths(source, output_dir, formats, stem)
        there = [p for p in paths if os.path.exists(p)]
        if there and existing == "error":
            clashes += there
        if existing != "skip" or not there:
            run.append(Planned(True))
            continue
        redo = []
        for fmt, path in zip(formats, paths, strict=True):
            why = incomplete_output(path, fmt) if path in there else "is missing"
            if why is not None:
                redo.append(f"{display_name(path)} {why}")
        run.append(Planned(bool(redo), tuple(redo)))
    if clashes:
        more = f" and {len(clashes) - 1} more already exist" if len(clashes) > 1 else " already exists"
        raise UsageError(
            f"{display_name(clashes[0])}{more}: pass --overwrite to replace them or "
            "--skip-existing to leave them and transcribe only the rest"
        )
    return run


def write_result(
    result: Result,
    output_dir: Path,
    formats: list[str],
    cues: CueOptions | None = None,
    stem: str | None = None,
) -> list[Path]:
    """Write `<stem>.<ext>` for each format; returns the paths written. Raises OutputError (and leaves none
    of them) when one cannot be written."""
    written: list[Path] = []
    for fmt, path in zip(formats, output_paths(result.path, output_dir, formats, stem), strict=True):
        try:
            atomic_write_text(path, WRITERS[fmt](result, cues))
        except OSError as exc:  # disk full, name too long, no permission: none of this input's outputs stay
            for done in written:
                done.unlink(missing_ok=True)
            raise OutputError(
                f"{display_name(result.path)}: cannot write {display_name(path)} ({exc.strerror or exc})"
            ) from None
        written.append(path)
    return written
