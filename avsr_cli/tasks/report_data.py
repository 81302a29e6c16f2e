"""What a report page is made from: a run's summary.json and results.jsonl read into `Run` and `Clip`, the
conditions, the worst clips, the audio sources (links or embedded excerpts), and whether runs compare.

A page is one self-contained HTML file (inline CSS, JavaScript and SVG plots; nothing fetched), made from
what the folder holds: summary.json (conditions, options, run) and results.jsonl (every clip). It works from
file:// and behind any static server; every path in it is relative to the page's folder (media links too),
so a report folder moved together with its dataset still plays its clips.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import soundfile as sf

from ..errors import UsageError
from .datasets import Item
from .evaluate import prepare_item
from .evaluate_options import CLEAN, EvaluateOptions
from .evaluate_results import read_results
from .scoring import get_normalizer, score

PAGE = "report.html"


@dataclass(frozen=True)
class PageOptions:
    """What a page shows beyond the run itself."""

    worst: int = 20  # clips in the worst-first list
    # Embed the first excerpt_seconds of each worst clip's audio as the model heard it (noise mixed in at the
    # condition's SNR), so the page plays it after being moved away from the dataset; else link the media.
    embed_audio: bool = False
    excerpt_seconds: float = 8.0


@dataclass
class Clip:
    """One row of results.jsonl, scored: word counts, normalised texts and their alignment ops."""

    condition: int  # index into the run's conditions
    id: str
    media: str
    wer: float | None  # None: the clip failed (error)
    counts: dict = field(default_factory=lambda: {"S": 0, "D": 0, "I": 0})
    words: int = 0
    ref: str = ""
    hyp: str = ""
    ops: str = ""  # one of C S D I per aligned word
    error: str | None = None

    @property
    def errors(self) -> int:
        return sum(self.counts.values())


class Paths:
    """A run's paths as its page shows them: relative to the page's folder.

    Relative paths in summary.json and results.jsonl start from the folder the run was started in, which
    summary.json's run.workdir names relative to the report folder (the current folder for older runs)."""

    def __init__(self, folder: Path, page_dir: Path, workdir: str | None) -> None:
        self.base = (Path(folder) / workdir).resolve() if workdir is not None else Path.cwd().resolve()
        self.page_dir = Path(page_dir).resolve()

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.base / p

    def rel(self, path: str) -> str:
        return Path(os.path.relpath(self.resolve(path), self.page_dir)).as_posix()

    def href(self, path: str) -> str:
        return quote(self.rel(path))

    def scrub(self, text: str, media: str | None = None) -> str:
        """`text` (an error message) with the paths it may name relative to the page: `media` as given to
        the run, and any path under the run's folder or the home folder."""
        if media and not Path(media).is_absolute():
            text = text.replace(media, self.rel(media))
        roots = {str(self.base): self.rel(str(self.base)), str(Path.home()): "~"}
        for root in sorted(roots, key=len, reverse=True):
            if len(root) > 1:
                text = text.replace(root + os.sep, roots[root] + "/")
        return text


@dataclass
class Run:
    """A report folder read back: its summary, its clips scored, and how the page names its paths."""

    folder: Path
    summary: dict
    rows: list[dict]
    label: str = ""
    clips: list[Clip] = field(default_factory=list)
    paths: Paths | None = None

    @property
    def conditions(self) -> list[dict]:
        return self.summary["conditions"]

    @property
    def info(self) -> dict:
        return self.summary.get("run") or {}


def load_run(folder: str | Path) -> Run:
    """Read a report folder (summary.json and results.jsonl); UsageError naming what is missing or bad."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a report folder")
    path = folder / "summary.json"
    if not path.is_file():
        raise UsageError(
            f"{folder}: no summary.json (not an avsr evaluate report folder; shards: evaluate-merge first)"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    missing = [k for k in ("dataset", "normalizer", "conditions", "options") if k not in summary]
    if not isinstance(summary, dict) or missing:
        raise UsageError(f"{path}: not an avsr evaluate summary (no {', '.join(missing) or 'object'})")
    results = folder / "results.jsonl"
    if not results.is_file():
        raise UsageError(f"{folder}: no results.jsonl beside summary.json")
    rows = read_results(results)
    for row in rows:
        row.setdefault("occlusion", "none")
    return Run(folder, summary, rows)


def condition_key(c: dict) -> tuple[str, str, str]:
    return c["mode"], c["snr"], c.get("occlusion", "none")


def condition_label(c: dict) -> str:
    """`asr · 5 dB`, `avsr · clean · gaussian_blur 3`."""
    mode, snr, occlusion = condition_key(c)
    parts = [mode, "clean" if snr == "clean" else f"{snr} dB"]
    if occlusion != "none":
        parts.append(occlusion.replace(":", " "))
    return " · ".join(parts)


def score_clips(run: Run) -> list[Clip]:
    """Every row of the run scored under its normaliser, in condition order then id order."""
    normalizer = get_normalizer(run.summary["normalizer"])
    index = {condition_key(c): i for i, c in enumerate(run.conditions)}
    by_condition: dict[int, list[dict]] = {}
    for row in run.rows:
        i = index.get((row["mode"], row["snr"], row["occlusion"]))
        if i is not None:
            by_condition.setdefault(i, []).append(row)
    clips = []
    for i in sorted(by_condition):
        rows = sorted(by_condition[i], key=lambda r: r["id"])
        ok = [r for r in rows if r.get("error") is None]
        scored = iter(score([(r["ref"], r["hyp"] or "") for r in ok], normalizer).rows)
        for row in rows:
            if row.get("error") is not None:
                clips.append(Clip(i, row["id"], row.get("media", ""), None, error=str(row["error"])))
                continue
            u = next(scored)
            counts = {"S": u.substitutions, "D": u.deletions, "I": u.insertions}
            ops = "".join(op for op, _, _ in u.alignment)
            clips.append(
                Clip(
                    i,
                    row["id"],
                    row.get("media", ""),
                    u.wer,
                    counts,
                    u.ref_words,
                    u.ref_norm,
                    u.hyp_norm,
                    ops,
                )
            )
    return clips


def worst_clips(clips: list[Clip], n: int) -> list[Clip]:
    """The n scored clips with the highest WER (then most errors, then condition and id order)."""
    scored = [c for c in clips if c.wer is not None]
    return sorted(scored, key=lambda c: (-c.wer, -c.errors, c.condition, c.id))[:n]


def prepare(runs: list[Run], page_dir: Path) -> None:
    """Score each run's clips, set how its paths are shown from `page_dir`, and give each run a label."""
    names = [r.folder.resolve().name or "run" for r in runs]
    for run, name in zip(runs, names, strict=True):
        run.paths = Paths(run.folder, page_dir, run.info.get("workdir"))
        run.clips = score_clips(run)
        run.label = name if names.count(name) == 1 else run.paths.rel(str(run.folder.resolve()))


def check_comparable(runs: list[Run]) -> None:
    """Runs share a page only when their WERs mean the same thing: the same clips with the same references,
    scored under the same normaliser, with the same noise where both add noise. Else UsageError naming it."""
    first = runs[0]
    refs = {r["id"]: r["ref"] for r in first.rows}
    for run in runs[1:]:
        a, b = first.summary, run.summary
        why = f"cannot share axes with {first.folder}"
        if a["normalizer"] != b["normalizer"]:
            raise UsageError(
                f"{run.folder}: normaliser {b['normalizer']}, not {a['normalizer']}: {why} "
                "(score both with one --normalizer)"
            )
        other = {r["id"]: r["ref"] for r in run.rows}
        if other != refs:
            same = len(set(other.items()) & set(refs.items()))
            raise UsageError(
                f"{run.folder}: dataset {b['dataset']} ({len(other)} clips), not {a['dataset']} ({len(refs)} "
                f"clips; {same} the same): {why}"
            )
        noisy = [any(c["snr"] != "clean" for c in s["conditions"]) for s in (a, b)]
        if all(noisy) and a["options"].get("noise") != b["options"].get("noise"):
            raise UsageError(
                f"{run.folder}: noise {b['options'].get('noise')}, not {a['options'].get('noise')}: {why}"
            )


def audio_excerpt(run: Run, clip: Clip, seconds: float) -> str | None:
    """A data: URI of the clip's first `seconds` of audio as its condition heard it (noise mixed in at the
    condition's SNR, seeded as the run did); None when the media or the noise file cannot be read."""
    options = run.summary["options"]
    noise = options.get("noise", "babble")
    noise = noise if noise in ("white", "babble") else str(run.paths.resolve(noise))
    snr = run.conditions[clip.condition]["snr"]
    media = run.paths.resolve(clip.media)
    opts = EvaluateOptions(noise=noise, seed=options.get("seed", 0))
    try:
        heard = prepare_item(
            Item(clip.id, media, ""), "asr", CLEAN if snr == "clean" else float(snr), "none", opts
        )
    except (OSError, ValueError):  # the noise file is gone: link the media instead
        return None
    if heard.error is not None or heard.audio is None or not len(heard.audio):
        return None
    audio = heard.audio[: int(seconds * 16000)]
    buf = io.BytesIO()
    if "MP3" in sf.available_formats():  # about 16 kbit/s: speech stays clear, 8 s take 21 kB as base64
        sf.write(
            buf,
            audio,
            16000,
            format="MP3",
            subtype="MPEG_LAYER_III",
            compression_level=0.95,
            bitrate_mode="CONSTANT",
        )
        mime = "audio/mpeg"
    else:  # libsndfile before 1.1 writes no MP3
        sf.write(buf, audio, 16000, format="WAV", subtype="PCM_16")
        mime = "audio/wav"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def audio_sources(run: Run, clips: list[Clip], options: PageOptions) -> list[str]:
    """Per listed clip, the src of its player: an embedded excerpt if asked (and readable), else its media."""
    sources = []
    for clip in clips:
        src = audio_excerpt(run, clip, options.excerpt_seconds) if options.embed_audio else None
        sources.append(src or run.paths.href(clip.media))
    return sources


def finite(value) -> float:
    """A WER from summary.json as a float ("inf" is how JSON spells an infinite one)."""
    return value if isinstance(value, int | float) else math.inf
