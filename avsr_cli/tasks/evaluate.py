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

    def to_dict(self) -> dict:
        return rounded(_json_safe(asdict(self)))


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
    """Rows of a results.jsonl; a torn last line (killed mid-write) is ignored."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


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
    if results_path is not None:
        results_path.parent.mkdir(parents=True, exist_ok=True)
        if results_path.exists() and not options.resume:
            raise UsageError(
                f"{results_path} exists: pass --resume to continue it, or choose another --report-dir"
            )
    rows = read_results(results_path) if results_path is not None else []
    for r in rows:
        r.setdefault("occlusion", "none")
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
            found[shard] = (path, json.loads(path.read_text(encoding="utf-8")))
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
    for (i, _), (path, _) in sorted(found.items()):
        for row in read_results(path.parent / report_name("results", "jsonl", (i, n))):
            key = (row["mode"], row["snr"], row.get("occlusion", "none"), row["id"])
            if key in seen:
                raise UsageError(
                    f"clip {row['id']} ({row['mode']}, SNR {row['snr']}) is scored in two shards"
                )
            seen.add(key)
            rows.append({**row, "occlusion": row.get("occlusion", "none")})
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


def _condition_keys(report: Report) -> list[tuple[str, str, str]]:
    return [(c.mode, snr_key(c.snr), c.occlusion) for c in report.conditions]
