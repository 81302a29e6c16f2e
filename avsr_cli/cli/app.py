"""The `avsr` command: a thin Typer layer over the library (human output on stderr, data on stdout/files)."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, get_args

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup

from ..errors import AvsrError
from ..version import __version__

# Placeholders in --help and the man pages: words a person reads (FILE, N), not Python types (<path>, <int>).
SECONDS_NAMES = {"max_chunk", "merge_gap", "min_duration", "max_duration", "min_gap", "batch_seconds"}
SECONDS_NAMES |= {"vad_min_silence", "vad_speech_pad", "vad_min_speech"}


def placeholder(param) -> str | None:
    """The metavar for a parameter that names none: by its type, refined by its name."""
    desc, name = param.type_descriptor, param.name or ""
    if getattr(param, "is_flag", False):
        return " "  # flags take no value (None would show "<bool>")
    if desc.is_choice:  # one value: Typer lists the choices; repeatable: it would say <list[a|b]>
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices) if desc.is_list else None
    element = get_args(desc.annotation)[0] if desc.is_list else None  # list[Path]: FILE..., not TEXT...
    if desc.is_path or (isinstance(element, type) and issubclass(element, Path)):
        if name.endswith("dir") or name in ("mouth_cache", "feature_cache"):
            return "DIR"
        return "DATA" if name in ("dataset", "data", "val_data") else "FILE"
    kind = param.bare_type()
    if kind == "int":
        return "N"
    if kind == "float":
        return "SECONDS" if name in SECONDS_NAMES else "NUMBER"
    return "NAME" if name in ("checkpoint", "base", "name") else "TEXT"


def word_placeholders(params) -> None:
    """Give every parameter without a metavar a word placeholder (see `placeholder`)."""
    for param in params:
        if param.metavar is None:
            param.metavar = placeholder(param)
        if isinstance(param, TyperArgument):
            # Typer prints arguments as `{FILE}...` with a `<list[Path]>` type column; the metavar says it.
            label = (param.metavar or (param.name or "ARG").upper()) + ("..." if param.nargs != 1 else "")
            shown = label if param.required else f"[{label}]"
            param._usage_display_name = lambda shown=shown: shown
            param.display_type_rich = lambda ctx: None


class _WordPlaceholders:
    """Word placeholders on every parameter, --help and Typer's completion options included (added late)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        word_placeholders(params)
        return params


class Command(_WordPlaceholders, TyperCommand):
    """A Typer command with word placeholders."""


class Group(_WordPlaceholders, TyperGroup):
    """The `avsr` group with word placeholders."""


app = typer.Typer(
    name="avsr",
    cls=Group,
    help="Transcribe speech from audio, lips, or both, with a multimodal LLM (Llama-AVSR family).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold tokens
    add_completion=True,  # --install-completion / --show-completion, as Typer gives them
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


class _ConsoleHandler(logging.Handler):
    """The library's log lines (`avsr_cli.*` loggers), one plain line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        stderr.print(escape(record.getMessage()), soft_wrap=True)


def setup_command(quiet: bool, verbose: bool, threads: int | None = None) -> None:
    """What every command does first: -q (errors only) and -v (more detail) exclude each other and set how
    much the library's log lines say; --threads (or AVSR_THREADS) sizes the CPU thread pools."""
    from ..runtime import set_cpu_threads

    if quiet and verbose:
        raise fail("--quiet and --verbose exclude each other")
    run_guarded(set_cpu_threads, threads)
    logger = logging.getLogger("avsr_cli")
    logger.handlers = [_ConsoleHandler()]
    logger.propagate = False
    logger.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO)


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
    os.environ.setdefault("TQDM_DISABLE", "1")  # raw tqdm bars (GGUF conversion); read when tqdm loads


def report_error(exc: AvsrError) -> None:
    """One line for a failure that does not stop the batch (the traceback with --debug)."""
    if STATE["debug"]:
        raise exc
    stderr.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)


def run_guarded(func, *args, **kwargs):
    """Run a library call; an AvsrError becomes a one-line message and exit code (traceback with --debug)."""
    with guarded():
        return func(*args, **kwargs)


@contextlib.contextmanager
def guarded():
    """A block of library calls whose AvsrError becomes a one-line message and exit code, as run_guarded."""
    try:
        yield
    except AvsrError as exc:
        if STATE["debug"]:
            raise
        raise fail(str(exc), getattr(exc, "exit_code", EXIT_FAILED)) from None
    except (ValueError, OSError) as exc:
        if STATE["debug"]:
            raise
        raise fail(str(exc), EXIT_USAGE) from None


# Options shared by the commands that run a model.
CHECKPOINT_FLAGS = ("--checkpoint", "--model", "-c")  # --model: the name openai-whisper users know
CheckpointOpt = Annotated[
    Optional[str],
    typer.Option(
        *CHECKPOINT_FLAGS,
        help="Checkpoint directory, model name or size (tiny = avsr-tiny-en); download-checkpoint --list.",
        envvar="AVSR_CHECKPOINT",
    ),
]
LanguageOpt = Annotated[
    Optional[str],
    typer.Option(
        metavar="LANG",
        help="Language of the speech, a code or a name (en, English); one the model does not transcribe is "
        "refused, naming those it does. Default: the model's.",
        show_default=False,
    ),
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
BatchSizeOpt = Annotated[
    Optional[int],
    typer.Option(
        min=1,
        help="Most clips (or chunks) decoded together (default: 16 decoder rows, clips x beams, 4 clips at "
        "least).",
        show_default=False,
    ),
]
BatchSecondsOpt = Annotated[
    float, typer.Option(min=0.1, help="Most seconds of media decoded together (memory grows with it).")
]
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _device(value: str) -> str:
    if not DEVICE_RE.match(value):
        raise typer.BadParameter(f"{value!r} is not one of auto, cpu, cuda, cuda:N (N: a GPU number).")
    return value


DeviceOpt = Annotated[
    str, typer.Option(metavar="<auto|cpu|cuda|cuda:N>", callback=_device, help="Where the model runs.")
]
DtypeOpt = Annotated[
    Literal["auto", "float32", "bfloat16", "float16"],
    typer.Option(help="Precision of weights and compute (auto: bfloat16 on a GPU that has it, else fp32)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="More detail on stderr (per file or step).")
]
ThreadsOpt = Annotated[
    Optional[int],
    typer.Option(
        min=1,
        envvar="AVSR_THREADS",
        help="CPU threads for torch and ffmpeg (default: the physical cores; the VAD always uses one).",
        show_default=False,
    ),
]
ModeOpt = Annotated[
    Optional[Mode],
    typer.Option(
        help="asr: audio; vsr: lips; avsr: both. Default: per file, the richest mode the checkpoint has "
        "and the file's streams allow (avsr, else asr, else vsr)."
    ),
]


def lips_only(text: str) -> str:
    """The help of an option used only when reading lips, on a command that may not read them."""
    return "vsr/avsr: " + text[0].lower() + text[1:]


FaceBackend = Literal["dlib", "face-alignment", "mediapipe"]  # frontends.face_backends.BACKENDS
FACE_BACKEND_HELP = "Face landmarks by dlib (offline), face-alignment (FAN, needs its weights) or mediapipe."
FaceBackendOpt = Annotated[FaceBackend, typer.Option(help=lips_only(FACE_BACKEND_HELP))]
DETECT_EVERY_HELP = "Run the face detector every N frames, track the face in between (1: every frame)."
DetectEveryOpt = Annotated[int, typer.Option(min=1, help=lips_only(DETECT_EVERY_HELP))]


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
    names = {f.name for f in dataclasses.fields(TranscribeOptions)} - {"decoding", "vad"}
    chosen = {k: str(v) if isinstance(v, Path) else v for k, v in values.items() if k in names}
    if "vad_threshold" in values:  # --vad-threshold etc. are the VadOptions fields, prefixed
        from ..frontends.vad import VadOptions

        vad_names = {f.name for f in dataclasses.fields(VadOptions)}
        chosen["vad"] = run_guarded(
            VadOptions, **{k[4:]: v for k, v in values.items() if k.startswith("vad_") and k[4:] in vad_names}
        )
    return run_guarded(TranscribeOptions, decoding=strategy, **{**chosen, **fixed})


def checkpoint_config(checkpoint: str | None):
    """The ModelConfig of --checkpoint (or the built-in model), read without loading any weights."""
    from ..checkpoints.locate import find_checkpoint
    from ..modeling.config import CONFIG_FILE, ModelConfig

    if checkpoint is None:
        from ..checkpoints.loading import default_checkpoint

        path = run_guarded(default_checkpoint)
    else:
        path = run_guarded(find_checkpoint, checkpoint)
    return run_guarded(ModelConfig.load, path / CONFIG_FILE)


def check_modes(config, modes: list[str]) -> None:
    """Before any model loads: a mode the checkpoint lacks is a usage error that names the zoo models that
    have it, with their download size and what they need to run."""
    from ..checkpoints.locate import zoo_status

    lacking = [m for m in modes if m not in config.modes]
    if not lacking:
        return
    offers = [
        f"{r.name} ({r.download_size}, {r.memory})"
        for r in zoo_status()
        if r.kind == "checkpoint" and all(m in r.modes for m in lacking)
    ]
    where = f"; models that do: {', '.join(offers)} (avsr download-checkpoint NAME)" if offers else ""
    raise fail(
        f"checkpoint '{config.name}' reads only {', '.join(config.modes)}, not {', '.join(lacking)}{where}"
    )


def check_language(language: str | None, checkpoint: str | None) -> None:
    """Before any model loads: --language must be one the checkpoint (the built-in model without one)
    transcribes, by its model card."""
    if language is None:
        return
    from ..checkpoints.locate import check_language as check

    checkpoint_config(checkpoint)  # an unknown or broken checkpoint says so first
    if checkpoint is None:
        from ..checkpoints.loading import DEFAULT_MODEL

        checkpoint = DEFAULT_MODEL
    run_guarded(check, language, checkpoint)


def load_transcriber(checkpoint: str | None, device: str, dtype: str, quiet: bool, verbose: bool = False):
    """The model of --checkpoint, loaded once (errors become one-line messages)."""
    from ..tasks.transcribe import Transcriber

    if checkpoint is None:
        from ..checkpoints.loading import DEFAULT_MODEL, default_checkpoint

        checkpoint = str(run_guarded(default_checkpoint))
        if not quiet and stderr.is_terminal:
            stderr.print(
                f"[dim]model: built-in {DEFAULT_MODEL} (English, audio only; --model picks another)[/dim]"
            )
    elif verbose:
        stderr.print(f"loading checkpoint {escape(checkpoint)} ...")
    return run_guarded(Transcriber.from_checkpoint, checkpoint, device=device, dtype=dtype)


def entrypoint() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Before torch loads: OpenMP threads that busy-wait at every barrier collapse under load on a small
    # machine (5 clips: 117 s with a competing job, 16 s passive); passive waiting costs nothing alone.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()
