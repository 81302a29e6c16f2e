"""`avsr crop-mouth`: videos -> 96x96 mouth clips (mp4) and their 16 kHz audio (wav), as lip-reading models
see them; with a debug overlay, also the frames with landmarks drawn and a contact sheet of the crops."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import AvsrError
from ..frontends.assets import load_mean_face
from ..frontends.face_backends import Backend, make_backend, to_gray
from ..frontends.media import aligned_audio, write_wav
from ..frontends.mouth import MouthInfo, MouthOptions, mouth_frames
from ..frontends.video import write_video
from ..storage import atomic_path
from .writers import check_output_dir


def contact_sheet(crops: np.ndarray, columns: int = 10, count: int = 40) -> np.ndarray:
    """A grid image of `count` crops evenly spread over the clip, for a look at the crops."""
    index = np.linspace(0, len(crops) - 1, min(count, len(crops))).round().astype(int)
    tiles = list(crops[index]) + [np.zeros_like(crops[0])] * (-len(index) % columns)
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


@dataclass
class CropResult:
    video: Path
    wav: Path | None
    overlay: Path | None
    sheet: Path | None
    info: MouthInfo


@dataclass
class CropFailure:
    """A file of a batch that could not be cropped (nothing of it is written; the batch goes on)."""

    path: Path
    error: AvsrError


def crop_mouth_file(
    video_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    options: MouthOptions = MouthOptions(),
    backend: Backend | None = None,
    debug_overlay: bool = False,
    gray: bool = False,
) -> CropResult:
    """Write <stem>_mouth.mp4 (96x96 RGB, as auto_avsr saves them; grey with `gray`, 25 fps) and <stem>.wav
    (16 kHz mono, 640 samples a frame) into `output_dir`; with debug_overlay also <stem>_overlay.mp4
    (landmarks and crop square on the frames) and <stem>_crops.png (a contact sheet). Every file is written
    atomically."""
    out, stem = Path(output_dir), Path(video_path).stem
    overlay = out / f"{stem}_overlay.mp4" if debug_overlay else None
    crops, info = mouth_frames(video_path, options, backend, overlay)
    if gray:
        crops = np.stack([to_gray(c) for c in crops]) if len(crops) else crops[..., 0]
    video = write_video(out / f"{stem}_mouth.mp4", crops)
    audio = aligned_audio(video_path, len(crops))
    wav = write_wav(out / f"{stem}.wav", audio) if audio is not None else None
    if audio is None:
        info.warnings.append("no audio stream: no .wav written")
    sheet = None
    if debug_overlay:
        sheet = out / f"{stem}_crops.png"
        with atomic_path(sheet) as tmp:
            Image.fromarray(contact_sheet(crops)).save(tmp, format="PNG")
    return CropResult(video, wav, overlay, sheet, info)


def crop_mouth_files(
    files: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    options: MouthOptions = MouthOptions(),
    debug_overlay: bool = False,
    gray: bool = False,
) -> Iterator[CropResult | CropFailure]:
    """`crop_mouth_file` on each of `files` in turn, one face backend for all: yields each file's CropResult,
    or its CropFailure when it cannot be cropped. Before any file (and before the first result is asked
    for), raises AvsrError unless `output_dir` is writable, the mean face is at hand (downloaded once) and
    the face backend loads."""
    check_output_dir(Path(output_dir))
    load_mean_face(options.mean_face)  # nothing can be cropped without it
    backend = make_backend(options.backend)
    return _crop_each(files, output_dir, options, backend, debug_overlay, gray)


def _crop_each(
    files: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    options: MouthOptions,
    backend: Backend,
    debug_overlay: bool,
    gray: bool,
) -> Iterator[CropResult | CropFailure]:
    for path in files:
        try:
            yield crop_mouth_file(path, output_dir, options, backend, debug_overlay, gray)
        except AvsrError as exc:
            yield CropFailure(Path(path), exc)
