"""`avsr download-checkpoint` and `avsr import-checkpoint`: models of the zoo fetched, reference checkpoints
converted; where they are on stdout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .app import fail, run_guarded, setup_command, stderr
from .options import QuietOpt, ThreadsOpt, VerboseOpt
from .progress import ByteProgress


def import_checkpoint(
    reference: Annotated[Path, typer.Argument(help="A reference Llama-AVSR / Omni-AVSR .pth state dict.")],
    output_dir: Annotated[Path, typer.Argument(help="Where to write the avsr checkpoint directory.")],
    config: Annotated[
        Path,
        typer.Option(
            help="JSON describing what the .pth cannot tell (LLM and encoder "
            "sources, LoRA rank/alpha, compression); see docs/models.md."
        ),
    ],
    keep_frozen: Annotated[
        bool,
        typer.Option(
            help="Also write the encoder and LLM weights the .pth "
            "carries, so the base LLM need not be downloaded."
        ),
    ] = True,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Convert a reference .pth checkpoint (never unpickled: weights only) into an avsr checkpoint."""
    from ..checkpoints.importer import ImportSpec, import_reference  # lazy: torch, which --help never needs

    setup_command(quiet, verbose, threads)
    spec = run_guarded(ImportSpec.load, config)
    out = run_guarded(import_reference, reference, output_dir, spec, keep_frozen=keep_frozen)
    if not quiet:
        stderr.print(f"imported {reference.name}: use it with avsr transcribe FILE -c {out}", soft_wrap=True)
    typer.echo(str(out))


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
    verbose: VerboseOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Fetch a known model's parts (Hub, URL, Google Drive), verify, convert; print where they are."""
    # lazy: http and ssl, which --help never needs
    from ..checkpoints.download import DownloadOptions, download_model
    from ..checkpoints.locate import zoo_status

    setup_command(quiet, verbose, threads)
    if list_models:
        print_zoo(run_guarded(zoo_status))
        return
    if name is None:
        raise fail("give a model NAME (`avsr download-checkpoint --list` shows them)")
    options = DownloadOptions(dir=target_dir, token=token, revision=revision, force=force)
    with ByteProgress(quiet) as progress:
        result = run_guarded(download_model, name, options, progress)
    if not quiet:
        print_download(result, verbose)
    paths = [result.checkpoint] if result.checkpoint else [p.path for p in result.parts]
    typer.echo("\n".join(str(p) for p in paths))


def print_download(result, verbose: bool = False) -> None:
    """Where each part is and its licence (stderr)."""
    from ..checkpoints.http import human_size  # lazy: http and ssl, which --help never needs

    stderr.print(f"{result.name} ({result.model_dir})", soft_wrap=True, markup=False)
    for p in result.parts:
        size = f", {human_size(p.size)}" if p.size else ""
        stderr.print(f"  {p.name}: {p.kind} {p.source} ({p.action}{size})", soft_wrap=True, markup=False)
        if verbose:
            stderr.print(f"    at {p.path}", soft_wrap=True, markup=False)
        gated = " (gated: its licence was accepted on the Hub)" if p.gated else ""
        stderr.print(f"    licence: {p.license}{gated}", soft_wrap=True, markup=False)
    if result.checkpoint:
        stderr.print(f"checkpoint: {result.checkpoint}", soft_wrap=True, markup=False)
        stderr.print(f"use it: avsr transcribe FILE --checkpoint {result.name}", soft_wrap=True)
    elif result.aligner:
        stderr.print(
            f"use it: avsr transcribe FILE --word-timestamps --aligner {result.name}", soft_wrap=True
        )


def print_zoo(rows) -> None:
    """The zoo (stdout: it is what was asked for): on a terminal, a model a line (its name never wrapped)
    with its details under it; else one tab-separated line per model under a header line, for grep and cut."""
    columns = (
        "name",
        "kind",
        "modes",
        "languages",
        "WER %",
        "WER source",
        "download",
        "needs",
        "licence",
        "gated on the Hub",
        "status",
    )
    if not sys.stdout.isatty():
        cells = [
            (
                r.name,
                r.kind,
                ",".join(r.modes),
                ",".join(r.languages),
                r.wer,
                r.wer_source,
                r.download_size,
                r.memory,
                r.license,
                ",".join(r.gated),
                r.status,
            )
            for r in rows
        ]
        sys.stdout.write("".join("\t".join(row) + "\n" for row in [columns, *cells]))
        return
    out = Console(highlight=False)
    for kind, title in (
        ("checkpoint", "Checkpoints (avsr transcribe --model NAME)"),
        ("base", "Base models: encoders and LLMs, nothing trained (avsr train --base)"),
        ("aligner", "Aligners: time the words of checkpoints without their own (--aligner NAME)"),
        ("?", "Cards that could not be read"),
    ):
        chosen = [r for r in rows if r.kind == kind]
        if not chosen:
            continue
        out.print(Text(title, style="bold"))
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True)  # names are what people copy: never cut or wrapped
        grid.add_column(overflow="fold")
        for r in chosen:
            head = [r.status, " ".join(r.modes), " ".join(r.languages), f"{r.download_size} download"]
            grid.add_row(r.name, " · ".join(x for x in [*head, f"needs {r.memory}" if r.memory else ""] if x))
            details = [f"WER % {r.wer} ({r.wer_source})" if r.wer else "", f"licence {r.license}"]
            if r.gated:
                details.append(f"gated on the Hub: {', '.join(r.gated)}")
            grid.add_row("", Text(" · ".join(d for d in details if d), style="dim"))
        out.print(grid)
