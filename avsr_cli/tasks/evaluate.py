"""Batch scoring of a dataset: transcribe every clip under each condition (mode x SNR), score, report.

Rows are appended to `results.jsonl` (flushed per clip), so an interrupted run loses nothing already scored
and `resume` skips what is there. WER/CER are corpus-level (total errors / total reference units), as the
Llama-AVSR / Omni-AVSR papers report them (Llama-AVSR models/lightning.py).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import AvsrError, UsageError
from ..storage import cache_root, exclusive_lock
from ..version import __version__
from .datasets import Item, load_dataset
from .evaluate_options import CLEAN, EvaluateOptions, snr_key
from .evaluate_results import Report, json_safe, report_name, resumed_rows, summarize, write_report
from .media_inputs import MediaInput, load_media
from .noise import AudioNoise, VideoOcclusion, babble_noise, load_noise, white_noise
from .scoring import get_normalizer
from .transcribe import Transcriber
from .transcript import DECODER_ROWS, rounded

# -- preprocessing (runs in worker processes) ------------------------------------------------------------
_NOISE_CACHE: dict[tuple[str, int], np.ndarray] = {}


def _noise_source(spec: str, seed: int) -> np.ndarray:
    """A long noise signal: the user's file, or 60 s of the built-in white/babble generator (seeded)."""
    key = (spec, seed)
    if key not in _NOISE_CACHE:
        if spec in ("white", "babble"):
            rng = np.random.default_rng(seed)
            n = 60 * 16000
            _NOISE_CACHE[key] = white_noise(n, rng) if spec == "white" else babble_noise(n, rng)
        else:
            _NOISE_CACHE[key] = load_noise(spec)
    return _NOISE_CACHE[key]


def prepare_item(item: Item, mode: str, snr: float, occlusion: str, options: EvaluateOptions) -> MediaInput:
    """What `mode` needs of a clip, under one condition: audio with noise at `snr` (a segment seeded per
    clip id), mouth crops corrupted by `occlusion` ("kind:level", seeded per clip id); or the error."""
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
        rows = resumed_rows(results_path, [item.id for item in items])
    done = {(r["mode"], r["snr"], r["occlusion"], r["id"]) for r in rows}
    if options.transcribe.mouth_cache is None and any(m != "asr" for m in options.modes):
        mouth_cache = str(cache_root() / "mouth")
        options = replace(options, transcribe=replace(options.transcribe, mouth_cache=mouth_cache))
    if options.occlusion:
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
                            row.update(avg_logprob=result.avg_logprob, low_confidence=result.low_confidence)
                        rows.append(row)
                        if out is not None:
                            out.write(json.dumps(rounded(json_safe(row)), ensure_ascii=False) + "\n")
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
