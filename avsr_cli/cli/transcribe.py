from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import AvsrError
from .app import (
    EXIT_FAILED,
    AudioRateOpt,
    BatchSizeOpt,
    CheckpointOpt,
    Decoding,
    DecodingOpt,
    DetectEveryOpt,
    DeviceOpt,
    DtypeOpt,
    FaceBackendOpt,
    LengthPenaltyOpt,
    MaxNewTokensOpt,
    MergeGapOpt,
    ModeOpt,
    NumBeamsOpt,
    QuietOpt,
    SeedOpt,
    Segmentation,
    load_transcriber,
    report_error,
    run_guarded,
    stderr,
    transcribe_options,
)
from .progress import MediaProgress


class OutputFormat(str, enum.Enum):
    txt = "txt"
    json = "json"
    srt = "srt"
    vtt = "vtt"
    tsv = "tsv"
    all = "all"


def transcribe(
    ctx: typer.Context,
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Media files (any container ffmpeg reads). Use `--` before names that begin with '-'.",
            show_default=False,
            readable=False,  # checked per file (one line, the batch goes on), not as a usage error
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
    length_penalty: LengthPenaltyOpt = 1.0,
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
    merge_gap: MergeGapOpt = 1.0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quiet: QuietOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Per-file timings on stderr.")] = False,
) -> None:
    """Transcribe media files: text on stdout, and files in --output-dir."""
    from ..tasks.writers import FORMATS, check_output_dir

    formats = list(FORMATS) if output_format is OutputFormat.all else [output_format.value]
    if output_dir is not None:
        run_guarded(check_output_dir, output_dir)
    options = transcribe_options(ctx.params, mode=mode.value if mode else "auto")
    inputs = readable_inputs(files)  # a typo costs no model load
    transcriber = load_transcriber(checkpoint, device, dtype, quiet)
    stdout_format = "txt" if output_format is OutputFormat.all else output_format.value
    run_files(
        transcriber,
        inputs,
        options,
        output_dir=output_dir,
        formats=formats,
        stdout_format=stdout_format,
        cue_options=None,
        quiet=quiet,
        verbose=verbose,
    )


class Inputs:
    """The command's files: those that can be read, and how many could not (each reported once)."""

    def __init__(self, files: list[Path]) -> None:
        from ..frontends.media import check_input

        self.given, self.readable, self.failed = len(files), [], 0
        for path in files:
            try:
                check_input(path)
            except AvsrError as exc:
                self.failed += 1
                report_error(exc)
                continue
            self.readable.append(path)


def readable_inputs(files: list[Path]) -> Inputs:
    """Check every input before the model loads; if none can be read, stop here (exit 1)."""
    inputs = Inputs(files)
    if not inputs.readable:
        raise typer.Exit(EXIT_FAILED)
    return inputs


def run_files(
    transcriber, inputs: Inputs, options, *, output_dir, formats, stdout_format, cue_options, quiet, verbose
) -> None:
    """Transcribe the inputs with one loaded model: outputs per file; a file that fails (to decode, to
    transcribe, to be written) is reported in one line and the others go on; exit 1 if any failed."""
    from ..frontends.media import probe
    from ..tasks.writers import WRITERS, write_result

    run_guarded(transcriber.check_options, options)
    files = inputs.readable
    total = None
    if not quiet and stderr.is_terminal:  # progress over media time
        total = sum(_duration(probe, f) for f in files)
    failed = inputs.failed
    with MediaProgress(total, quiet, unit="s") as advance:
        for item in transcriber.transcribe_many(files, options, on_progress=advance):
            if isinstance(item, AvsrError):
                failed += 1
                report_error(item)
                continue
            for warning in item.warnings if not quiet else []:
                stderr.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
            if output_dir is not None:
                try:
                    write_result(item, output_dir, formats, cue_options)
                except AvsrError as exc:
                    failed += 1
                    report_error(exc)
                    continue
            if stdout_format is not None:
                text = WRITERS[stdout_format](item, cue_options)
                sys.stdout.write(text if stdout_format != "json" else json.dumps(item.to_dict()) + "\n")
                sys.stdout.flush()
            if verbose:
                times = ", ".join(f"{k} {v:.2f}s" for k, v in item.timings.items())
                stderr.print(f"{item.path}: {item.duration:.1f} s, {item.mode}; {times}", soft_wrap=True)
    if failed:
        if not quiet:
            stderr.print(f"{failed} of {inputs.given} file(s) failed")
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


def export_subtitles(
    ctx: typer.Context,
    files: Annotated[
        list[Path],
        typer.Argument(help="Videos or audio files, any length.", show_default=False, readable=False),
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
    merge_gap: MergeGapOpt = 0.5,
    max_line_chars: Annotated[int, typer.Option(min=10, help="Characters per subtitle line.")] = 42,
    max_lines: Annotated[int, typer.Option(min=1, help="Lines per cue.")] = 2,
    min_duration: Annotated[float, typer.Option(min=0.0, help="Shortest cue, s.")] = 1.0,
    max_duration: Annotated[float, typer.Option(min=0.5, help="Longest cue, s.")] = 7.0,
    min_gap: Annotated[float, typer.Option(min=0.0, help="Gap kept between consecutive cues, s.")] = 0.0,
    num_beams: NumBeamsOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    decoding: DecodingOpt = Decoding.beam,
    seed: SeedOpt = 0,
    length_penalty: LengthPenaltyOpt = 1.0,
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
    from ..tasks.subtitles import CueOptions
    from ..tasks.writers import check_output_dir

    formats = ["srt", "vtt"] if format is SubtitleFormat.both else [format.value]
    formats += ["json"] if json_segments else []
    cue_options = run_guarded(
        CueOptions,
        max_line_chars=max_line_chars,
        max_lines=max_lines,
        min_duration=min_duration,
        max_duration=max_duration,
        min_gap=min_gap,
    )
    run_guarded(check_output_dir, output_dir)
    flags = {k: v for k, v in ctx.params.items() if k != "min_duration"}  # here --min-duration is the cue's
    options = transcribe_options(flags, mode=mode.value if mode else "auto", segmentation="vad")
    inputs = readable_inputs(files)  # a typo costs no model load
    transcriber = load_transcriber(checkpoint, device, dtype, quiet)
    run_files(
        transcriber,
        inputs,
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
