"""`avsr evaluate` (WER/CER of a dataset, under torchrun too), `evaluate-merge` (join its shards) and
`evaluate-report` (its report page): the table or summary.json on stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .app import EXIT_FAILED, fail, run_guarded, setup_command, stderr
from .loading import check_language, check_modes, checkpoint_config, load_transcriber, transcribe_options
from .options import (
    AudioRateOpt,
    BatchSecondsOpt,
    BatchSizeOpt,
    CheckpointOpt,
    Decoding,
    DecodingOpt,
    DetectEveryOpt,
    DeviceOpt,
    DtypeOpt,
    EmbedAudioOpt,
    FaceBackendOpt,
    LanguageOpt,
    LengthPenaltyOpt,
    MaxNewTokensOpt,
    Mode,
    MouthCacheOpt,
    NoRepeatNgramOpt,
    NumBeamsOpt,
    QuietOpt,
    ReportJsonOpt,
    SeedOpt,
    ThreadsOpt,
    VerboseOpt,
    VideoRateOpt,
)
from .progress import MediaProgress


def parse_snrs(values: list[str], clean: bool) -> tuple[float, ...]:
    """`--snr 10,5 --snr -5` -> (inf, 10, 5, -5): the clean condition first unless --no-clean."""
    from ..tasks.evaluate_options import CLEAN  # lazy: numpy, which --help never needs

    snrs = [CLEAN] if clean else []
    for value in values:
        for token in value.replace(",", " ").split():
            try:
                snr = CLEAN if token.lower() in ("clean", "inf") else float(token)
            except ValueError:
                raise fail(f"--snr: {token!r} is not a number (dB) or 'clean'") from None
            if snr not in snrs:
                snrs.append(snr)
    if not snrs:
        raise fail("nothing to evaluate: --no-clean and no --snr")
    return tuple(snrs)


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """--shard 2/4 -> (2, 4)."""
    if value is None:
        return None
    index, _, count = value.partition("/")
    if not (index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise fail(f"--shard: expected I/N with 1 <= I <= N (e.g. 2/4), got {value!r}")
    return int(index), int(count)


def parse_levels(values: list[str]) -> list[int]:
    """--level 1,3 --level 5 -> [1, 3, 5]; none given: all five levels."""
    try:
        levels = [int(v) for value in values for v in value.split(",") if v.strip()]
    except ValueError:
        raise fail(f"--level: expected integers 1-5, got {' '.join(values)}") from None
    if any(not 1 <= v <= 5 for v in levels):
        raise fail(f"--level: occlusion levels are 1 to 5, got {levels}")
    return sorted(set(levels)) or [1, 2, 3, 4, 5]


def evaluate(
    ctx: typer.Context,
    dataset: Annotated[
        Path,
        typer.Argument(
            help="An LRS2/LRS3-style folder (spk/00001.mp4 + .txt 'Text:  ...'), a folder of media with "
            "same-stem .txt transcripts, a CSV/JSONL manifest (path, transcript, id), or a Llama-AVSR label "
            "CSV.",
            show_default=False,
        ),
    ],
    checkpoint: CheckpointOpt = None,
    language: LanguageOpt = None,
    mode: Annotated[list[Mode], typer.Option(help="Modes to score (repeat for several).")] = [Mode.asr],  # noqa: B006
    snr: Annotated[
        list[str],
        typer.Option(help="Add noise at these SNRs in dB (e.g. --snr 10,5,0,-5; repeatable)."),
    ] = [],  # noqa: B006
    clean: Annotated[bool, typer.Option(help="Also score the clean condition.")] = True,
    noise: Annotated[
        str, typer.Option(help="Noise: a file ffmpeg reads, or a built-in generator: babble or white.")
    ] = "babble",
    normalizer: Annotated[
        Literal["lrs", "whisper", "none"],
        typer.Option(help="Text normalisation before scoring (docs/evaluation.md)."),
    ] = "lrs",
    report_dir: Annotated[
        Optional[Path],
        typer.Option(
            help="Write summary.json, results.jsonl (per clip), alignment.txt and report.html here."
        ),
    ] = None,
    report_embed_audio: EmbedAudioOpt = False,
    resume: Annotated[bool, typer.Option(help="Skip clips already scored in --report-dir.")] = False,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Score only the first N clips (by id).")] = None,
    shard: Annotated[
        Optional[str],
        typer.Option(
            metavar="I/N",
            help="Score shard I of N (every N-th clip by id) into results.shard-I-of-N.jsonl; "
            "avsr evaluate-merge joins the shards.",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes decoding and mixing audio.")] = 1,
    batch_size: BatchSizeOpt = None,
    batch_seconds: BatchSecondsOpt = 30.0,
    num_beams: NumBeamsOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    decoding: DecodingOpt = Decoding.beam,
    seed: SeedOpt = 0,
    length_penalty: LengthPenaltyOpt = 1.0,
    no_repeat_ngram_size: NoRepeatNgramOpt = None,
    audio_rate: AudioRateOpt = None,
    video_rate: VideoRateOpt = None,
    occlusion: Annotated[
        Optional[str],
        typer.Option(
            help="vsr/avsr: also score with the mouth crops corrupted: gaussian_blur, gaussian_noise, "
            "block_wise, pixelate, color_saturation, color_contrast, jpeg, block (or Llama-AVSR PR #1 codes)."
        ),
    ] = None,
    level: Annotated[
        list[str], typer.Option(help="Occlusion levels 1-5 (e.g. --level 1,3,5; default all five).")
    ] = [],  # noqa: B006
    face_backend: FaceBackendOpt = "dlib",
    detect_every: DetectEveryOpt = 10,
    mouth_cache: MouthCacheOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    json_out: ReportJsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Transcribe a dataset and report WER/CER (corpus level) per mode and SNR: the table on stdout."""
    setup_command(quiet, verbose, threads)  # first: the thread count is set before torch loads
    # lazy: the scoring pulls numpy, torch and jiwer, which --help never needs
    from ..tasks.evaluate_distributed import evaluate_rank, plan_rank
    from ..tasks.evaluate_options import EvaluateOptions
    from ..tasks.scoring import get_normalizer

    run_guarded(get_normalizer, normalizer)
    options = EvaluateOptions(
        modes=tuple(dict.fromkeys(m.value for m in mode)),
        snrs=parse_snrs(snr, clean),
        noise=noise,
        seed=seed,
        normalizer=normalizer,
        limit=limit,
        workers=workers,
        resume=resume,
        occlusion=occlusion,
        levels=tuple(parse_levels(level)),
        shard=parse_shard(shard),
        transcribe=transcribe_options(ctx.params, mode="auto"),  # each condition sets its mode
    )
    run = run_guarded(plan_rank, options, report_dir, device)  # under torchrun: this rank's shard
    config = checkpoint_config(checkpoint)
    check_modes(config, list(options.modes))  # before any model loads
    check_language(language, checkpoint)
    progress = MediaProgress(None, quiet, "scoring")

    def on_clip(mode: str, snr: str, row: dict) -> None:
        if row.get("error"):
            stderr.print(f"[red]failed:[/red] {row['error']}", soft_wrap=True, markup=True)
        elif verbose:
            stderr.print(f"{mode} {snr} {row['id']}: {row['hyp']}", soft_wrap=True, markup=False)
        progress()

    def load(device: str):
        return load_transcriber(checkpoint, device, dtype, quiet, verbose)

    report = run_guarded(evaluate_rank, run, load, dataset, on_clip, progress)
    if report is None:  # a rank other than 0: rank 0 reports for all
        return
    if run.writes_page:
        write_page(report_dir, report_embed_audio)
    show_report(report, json_out, quiet)
    if report.conditions and all(c.failed == c.clips for c in report.conditions):
        raise typer.Exit(EXIT_FAILED)


def write_page(folder: Path, embed_audio: bool) -> None:
    """report.html in a report folder (from its summary.json and results.jsonl)."""
    # lazy: the page's plots and scores need numpy, torch and jiwer, which --help never needs
    from ..tasks.report import PageOptions
    from ..tasks.report import write_page as write

    run_guarded(write, folder, PageOptions(embed_audio=embed_audio))


def show_report(report, json_out: bool, quiet: bool) -> None:
    """The result on stdout (the table, or summary.json with --json); skipped entries on stderr."""
    if not quiet:
        print_skipped(report)
    if json_out:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        print_report(report)


def print_skipped(report) -> None:
    """Dataset entries that could not be used (stderr)."""
    for item in report.skipped[:20]:
        stderr.print(
            f"[yellow]skipped:[/yellow] {escape(item['path'])}: {escape(item['reason'])}", soft_wrap=True
        )
    if len(report.skipped) > 20:
        stderr.print(f"[yellow]skipped:[/yellow] ... {len(report.skipped) - 20} more (see summary.json)")


def print_report(report) -> None:
    """The summary table: it is the result, so it goes to stdout (`> wer.txt` keeps it)."""
    table = Table(title=f"{report.dataset} ({report.kind}), normaliser {report.normalizer}")
    video = any(c.occlusion != "none" for c in report.conditions)
    columns = ("mode", "SNR dB", *(["occlusion"] if video else []), "clips", "failed", "WER %", "CER %")
    for col in (*columns, "S", "D", "I", "words", "SER %"):
        table.add_column(col, justify="left" if col in ("mode", "occlusion") else "right")
    for c in report.conditions:
        sc = c.scores
        table.add_row(
            c.mode,
            "clean" if c.snr == float("inf") else f"{c.snr:g}",
            *([c.occlusion] if video else []),
            str(c.clips),
            str(c.failed),
            f"{100 * sc['wer']:.2f}",
            f"{100 * sc['cer']:.2f}",
            str(sc["substitutions"]),
            str(sc["deletions"]),
            str(sc["insertions"]),
            str(sc["ref_words"]),
            f"{100 * sc['ser']:.1f}",
        )
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    out.print(table)
    out.print(
        f"normaliser {report.normalizer}: {report.normalizer_description}", soft_wrap=True, markup=False
    )


def evaluate_merge(
    report_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Report folders holding the shards of one run (summary.shard-I-of-N.json and its results).",
            show_default=False,
            metavar="DIR",
        ),
    ],
    output_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--output-dir", "-o", metavar="DIR", help="Write the merged report here (default: the first DIR)."
        ),
    ] = None,
    report_embed_audio: EmbedAudioOpt = False,
    json_out: ReportJsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Join the shards of a sharded `avsr evaluate` into the report one unsharded run writes."""
    from ..tasks.evaluate_merge import merge_reports  # lazy: numpy and jiwer, which --help never needs

    setup_command(quiet, verbose, threads)
    report = run_guarded(merge_reports, report_dirs, output_dir)
    write_page(output_dir if output_dir is not None else report_dirs[0], report_embed_audio)
    show_report(report, json_out, quiet)


def evaluate_report(
    report_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Report folders of avsr evaluate (summary.json and results.jsonl).",
            show_default=False,
            metavar="DIR",
        ),
    ],
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write one page here instead: the run's, or with several DIRs one comparing them on shared "
            "axes (same clips, normaliser and noise; else exit 2).",
        ),
    ] = None,
    embed_audio: Annotated[
        bool,
        typer.Option(
            "--embed-audio",
            help="Embed the first seconds of each worst clip's audio as the model heard it (noise mixed in); "
            "default: link the media.",
        ),
    ] = False,
    worst: Annotated[int, typer.Option(min=0, help="Clips in the worst-first list.")] = 20,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write report.html again in each DIR, or with -o one page that compares the DIRs; print the pages."""
    # lazy: the page's plots and scores need numpy, torch and jiwer, which --help never needs
    from ..tasks.report import PageOptions, write_comparison
    from ..tasks.report import write_page as write

    setup_command(quiet, verbose)
    options = PageOptions(worst=worst, embed_audio=embed_audio)
    if output is not None:
        pages = [run_guarded(write_comparison, report_dirs, output, options)]
    else:
        pages = [run_guarded(write, folder, options) for folder in report_dirs]
    for page in pages:
        print(page)
