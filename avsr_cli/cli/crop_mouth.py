from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import EXIT_FAILED, report_error, run_guarded, setup_command, stderr
from .options import DETECT_EVERY_HELP, FACE_BACKEND_HELP, FaceBackend, QuietOpt, VerboseOpt


def crop_mouth(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Videos (any container ffmpeg reads).", show_default=False, readable=False, metavar="VIDEO"
        ),
    ],
    output_dir: Annotated[
        Path,
        typer.Option(
            "--output-dir",
            "-o",
            help="Write <stem>_mouth.mp4 and <stem>.wav (no audio stream: no .wav) here; stdout lists them.",
        ),
    ],
    face_backend: Annotated[FaceBackend, typer.Option(help=FACE_BACKEND_HELP)] = "dlib",
    detect_every: Annotated[int, typer.Option(min=1, help=DETECT_EVERY_HELP)] = 10,
    gray: Annotated[
        bool, typer.Option("--gray", help="Write grey mouth clips (default: RGB, as auto_avsr saves them).")
    ] = False,
    debug_overlay: Annotated[
        bool,
        typer.Option(
            "--debug-overlay",
            help="Also write <stem>_overlay.mp4 (landmarks and crop square drawn) and <stem>_crops.png.",
        ),
    ] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    threads: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            envvar="AVSR_THREADS",
            help="CPU threads for decoding and face detection (default: the physical cores).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Cut 96x96 mouth clips (RGB, 25 fps) and 16 kHz audio from videos, as lip-reading models see them."""
    # lazy: keeps `avsr --help` free of numpy, PIL and the frontends
    from ..frontends.mouth import MouthOptions
    from ..tasks.crop_mouth import CropFailure, crop_mouth_files

    setup_command(quiet, verbose, threads)
    options = run_guarded(MouthOptions, backend=face_backend, detect_every=detect_every)
    results = run_guarded(crop_mouth_files, files, output_dir, options, debug_overlay, gray)
    failed = 0
    for result in results:
        if isinstance(result, CropFailure):
            failed += 1
            report_error(result.error)
            continue
        info = result.info
        if not quiet:
            for warning in info.warnings:
                stderr.print(f"[yellow]warning:[/yellow] {info.path}: {warning}", soft_wrap=True)
        if verbose:
            stderr.print(
                f"{info.path}: {info.n_frames} frames, landmarks on {100 * info.hit_rate:.0f}%, "
                f"{info.detections} detector runs",
                soft_wrap=True,
            )
        written = (result.video, result.wav, result.overlay, result.sheet)
        typer.echo("\n".join(str(p) for p in written if p is not None))
    if failed:
        if not quiet:
            stderr.print(f"{failed} of {len(files)} file(s) failed")
        raise typer.Exit(EXIT_FAILED)
