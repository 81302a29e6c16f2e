"""The `avsr` command: a thin Typer layer over the library (human output on stderr, data on stdout/files)."""

from __future__ import annotations

import enum
import json
import os
import sys
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


@app.command()
def transcribe(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Media files (any container ffmpeg reads). Use `--` before names that begin with '-'.",
            show_default=False,
        ),
    ],
    checkpoint: Annotated[
        Optional[str],
        typer.Option(
            "--checkpoint", "-c", help="Checkpoint directory or model name.", envvar="AVSR_CHECKPOINT"
        ),
    ] = None,
    mode: Annotated[Mode, typer.Option(help="asr: audio; vsr: lips; avsr: both.")] = Mode.asr,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--output-format", "-f", help="Format of the output files (and of stdout)."),
    ] = OutputFormat.txt,
    output_dir: Annotated[
        Optional[Path], typer.Option("--output-dir", "-o", help="Write <stem>.<ext> files here.")
    ] = None,
    num_beams: Annotated[
        Optional[int], typer.Option(min=1, help="Beams (default: the checkpoint's).")
    ] = None,
    max_new_tokens: Annotated[
        Optional[int], typer.Option(min=1, help="Most tokens to generate (default: the checkpoint's).")
    ] = None,
    decoding: Annotated[
        Decoding,
        typer.Option(
            help="beam: deterministic beam search; reference: the reference's beam sampling "
            "(temperature 0.6, top-p 0.9), seeded."
        ),
    ] = Decoding.beam,
    seed: Annotated[int, typer.Option(help="Seed for --decoding reference.")] = 0,
    audio_rate: Annotated[
        Optional[int], typer.Option(help="Audio compression rate (one the checkpoint was trained with).")
    ] = None,
    video_rate: Annotated[Optional[int], typer.Option(help="Video compression rate.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Clips decoded together.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Per-file timings on stderr.")] = False,
) -> None:
    """Transcribe media files: text on stdout, and files in --output-dir."""
    from .decoding import DecodingOptions
    from .transcribe import TranscribeOptions, Transcriber
    from .writers import FORMATS, WRITERS, check_output_dir, write_result

    if checkpoint is None:
        raise fail("no checkpoint given: pass --checkpoint DIR_OR_NAME or set AVSR_CHECKPOINT")
    formats = list(FORMATS) if output_format is OutputFormat.all else [output_format.value]
    if output_dir is not None:
        run_guarded(check_output_dir, output_dir)
    options = run_guarded(
        TranscribeOptions,
        mode=mode.value,
        audio_rate=audio_rate,
        video_rate=video_rate,
        batch_size=batch_size,
        decoding=DecodingOptions(
            strategy=decoding.value, num_beams=num_beams, max_new_tokens=max_new_tokens, seed=seed
        ),
    )
    if not quiet:
        stderr.print(f"loading checkpoint {checkpoint} ...")
    transcriber = run_guarded(
        Transcriber.from_checkpoint, checkpoint, device=device, dtype=dtype, options=options
    )
    run_guarded(transcriber.check_options, options)
    failed = 0
    stdout_writer = WRITERS["txt" if output_format is OutputFormat.all else output_format.value]
    with _progress(len(files), quiet) as advance:
        for item in transcriber.transcribe_many(files):
            if isinstance(item, AvsrError):
                failed += 1
                stderr.print(f"[red]error:[/red] {item}", soft_wrap=True)
            else:
                for warning in item.warnings if not quiet else []:
                    stderr.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
                if output_dir is not None:
                    write_result(item, output_dir, formats)
                sys.stdout.write(
                    stdout_writer(item)
                    if output_format is not OutputFormat.json
                    else json.dumps(item.to_dict(), ensure_ascii=False) + "\n"
                )
                sys.stdout.flush()
                if verbose:
                    times = ", ".join(f"{k} {v:.2f}s" for k, v in item.timings.items() if k != "batch_size")
                    stderr.print(f"{item.path}: {item.duration:.1f} s audio; {times}", soft_wrap=True)
            advance()
    if failed:
        if not quiet:
            stderr.print(f"{failed} of {len(files)} file(s) failed")
        raise typer.Exit(EXIT_FAILED)


class _progress:
    """A Rich progress bar on stderr, shown only on a terminal and without --quiet."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.enabled = not quiet and stderr.is_terminal and total > 1
        self.total = total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self.progress = Progress(console=stderr, transient=True)
        self.progress.start()
        task = self.progress.add_task("transcribing", total=self.total)
        return lambda: self.progress.advance(task)

    def __exit__(self, *exc) -> None:
        if self.enabled:
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


def entrypoint() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
