"""`avsr transcribe` and `avsr export-subtitles`: one set of output conventions for both.

Output rule (both commands): without -o the result goes to stdout in one format; with -o DIR every -f
format is written to DIR/<stem>.<ext> and stdout lists the files written. Outputs are planned before the
model loads: two inputs that would write the same file, or files already there (without --overwrite or
--skip-existing), stop the run with exit 2 and nothing done.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import AvsrError
from ..storage import display_name
from .app import EXIT_FAILED, fail, report_error, run_guarded, setup_command, stderr
from .loading import check_language, check_modes, checkpoint_config, load_transcriber, transcribe_options
from .options import (
    AlignerOpt,
    AudioRateOpt,
    BatchSecondsOpt,
    BatchSizeOpt,
    CheckpointOpt,
    Decoding,
    DecodingOpt,
    DetectEveryOpt,
    DeviceOpt,
    DtypeOpt,
    FaceBackendOpt,
    FormatsOpt,
    HighlightWordsOpt,
    InitialPromptOpt,
    LanguageOpt,
    LengthPenaltyOpt,
    LogprobThresholdOpt,
    MaxLineCountOpt,
    MaxLineWidthOpt,
    MaxNewTokensOpt,
    MaxWordsPerLineOpt,
    MergeGapOpt,
    ModeOpt,
    NoRepeatNgramOpt,
    NumBeamsOpt,
    OutputDirOpt,
    OutputFormat,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    Segmentation,
    SkipExistingOpt,
    ThreadsOpt,
    VadMinSilenceOpt,
    VadMinSpeechOpt,
    VadSpeechPadOpt,
    VadThresholdOpt,
    VerboseOpt,
    VideoRateOpt,
    WordTimestampsOpt,
)
from .progress import MediaProgress
from .stdin import STDIN, STDIN_NAME, STDIN_STEM, named, relabelled, stdin_as_file


def transcribe(
    ctx: typer.Context,
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Media files (any container ffmpeg reads); - reads standard input. Use `--` before names "
            "that begin with '-'.",
            show_default=False,
            readable=False,  # checked per file (one line, the batch goes on), not as a usage error
            metavar="FILE",
        ),
    ],
    checkpoint: CheckpointOpt = None,
    language: LanguageOpt = None,
    mode: ModeOpt = None,
    output_format: FormatsOpt = [OutputFormat.txt],  # noqa: B006
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    skip_existing: SkipExistingOpt = False,
    num_beams: NumBeamsOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    decoding: DecodingOpt = Decoding.beam,
    seed: SeedOpt = 0,
    length_penalty: LengthPenaltyOpt = 1.0,
    no_repeat_ngram_size: NoRepeatNgramOpt = None,
    logprob_threshold: LogprobThresholdOpt = None,
    initial_prompt: InitialPromptOpt = None,
    word_timestamps: WordTimestampsOpt = False,
    aligner: AlignerOpt = None,
    highlight_words: HighlightWordsOpt = False,
    max_line_width: MaxLineWidthOpt = None,
    max_line_count: MaxLineCountOpt = None,
    max_words_per_line: MaxWordsPerLineOpt = None,
    audio_rate: AudioRateOpt = None,
    video_rate: VideoRateOpt = None,
    face_backend: FaceBackendOpt = "dlib",
    detect_every: DetectEveryOpt = 10,
    batch_size: BatchSizeOpt = None,
    batch_seconds: BatchSecondsOpt = 30.0,
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
    vad_threshold: VadThresholdOpt = 0.5,
    vad_min_silence: VadMinSilenceOpt = 0.3,
    vad_speech_pad: VadSpeechPadOpt = 0.1,
    vad_min_speech: VadMinSpeechOpt = 0.25,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Transcribe media files: the text on stdout, or files in --output-dir."""
    setup_command(quiet, verbose, threads)
    cue_options = word_layout(ctx.params, quiet)
    check_language(language, checkpoint)
    options = transcribe_options(ctx.params, mode=mode.value if mode else "auto")
    run_command(
        files,
        options,
        formats=output_format,
        output_dir=output_dir,
        existing=existing_policy(overwrite, skip_existing),
        checkpoint=checkpoint,
        device=device,
        dtype=dtype,
        quiet=quiet,
        verbose=verbose,
        cue_options=cue_options,
    )


def export_subtitles(
    ctx: typer.Context,
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Videos or audio files, any length; - reads standard input.",
            show_default=False,
            readable=False,
            metavar="FILE",
        ),
    ],
    checkpoint: CheckpointOpt = None,
    language: LanguageOpt = None,
    mode: ModeOpt = None,
    output_format: FormatsOpt = [OutputFormat.srt],  # noqa: B006
    output_dir: OutputDirOpt = None,
    overwrite: OverwriteOpt = False,
    skip_existing: SkipExistingOpt = False,
    max_chunk: Annotated[
        Optional[float],
        typer.Option(
            min=1.0, help="Longest speech chunk given to the model, s (default: the checkpoint's 16 s)."
        ),
    ] = None,
    merge_gap: MergeGapOpt = 0.5,
    vad_threshold: VadThresholdOpt = 0.5,
    vad_min_silence: VadMinSilenceOpt = 0.3,
    vad_speech_pad: VadSpeechPadOpt = 0.1,
    vad_min_speech: VadMinSpeechOpt = 0.25,
    max_line_chars: Annotated[
        int,
        typer.Option(
            min=10, help="Characters per subtitle line, lines balanced (whisper's: --max-line-width)."
        ),
    ] = 42,
    max_lines: Annotated[int, typer.Option(min=1, help="Lines per cue (whisper's: --max-line-count).")] = 2,
    min_duration: Annotated[float, typer.Option(min=0.0, help="Shortest cue, s.")] = 1.0,
    max_duration: Annotated[float, typer.Option(min=0.5, help="Longest cue, s.")] = 7.0,
    min_gap: Annotated[float, typer.Option(min=0.0, help="Gap kept between consecutive cues, s.")] = 0.0,
    num_beams: NumBeamsOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    decoding: DecodingOpt = Decoding.beam,
    seed: SeedOpt = 0,
    length_penalty: LengthPenaltyOpt = 1.0,
    no_repeat_ngram_size: NoRepeatNgramOpt = None,
    logprob_threshold: LogprobThresholdOpt = None,
    initial_prompt: InitialPromptOpt = None,
    word_timestamps: WordTimestampsOpt = False,
    aligner: AlignerOpt = None,
    highlight_words: HighlightWordsOpt = False,
    max_line_width: MaxLineWidthOpt = None,
    max_line_count: MaxLineCountOpt = None,
    max_words_per_line: MaxWordsPerLineOpt = None,
    audio_rate: AudioRateOpt = None,
    video_rate: VideoRateOpt = None,
    face_backend: FaceBackendOpt = "dlib",
    detect_every: DetectEveryOpt = 10,
    batch_size: BatchSizeOpt = None,
    batch_seconds: BatchSecondsOpt = 30.0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Subtitle long recordings: speech chunks from voice activity detection, readable timed cues."""
    setup_command(quiet, verbose, threads)
    layout = word_layout(ctx.params, quiet)
    check_language(language, checkpoint)
    cue_options = run_guarded(
        dataclasses.replace,
        layout,
        max_line_chars=max_line_chars,
        max_lines=max_lines,
        min_duration=min_duration,
        max_duration=max_duration,
        min_gap=min_gap,
    )
    flags = {k: v for k, v in ctx.params.items() if k != "min_duration"}  # here --min-duration is the cue's
    options = transcribe_options(flags, mode=mode.value if mode else "auto", segmentation="vad")
    run_command(
        files,
        options,
        formats=output_format,
        output_dir=output_dir,
        existing=existing_policy(overwrite, skip_existing),
        checkpoint=checkpoint,
        device=device,
        dtype=dtype,
        quiet=quiet,
        verbose=verbose,
        cue_options=cue_options,
    )


WORD_LAYOUT_FLAGS = ("highlight_words", "max_line_width", "max_line_count", "max_words_per_line")


def word_layout(flags: dict, quiet: bool):
    """The CueOptions of the whisper-named layout flags (the defaults without them). As in whisper, they
    need --word-timestamps (exit 2 before any model loads) and the ones that do nothing together are
    warned about."""
    from ..tasks.subtitles import CueOptions  # lazy: numpy, which --help never needs

    given = [f"--{name.replace('_', '-')}" for name in WORD_LAYOUT_FLAGS if flags[name]]
    if given and not flags["word_timestamps"]:
        need = "needs" if len(given) == 1 else "need"
        raise fail(f"{' and '.join(given)} {need} --word-timestamps (subtitles laid out by word times)")
    if flags.get("aligner") is not None and not flags["word_timestamps"]:
        raise fail(f"--aligner {flags['aligner']} needs --word-timestamps (it times words, nothing else)")
    unused = []
    if flags["max_line_count"] and not flags["max_line_width"]:
        unused.append("--max-line-count has no effect without --max-line-width")
    if flags["max_words_per_line"] and flags["max_line_width"]:
        unused.append("--max-words-per-line has no effect with --max-line-width")
    for message in [] if quiet else unused:
        stderr.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)
    return run_guarded(CueOptions, **{name: flags[name] for name in WORD_LAYOUT_FLAGS})


def existing_policy(overwrite: bool, skip_existing: bool) -> str:
    if overwrite and skip_existing:
        raise fail("--overwrite and --skip-existing exclude each other")
    return "overwrite" if overwrite else "skip" if skip_existing else "error"


def chosen_formats(values: list[OutputFormat], output_dir: Path | None, n_files: int) -> list[str]:
    """The -f values, `all` expanded; without -o only one format, and subtitles or tsv of one file."""
    from ..tasks.writers import FORMATS  # lazy: numpy, which --help never needs

    formats = list(
        dict.fromkeys(f for v in values for f in (FORMATS if v is OutputFormat.all else [v.value]))
    )
    if output_dir is None:
        if len(formats) > 1:
            raise fail(f"-f {' '.join(formats)}: several formats are written as files: add --output-dir DIR")
        if n_files > 1 and formats[0] in ("srt", "vtt", "tsv"):
            raise fail(f"-f {formats[0]} prints one file to stdout: with several files add --output-dir DIR")
    return formats


def run_command(
    files: list[Path],
    options,
    *,
    formats: list[OutputFormat],
    output_dir: Path | None,
    existing: str,
    checkpoint: str | None,
    device: str,
    dtype: str,
    quiet: bool,
    verbose: bool,
    cue_options=None,
) -> None:
    """Everything both commands do: check the request, plan the outputs, load the model, run the files."""
    # lazy: numpy, which --help never needs
    from ..frontends.media import prefetch
    from ..tasks.writers import check_output_dir, plan_outputs

    chosen = chosen_formats(formats, output_dir, len(files))
    if output_dir is not None:
        run_guarded(check_output_dir, output_dir)
    if sum(str(f) == STDIN for f in files) > 1:
        raise fail("- (standard input) can be given once")
    if files and str(files[0]) != STDIN:
        # the first file's probe and audio decoded while torch is imported and the model loads
        prefetch(files[0], audio=options.mode in ("auto", "asr"))
    config = checkpoint_config(checkpoint)
    check_modes(config, [] if options.mode == "auto" else [options.mode])  # before any model loads
    if options.word_timestamps and options.aligner is not None:
        from ..checkpoints.aligners import locate_aligner  # lazy: torch, which --help never needs

        run_guarded(locate_aligner, options.aligner)  # not downloaded: said before any model loads
    with stdin_as_file(files) as (paths, labels):
        inputs = readable_inputs(paths, labels)  # a typo costs no model load
        if output_dir is not None:
            stems = [(str(p), STDIN_STEM if str(p) in labels else None) for p in inputs.readable]
            todo = run_guarded(plan_outputs, stems, output_dir, chosen, existing)
            for path, planned in zip(list(inputs.readable), todo, strict=True):
                name = STDIN_NAME if str(path) in labels else display_name(path)
                if not planned.run:
                    inputs.readable.remove(path)
                    inputs.skipped += 1
                    if not quiet:
                        stderr.print(f"skipped (outputs exist): {name}", soft_wrap=True, markup=False)
                elif planned.redo and not quiet:
                    stderr.print(f"redoing {name}: {'; '.join(planned.redo)}", soft_wrap=True, markup=False)
            if not inputs.readable:
                if not quiet:
                    stderr.print(f"nothing to do: the outputs of all {inputs.skipped} file(s) exist")
                if inputs.failed:
                    raise typer.Exit(EXIT_FAILED)
                return
        transcriber = load_transcriber(checkpoint, device, dtype, quiet, verbose)
        run_files(
            transcriber,
            inputs,
            options,
            output_dir=output_dir,
            formats=chosen,
            cue_options=cue_options,
            labels=labels,
            quiet=quiet,
            verbose=verbose,
        )


class Inputs:
    """The command's files: those that can be read, and how many could not (each reported once)."""

    def __init__(self, files: list[Path], labels: dict[str, str] | None = None) -> None:
        from ..frontends.media import check_input  # lazy: numpy, which --help never needs

        self.given, self.readable, self.failed, self.skipped = len(files), [], 0, 0
        for path in files:
            try:
                check_input(path)
            except AvsrError as exc:
                self.failed += 1
                report_error(named(exc, labels or {}))
                continue
            self.readable.append(path)


def readable_inputs(files: list[Path], labels: dict[str, str] | None = None) -> Inputs:
    """Check every input before the model loads; if none can be read, stop here (exit 1)."""
    inputs = Inputs(files, labels)
    if not inputs.readable:
        raise typer.Exit(EXIT_FAILED)
    return inputs


def run_files(
    transcriber, inputs: Inputs, options, *, output_dir, formats, cue_options, labels, quiet, verbose
) -> None:
    """Transcribe the inputs with one loaded model: outputs per file; a file that fails (to decode, to
    transcribe, to be written) is reported in one line and the others go on; exit 1 if any failed."""
    # lazy: numpy, which --help never needs
    from ..frontends.media import probe
    from ..tasks.writers import write_result

    run_guarded(transcriber.check_options, options)
    threshold = options.resolved(transcriber.model.config.decoding).logprob_threshold
    files = inputs.readable
    total = None
    if not quiet and stderr.is_terminal:  # progress over media time
        total = sum(_duration(probe, f) for f in files)
    failed = inputs.failed
    said: set[str] = set()
    name_lines = output_dir is None and len(files) + inputs.failed > 1  # grep-style `file: text`
    with MediaProgress(total, quiet, unit="s") as advance:
        for item in transcriber.transcribe_many(files, options, on_progress=advance):
            if isinstance(item, AvsrError):
                failed += 1
                report_error(named(item, labels))
                continue
            stem = None
            if item.path in labels:
                stem, item.path = STDIN_STEM, labels[item.path]
            name = display_name(item.path)
            for message in item.warnings if not quiet else []:
                message = relabelled(message, labels)
                stderr.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True, markup=True)
            notes = [relabelled(n, labels) for n in item.notes]
            for note in [] if quiet else [n for n in notes if n not in said]:
                said.add(note)
                stderr.print(f"note: {note}", soft_wrap=True, markup=False)
            if verbose and item.low_confidence:
                stderr.print(
                    f"[yellow]warning:[/yellow] {name}: low confidence (avg_logprob {item.avg_logprob:.2f} < "
                    f"{threshold:g}): the transcript may be a guess",
                    soft_wrap=True,
                )
            if output_dir is not None:
                try:
                    written = write_result(item, output_dir, formats, cue_options, stem)
                except AvsrError as exc:
                    failed += 1
                    if stem is not None and str(exc).startswith(f"{STDIN}: "):  # named by item.path, "-"
                        exc.args = (STDIN_NAME + str(exc)[len(STDIN) :],)
                    report_error(exc)
                    continue
                advance.write("".join(f"{display_name(p)}\n" for p in written))
            else:
                advance.write(_stdout_text(item, formats[0], cue_options, name if name_lines else None))
            if verbose:
                times = ", ".join(f"{k} {v:.2f}s" for k, v in item.timings.items())
                stderr.print(f"{name}: {item.duration:.1f} s, {item.mode}; {times}", soft_wrap=True)
    if failed:
        if not quiet:
            stderr.print(f"{failed} of {inputs.given} file(s) failed")
        raise typer.Exit(EXIT_FAILED)


def _stdout_text(result, fmt: str, cue_options, name: str | None) -> str:
    """One result as printed: json as one line per file (JSON Lines); txt lines prefixed by the file's name
    when several files share stdout, as grep does."""
    from ..tasks.writers import WRITERS  # lazy: numpy, which --help never needs

    if fmt == "json":
        return json.dumps(result.to_dict(), ensure_ascii=False) + "\n"
    text = WRITERS[fmt](result, cue_options)
    if name is None:
        return text
    return "".join(f"{name}: {line}\n" for line in text.splitlines())


def _duration(probe, path) -> float:
    try:
        return probe(path).duration
    except AvsrError:
        return 0.0
