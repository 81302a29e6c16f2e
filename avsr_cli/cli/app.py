"""The `avsr` Typer app and the conventions every command keeps: word placeholders in --help, library
errors as one line and an exit code, log lines on stderr (human output on stderr, data on stdout or files)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Annotated, Optional, get_args

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup

from ..errors import AvsrError
from ..runtime import end_process, return_freed_memory, set_cpu_threads, skip_final_collection
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


# openai-whisper's names for our options (its --beam_size is our --num-beams)
WHISPER_OPTION_NAMES = {"beam-size": "num-beams"}  # as click passes them: no leading dashes


def whisper_spelling(token: str) -> str:
    """An option name (or choice) as avsr spells it: openai-whisper writes its options with underscores
    (--output_dir, --word_timestamps), and click compares names and choices after this normalisation."""
    token = token.replace("_", "-")
    return WHISPER_OPTION_NAMES.get(token, token)


app = typer.Typer(
    name="avsr",
    cls=Group,
    help="Transcribe speech from audio, lips, or both, with a multimodal LLM (Llama-AVSR family).\n\n"
    "Options also take openai-whisper's spellings: --output_dir, --word_timestamps, --beam_size.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold tokens
    add_completion=True,  # --install-completion / --show-completion, as Typer gives them
    context_settings={"token_normalize_func": whisper_spelling},  # inherited by every command
)
stderr = Console(stderr=True, highlight=False)
STATE = {"debug": False}
EXIT_FAILED = 1  # some inputs failed
EXIT_USAGE = 2  # bad options, unknown checkpoint, unwritable output: nothing was done


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


def entrypoint() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Before torch loads: OpenMP threads that busy-wait at every barrier collapse under load on a small
    # machine (5 clips: 117 s with a competing job, 16 s passive); passive waiting costs nothing alone.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return_freed_memory()
    try:
        app()
    except SystemExit as exc:
        end_process(exc.code)  # returns only while a thread the CLI did not start runs
        raise
    finally:
        skip_final_collection()  # the usual exit: a traceback (--debug), or that thread
