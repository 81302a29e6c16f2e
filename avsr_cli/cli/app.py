"""The `avsr` command: a thin Typer layer over the library (human output on stderr, data on stdout/files)."""

from __future__ import annotations

import dataclasses
import enum
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import AvsrError
from ..version import __version__

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
    stderr.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
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


def report_error(exc: AvsrError) -> None:
    """One line for a failure that does not stop the batch (the traceback with --debug)."""
    if STATE["debug"]:
        raise exc
    stderr.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)


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
LengthPenaltyOpt = Annotated[
    float, typer.Option(help="Beam search: exponent of the length normalisation (>1 favours longer text).")
]
MergeGapOpt = Annotated[
    float,
    typer.Option(
        min=0.0,
        help="Speech regions closer than this (s) share a chunk; smaller: finer timing, less context.",
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
    str,
    typer.Option(
        help="vsr/avsr: face landmarks by dlib (offline), face-alignment (FAN, needs its weights) or "
        "mediapipe."
    ),
]
DetectEveryOpt = Annotated[
    int,
    typer.Option(min=1, help="vsr/avsr: run the face detector every N frames, track in between (1: all)."),
]


def transcribe_options(flags: dict[str, Any], **fixed: Any):
    """The TranscribeOptions of transcribe, export-subtitles and evaluate from the command's flags
    (`ctx.params`): the decoding flags become its DecodingOptions (None: the checkpoint's defaults), every
    flag named like one of its fields maps onto that field, and `fixed` sets what the command decides."""
    from ..modeling.decoding import DecodingOptions
    from ..tasks.transcribe import TranscribeOptions

    values = {k: v.value if isinstance(v, enum.Enum) else v for k, v in flags.items()}
    strategy = DecodingOptions(
        strategy=values["decoding"],
        num_beams=values["num_beams"],
        max_new_tokens=values["max_new_tokens"],
        seed=values["seed"],
        length_penalty=values["length_penalty"],
    )
    names = {f.name for f in dataclasses.fields(TranscribeOptions)} - {"decoding"}
    chosen = {k: str(v) if isinstance(v, Path) else v for k, v in values.items() if k in names}
    return run_guarded(TranscribeOptions, decoding=strategy, **{**chosen, **fixed})


def load_transcriber(checkpoint: str | None, device: str, dtype: str, quiet: bool):
    """The model of --checkpoint, loaded once (errors become one-line messages)."""
    from ..tasks.transcribe import Transcriber

    if checkpoint is None:
        from ..checkpoints.loading import DEFAULT_MODEL, default_checkpoint

        checkpoint = str(run_guarded(default_checkpoint))
        if not quiet:
            stderr.print(
                f"no --checkpoint given: using the built-in {DEFAULT_MODEL} (small English ASR model; "
                "--checkpoint or AVSR_CHECKPOINT picks another)"
            )
    elif not quiet:
        stderr.print(f"loading checkpoint {checkpoint} ...")
    return run_guarded(Transcriber.from_checkpoint, checkpoint, device=device, dtype=dtype)


def entrypoint() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Before torch loads: OpenMP threads that busy-wait at every barrier collapse under load on a small
    # machine (5 clips: 117 s with a competing job, 16 s passive); passive waiting costs nothing alone.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()
