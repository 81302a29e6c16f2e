"""Batch scoring of a dataset: transcribe every clip under each condition (mode x SNR), score, report.

Rows are appended to `results.jsonl` (flushed per clip), so an interrupted run loses nothing already scored
and `resume` skips what is there. WER/CER are corpus-level (total errors / total reference units), as the
Llama-AVSR / Omni-AVSR papers report them (Llama-AVSR models/lightning.py).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import AvsrError, UsageError
from ..storage import atomic_write_text, exclusive_lock
from ..version import __version__
from .datasets import Item, load_dataset
from .scoring import alignment_text, get_normalizer, score
from .transcribe import DECODER_ROWS, MediaInput, TranscribeOptions, Transcriber, load_media, rounded

CLEAN = math.inf  # the "SNR" of a clean condition


@dataclass(frozen=True)
class EvaluateOptions:
    """What to evaluate; echoed into summary.json."""

    modes: tuple[str, ...] = ("asr",)
    snrs: tuple[float, ...] = (CLEAN,)  # dB; inf = clean
    noise: str = "babble"  # a noise file, or a built-in generator: "white" or "babble"
    seed: int = 0
    normalizer: str = "lrs"
    limit: int | None = None
    workers: int = 1  # processes that decode and mix audio while the model decodes
    resume: bool = False
    occlusion: str | None = None  # vsr/avsr: corrupt the mouth crops (noise.OCCLUSIONS) at each level
    levels: tuple[int, ...] = (1, 2, 3, 4, 5)
    # (i, n): score only shard i of n (1-based): every n-th clip by id, starting at the i-th, into its own
    # results.shard-i-of-n.jsonl; merge_reports() joins the shards into the unsharded summary.
    shard: tuple[int, int] | None = None
    # How each clip is transcribed (its mode is set per condition); mouth_cache None: <avsr cache>/mouth
    # (crops shared by models, modes, conditions).
    transcribe: TranscribeOptions = field(default_factory=TranscribeOptions)

    def __post_init__(self) -> None:
        if self.shard is not None and not (len(self.shard) == 2 and 1 <= self.shard[0] <= self.shard[1]):
            raise ValueError(f"shard must be I/N with 1 <= I <= N, not {self.shard}")

    def occlusions(self, mode: str) -> list[str]:
        """The video conditions of `mode`: "none", then "kind:level" for each level (video modes only)."""
        if mode == "asr" or not self.occlusion:
            return ["none"]
        return ["none", *(f"{self.occlusion}:{level}" for level in self.levels)]

    def snrs_for(self, mode: str) -> tuple[float, ...]:
        """vsr hears nothing: it is scored once, on the clean condition."""
        return (CLEAN,) if mode == "vsr" else self.snrs

    def transcribe_options(self, mode: str) -> TranscribeOptions:
        return replace(self.transcribe, mode=mode)


@dataclass
class Condition:
    """The scores of one (mode, SNR) condition."""

    mode: str
    snr: float
    clips: int
    failed: int
    scores: dict  # Scores.to_dict(rows=False)
    occlusion: str = "none"  # "none" or "kind:level"


@dataclass
class Report:
    dataset: str
    kind: str
    normalizer: str
    normalizer_description: str
    conditions: list[Condition]
    skipped: list[dict]
    failures: list[dict]
    options: dict
    seconds: float
    run: dict = field(default_factory=dict)  # run_info(): model, rates, avsr version, end time, workdir
    # a shard's clips (ids, in order): merge_reports checks its results file against them
    clip_ids: list[str] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["clip_ids"] is None:
            del d["clip_ids"]
        return rounded(_json_safe(d))


def snr_key(snr: float) -> str:
    return "clean" if snr == CLEAN else f"{snr:g}"


def _json_safe(obj, key: str = ""):
    """JSON has no inf/nan: write them as strings; SNRs are spelled as in results.jsonl ("clean", "5")."""
    if isinstance(obj, float) and key in ("snr", "snrs"):
        return snr_key(obj)  # "clean", "5", "-5": as results.jsonl spells them
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else "-inf" if obj < 0 else "nan"
    if isinstance(obj, dict):
        return {k: _json_safe(v, k) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v, key) for v in obj]
    return obj


# -- preprocessing (runs in worker processes) ------------------------------------------------------------
_NOISE_CACHE: dict[tuple[str, int], np.ndarray] = {}


def _noise_source(spec: str, seed: int) -> np.ndarray:
    """A long noise signal: the user's file, or 60 s of the built-in white/babble generator (seeded)."""
    key = (spec, seed)
    if key not in _NOISE_CACHE:
        from . import noise

        if spec in ("white", "babble"):
            rng = np.random.default_rng(seed)
            n = 60 * 16000
            _NOISE_CACHE[key] = noise.white_noise(n, rng) if spec == "white" else noise.babble_noise(n, rng)
        else:
            _NOISE_CACHE[key] = noise.load_noise(spec)
    return _NOISE_CACHE[key]


def prepare_item(item: Item, mode: str, snr: float, occlusion: str, options: EvaluateOptions) -> MediaInput:
    """What `mode` needs of a clip, under one condition: audio with noise at `snr` (a segment seeded per
    clip id), mouth crops corrupted by `occlusion` ("kind:level", seeded per clip id); or the error."""
    from .noise import AudioNoise, VideoOcclusion

    start = time.perf_counter()
    try:
        media = load_media(item.media, mode, options.transcribe_options(mode), audio_path=item.audio)
        if snr != CLEAN and media.audio is not None and len(media.audio):
            noise = AudioNoise(_noise_source(options.noise, options.seed), snr, options.seed)
            media.audio = noise.apply(media.audio, item.id).astype(np.float32)
        if occlusion != "none" and media.video is not None:
            kind, _, level = occlusion.rpartition(":")
            media.video = VideoOcclusion(kind, int(level), options.seed).apply(media.video, item.id)
    except AvsrError as exc:
        media = MediaInput(str(item.media), mode=mode, error=exc)
    media.seconds = time.perf_counter() - start
    return media


def _prepared(
    items: list[Item], mode: str, snr: float, occlusion: str, options: EvaluateOptions, pool: Executor | None
) -> Iterator[MediaInput]:
    """Clips in order, prepared ahead in the pool (a bounded window, so memory stays flat)."""
    if pool is None:
        for item in items:
            yield prepare_item(item, mode, snr, occlusion, options)
        return
    window: deque[Future] = deque()
    ahead = 2 * options.workers + (options.transcribe.batch_size or DECODER_ROWS)
    it = iter(items)
    while True:
        while len(window) < ahead:
            item = next(it, None)
            if item is None:
                break
            window.append(pool.submit(prepare_item, item, mode, snr, occlusion, options))
        if not window:
            return
        yield window.popleft().result()


# -- the run ---------------------------------------------------------------------------------------------
def read_results(path: Path) -> list[dict]:
    """Rows of a results.jsonl, leniently (lines that do not parse are left out); `load_results` checks."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


ROW_KEYS = ("mode", "snr", "id")  # what makes a line of a results file a row


def load_results(path: Path, torn_tail: bool = False) -> tuple[list[dict], int]:
    """The rows of a report folder's results file, checked, and the length in bytes of its whole lines.

    The file must be a regular file of its own (a symbolic link, even one into the folder, would make a
    report of another run's rows, or append to another file), UTF-8, every line a result row (mode, snr,
    id). `torn_tail`: a last line without its newline (a kill mid-write) is left out rather than refused.
    Raises UsageError naming the file and the problem."""
    path = Path(path)
    try:
        st = path.lstat()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(
            f"{path}: is a symbolic link (to {os.readlink(path)}), not the report's own results file"
        )
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path}: is not a regular file")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text: not a results file") from None
    lines = text.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    rows = []
    for number, line in enumerate([*lines, tail] if tail else lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ROW_KEYS):
                raise ValueError(line)
        except ValueError:
            if torn_tail and number == len(lines) + 1:
                break  # the torn last line: scored again
            raise UsageError(f"{path}: line {number} is not a result row (the file is damaged)") from None
        rows.append({**row, "occlusion": row.get("occlusion", "none")})
    whole = len(data) - len(tail.encode("utf-8")) if len(rows) == len(lines) else len(data)
    return rows, whole


def evaluate(
    transcriber: Transcriber,
    dataset: str | Path,
    options: EvaluateOptions,
    report_dir: Path | None = None,
    on_clip: Callable[[str, str, dict], None] | None = None,
) -> Report:
    """Transcribe and score `dataset` under every (mode, SNR) condition; write the report files if asked.

    A report folder is locked while the run lasts: a second run on it (even with --resume) is refused.
    """
    if report_dir is None:
        return _evaluate(transcriber, dataset, options, None, on_clip)
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    with exclusive_lock(Path(report_dir), "avsr evaluate"):
        return _evaluate(transcriber, dataset, options, report_dir, on_clip)


def _evaluate(
    transcriber: Transcriber,
    dataset: str | Path,
    options: EvaluateOptions,
    report_dir: Path | None,
    on_clip: Callable[[str, str, dict], None] | None,
) -> Report:
    started = time.perf_counter()
    get_normalizer(options.normalizer)  # an unknown name fails before any work
    data = load_dataset(dataset, limit=options.limit)
    items = data.items if options.shard is None else data.items[options.shard[0] - 1 :: options.shard[1]]
    results_path = Path(report_dir) / report_name("results", "jsonl", options.shard) if report_dir else None
    rows = []
    if results_path is not None and os.path.lexists(results_path):
        if not options.resume:
            raise UsageError(
                f"{results_path} exists: pass --resume to continue it, or choose another --report-dir"
            )
        rows = _resumed_rows(results_path, [item.id for item in items])
    done = {(r["mode"], r["snr"], r["occlusion"], r["id"]) for r in rows}
    if options.transcribe.mouth_cache is None and any(m != "asr" for m in options.modes):
        from ..storage import cache_root

        mouth_cache = str(cache_root() / "mouth")
        options = replace(options, transcribe=replace(options.transcribe, mouth_cache=mouth_cache))
    if options.occlusion:
        from .noise import VideoOcclusion

        for level in options.levels:
            VideoOcclusion(options.occlusion, level)  # unknown kind or level: ValueError before any work
    pool = ProcessPoolExecutor(options.workers) if options.workers > 1 else None
    out = open(results_path, "a", encoding="utf-8") if results_path is not None else None  # noqa: SIM115
    try:
        for mode in options.modes:
            topts = options.transcribe_options(mode)
            transcriber.check_options(topts)
            for snr in options.snrs_for(mode):
                key = snr_key(snr)
                for occlusion in options.occlusions(mode):
                    todo = [item for item in items if (mode, key, occlusion, item.id) not in done]
                    prepared = _prepared(todo, mode, snr, occlusion, options, pool)
                    results = transcriber.transcribe_loaded(prepared, topts)
                    for item, result in zip(todo, results, strict=True):
                        row = {"mode": mode, "snr": key, "occlusion": occlusion, "id": item.id}
                        row.update(media=str(item.media), ref=item.reference)
                        if isinstance(result, AvsrError):
                            row.update(hyp=None, error=str(result))
                        else:
                            row.update(hyp=result.text, duration=result.duration, timings=result.timings)
                        rows.append(row)
                        if out is not None:
                            out.write(json.dumps(rounded(_json_safe(row)), ensure_ascii=False) + "\n")
                            out.flush()
                            os.fsync(out.fileno())
                        if on_clip is not None:
                            on_clip(mode, key, row)
    finally:
        if out is not None:
            out.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    report, alignments = summarize(
        rows,
        asdict(options),
        dataset=str(dataset),
        kind=data.kind,
        skipped=[asdict(sk) for sk in data.skipped],
        seconds=time.perf_counter() - started,
        run=run_info(transcriber, options, report_dir),
    )
    if options.shard is not None:
        report.clip_ids = [item.id for item in items]
    if report_dir is not None:
        write_report(Path(report_dir), report, alignments, options.shard)
    return report


def run_info(transcriber: Transcriber, options: EvaluateOptions, report_dir: Path | None) -> dict:
    """What a run's options do not say: the model and the compression rates it ran at, the avsr version,
    when the run ended (UTC), and the folder that relative dataset and media paths start from, as seen from
    the report folder (so that a report page finds the media after both are moved together)."""
    cfg = transcriber.model.config
    topts = options.transcribe
    hears, sees = ({"asr", "avsr"} & set(options.modes), {"vsr", "avsr"} & set(options.modes))
    return {
        "model": cfg.name,
        "audio_rate": cfg.pick_rate("audio", topts.audio_rate) if hears else None,
        "video_rate": cfg.pick_rate("video", topts.video_rate) if sees else None,
        "avsr": __version__,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workdir": Path(os.path.relpath(Path.cwd(), Path(report_dir).absolute())).as_posix()
        if report_dir is not None
        else None,
    }


def _resumed_rows(path: Path, ids: list[str]) -> list[dict]:
    """The rows a resumed run keeps (`load_results`, the torn last line cut off so appends start on a line
    of their own); rows of clips this run does not score, or scored twice, are a UsageError."""
    rows, whole = load_results(path, torn_tail=True)
    mine, seen = set(ids), set()
    for row in rows:
        key = (row["mode"], row["snr"], row["occlusion"], row["id"])
        if row["id"] not in mine:
            raise UsageError(
                f"{path}: holds clip {row['id']}, which this run does not score (another dataset, --limit "
                "or --shard?): resume with the options it was started with, or choose another --report-dir"
            )
        if key in seen:
            raise UsageError(f"{path}: clip {row['id']} ({row['mode']}, SNR {row['snr']}) is scored twice")
        seen.add(key)
    with open(path, "rb+") as f:
        f.truncate(whole)
        if whole:
            f.seek(whole - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")  # a last row without its newline: the next one starts a line of its own
    return rows


def report_name(stem: str, suffix: str, shard: tuple[int, int] | None) -> str:
    """results.jsonl, or results.shard-2-of-4.jsonl for a shard (summary, alignment alike)."""
    return f"{stem}.{suffix}" if shard is None else f"{stem}.shard-{shard[0]}-of-{shard[1]}.{suffix}"


def summarize(
    rows: list[dict],
    options: dict,
    *,
    dataset: str,
    kind: str,
    skipped: list[dict],
    seconds: float,
    run: dict | None = None,
) -> tuple[Report, list[str]]:
    """The Report (and alignment text per condition) of scored rows, under `options` (EvaluateOptions as a
    dict). Rows of a condition are taken in id order, so a merged run reports as an unsharded one."""
    normalizer = get_normalizer(options["normalizer"])
    shape = EvaluateOptions(
        modes=tuple(options["modes"]),
        snrs=tuple(_snr(v) for v in options["snrs"]),
        occlusion=options["occlusion"],
        levels=tuple(options["levels"]),
    )
    conditions, failures, alignments = [], [], []
    for mode in shape.modes:
        for snr in shape.snrs_for(mode):
            key = snr_key(snr)
            for occlusion in shape.occlusions(mode):
                mine = [r for r in rows if (r["mode"], r["snr"], r["occlusion"]) == (mode, key, occlusion)]
                mine.sort(key=lambda r: r["id"])
                ok = [r for r in mine if r.get("error") is None]
                failures += [
                    {"mode": mode, "snr": key, "occlusion": occlusion, "id": r["id"], "error": r["error"]}
                    for r in mine
                    if r.get("error")
                ]
                scores = score([(r["ref"], r["hyp"]) for r in ok], normalizer, ids=[r["id"] for r in ok])
                conditions.append(
                    Condition(
                        mode, snr, len(mine), len(mine) - len(ok), scores.to_dict(rows=False), occlusion
                    )
                )
                video = f", occlusion {occlusion}" if occlusion != "none" else ""
                alignments.append(
                    f"# mode {mode}, SNR {key}{video}: {scores.summary()}\n\n" + alignment_text(scores.rows)
                )
    report = Report(
        dataset=dataset,
        kind=kind,
        normalizer=normalizer.name,
        normalizer_description=normalizer.description,
        conditions=conditions,
        skipped=skipped,
        failures=failures,
        options=options,
        seconds=seconds,
        run=run or {},
    )
    return report, alignments


def _snr(value) -> float:
    """An SNR from options: a number, or "clean"/"inf" as JSON spells the clean condition."""
    return CLEAN if value in ("clean", "inf") else float(value)


def write_report(
    report_dir: Path, report: Report, alignments: list[str], shard: tuple[int, int] | None = None
) -> None:
    summary = json.dumps(report.to_dict(), indent=2) + "\n"
    atomic_write_text(report_dir / report_name("summary", "json", shard), summary)
    atomic_write_text(report_dir / report_name("alignment", "txt", shard), "\n\n".join(alignments))


SHARD_SUMMARY = re.compile(r"^summary\.shard-(\d+)-of-(\d+)\.json$")
# Options that may differ between the shards of one run: how each was run, not what was scored.
PER_SHARD = ("shard", "workers", "resume")


def merge_reports(report_dirs: list[Path], out_dir: Path | None = None) -> Report:
    """Join the shards of a sharded evaluation (each summary.shard-i-of-n.json with its results file, in one
    or several folders) into the summary.json, results.jsonl and alignment.txt an unsharded run writes,
    in `out_dir` (default: the first folder). Every shard of 1..n must be there once, all run with the same
    options, and no clip scored twice: otherwise UsageError, naming what is wrong."""
    found: dict[tuple[int, int], tuple[Path, dict]] = {}
    for folder in map(Path, report_dirs):
        if not folder.is_dir():
            raise UsageError(f"{folder}: not a report folder")
        for path in sorted(folder.iterdir()):
            match = SHARD_SUMMARY.match(path.name)
            if match is None:
                continue
            shard = (int(match[1]), int(match[2]))
            if shard in found:
                raise UsageError(
                    f"shard {shard[0]}/{shard[1]} is both in {found[shard][0].parent} and {folder}"
                )
            found[shard] = (path, _shard_summary(path, shard))
    if not found:
        raise UsageError(
            f"no shard summaries (summary.shard-I-of-N.json) in {', '.join(map(str, report_dirs))}"
        )
    counts = {n for _, n in found}
    if len(counts) > 1:
        raise UsageError(f"shards of different splits: of {', '.join(map(str, sorted(counts)))}")
    (n,) = counts
    missing = [f"{i}/{n}" for i in range(1, n + 1) if (i, n) not in found]
    if missing:
        raise UsageError(
            f"missing shard(s) {', '.join(missing)}: run them (avsr evaluate --shard I/{n}) first"
        )
    first = found[(1, n)][1]

    def common(summary: dict) -> dict:
        return {k: v for k, v in summary["options"].items() if k not in PER_SHARD}

    for (i, _), (path, summary) in sorted(found.items()):
        differs = [k for k in common(first) if common(summary).get(k) != common(first)[k]]
        if differs or summary["dataset"] != first["dataset"]:
            what = ", ".join(differs) or "dataset"
            raise UsageError(f"{path}: shard {i}/{n} was run with other {what} than shard 1/{n}")
    rows, seen = [], set()
    for (i, _), (path, summary) in sorted(found.items()):
        for row in _shard_rows(path.parent, (i, n), summary):
            key = (row["mode"], row["snr"], row["occlusion"], row["id"])
            if key in seen:
                raise UsageError(
                    f"clip {row['id']} ({row['mode']}, SNR {row['snr']}) is scored in two shards"
                )
            seen.add(key)
            rows.append(row)
    options = {**first["options"], "shard": None}
    out = Path(out_dir) if out_dir is not None else Path(report_dirs[0])
    report, alignments = summarize(
        rows,
        options,
        dataset=first["dataset"],
        kind=first["kind"],
        skipped=first["skipped"],
        seconds=sum(summary["seconds"] for _, summary in found.values()),
        run=_merged_run(found, out),
    )
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out, "avsr evaluate-merge"):
        order = {key: k for k, key in enumerate(_condition_keys(report))}
        rows.sort(key=lambda r: (order.get((r["mode"], r["snr"], r["occlusion"]), len(order)), r["id"]))
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        atomic_write_text(out / "results.jsonl", text)
        write_report(out, report, alignments)
    return report


def _merged_run(found: dict[tuple[int, int], tuple[Path, dict]], out: Path) -> dict:
    """Shard 1's run_info, ended when the last shard did, its workdir seen from the merged folder."""
    path, first = found[min(found)]
    folder, run = path.parent, first.get("run") or {}
    if not run:
        return {}
    ends = [summary.get("run", {}).get("finished") or "" for _, summary in found.values()]
    run = {**run, "finished": max(ends) or None}
    if run.get("workdir") is not None:
        workdir = (folder / run["workdir"]).resolve()
        run["workdir"] = Path(os.path.relpath(workdir, Path(out).resolve())).as_posix()
    return run


def _shard_summary(path: Path, shard: tuple[int, int]) -> dict:
    """A shard's summary.json, read and checked for the fields a merge uses."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        if not all(k in summary for k in ("conditions", "options", "dataset", "kind", "skipped", "seconds")):
            raise ValueError("fields missing")
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"shard {shard[0]}/{shard[1]}: {path} cannot be read as a summary ({exc})") from None
    return summary


def _shard_rows(folder: Path, shard: tuple[int, int], summary: dict) -> list[dict]:
    """A shard's rows, checked against its summary: a regular file of its own that parses whole
    (`load_results`), with one row per clip and condition the summary counts, for the clips it lists
    (older summaries list none: then the counts). UsageError naming the shard and what is wrong."""
    name = f"shard {shard[0]}/{shard[1]}"
    path = folder / report_name("results", "jsonl", shard)
    rerun = f"rerun it: avsr evaluate ... --shard {shard[0]}/{shard[1]} --resume --report-dir {folder}"
    if not os.path.lexists(path):
        raise UsageError(f"{name}: {path} is missing: {rerun}")
    try:
        rows, _ = load_results(path)
    except UsageError as exc:
        raise UsageError(f"{name}: {exc}") from None
    ids = summary.get("clip_ids")
    by_condition: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        by_condition.setdefault((row["mode"], row["snr"], row["occlusion"]), []).append(row["id"])
    for c in summary["conditions"]:
        key = (c["mode"], c["snr"], c.get("occlusion", "none"))
        have = by_condition.pop(key, [])
        what = f"{c['mode']}, SNR {c['snr']}" + (f", occlusion {key[2]}" if key[2] != "none" else "")
        scored = set(have)
        missing = [i for i in ids if i not in scored] if ids is not None else []
        if missing or len(have) < c["clips"]:
            listed = f" (clips {_some(missing)})" if missing else ""
            lacking = len(missing) or c["clips"] - len(have)
            raise UsageError(
                f"{name}: {path} lacks {lacking} of the {c['clips']} rows of {what}{listed} that its "
                f"summary counts: {rerun}"
            )
        listed_ids = set(ids or [])
        extra = [i for i in have if i not in listed_ids] if ids is not None else []
        if extra or len(have) != len(scored) or len(have) > c["clips"]:
            listed = f" (clips {_some(extra)})" if extra else ""
            raise UsageError(
                f"{name}: {path} holds rows of {what} that its summary does not count{listed}: it is not "
                f"this shard's results; {rerun}"
            )
    if by_condition:
        mode, snr, occlusion = next(iter(by_condition))
        raise UsageError(
            f"{name}: {path} holds rows of {mode}, SNR {snr}, occlusion {occlusion}, a condition its summary "
            f"does not have: it is not this shard's results; {rerun}"
        )
    return rows


def _some(ids: list[str], shown: int = 5) -> str:
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def _condition_keys(report: Report) -> list[tuple[str, str, str]]:
    return [(c.mode, snr_key(c.snr), c.occlusion) for c in report.conditions]
