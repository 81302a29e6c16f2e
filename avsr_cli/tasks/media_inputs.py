"""Media decoded into what a mode needs: 16 kHz audio and/or 25 fps mouth crops (`MediaInput`); a recording
too long to hold is scanned once and read again block by block (`AudioStream`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AvsrError, MediaError
from ..frontends.features import SAMPLE_RATE
from ..frontends.media import VIDEO_FPS, aligned_audio, iter_audio
from ..frontends.mouth import MouthOptions, cached_mouth_frames, shared_backend
from .transcript import TranscribeOptions


def load_media(
    path: str | Path,
    mode: str,
    options: TranscribeOptions,
    audio_path: str | Path | None = None,
    whole_seconds: float = math.inf,
) -> MediaInput:
    """Decode what `mode` needs from `path`: 16 kHz audio (from `audio_path` when given) and/or the mouth
    crops (face backend loaded once per process; crops cached in `options.mouth_cache` when set).

    Mode asr: audio longer than `whole_seconds` is not kept: it is read through once for its length and
    level (`AudioStream`), then again block by block when transcribed, so memory does not grow with it.
    """
    if mode == "asr":
        return _audio_input(str(path), audio_path or path, whole_seconds)
    mouth = MouthOptions(backend=options.face_backend, detect_every=options.detect_every)
    backend = shared_backend(options.face_backend)
    crops, found, warnings = cached_mouth_frames(path, mouth, options.mouth_cache, backend)
    hits = np.flatnonzero(found)
    span = (hits[0] / VIDEO_FPS, (hits[-1] + 1) / VIDEO_FPS) if len(hits) else None
    audio = aligned_audio(audio_path or path, len(crops)) if mode == "avsr" else None
    if mode == "avsr" and audio is None:
        raise MediaError(f"{audio_path or path}: mode avsr needs an audio stream; the file has none")
    return MediaInput(str(path), audio, crops, mode, face_span=span, warnings=list(warnings))


def _audio_input(name: str, path: str | Path, whole_seconds: float) -> MediaInput:
    """The audio of `path`: whole when it lasts `whole_seconds` or less, else its `AudioStream`."""
    blocks: list[np.ndarray] | None = []
    samples, squares = 0, 0.0
    for block in iter_audio(path):
        samples += len(block)
        squares += float(np.square(block, dtype=np.float64).sum())
        if blocks is not None:
            blocks.append(block)
            if samples > whole_seconds * SAMPLE_RATE:
                blocks = None  # too long to hold: read again when transcribed
    if blocks is not None:
        return MediaInput(name, np.concatenate(blocks) if blocks else np.zeros(0, np.float32), mode="asr")
    rms = math.sqrt(squares / samples)
    level = 20 * math.log10(rms) if rms > 0 else float("-inf")
    return MediaInput(name, mode="asr", stream=AudioStream(Path(path), samples, level))


@dataclass(frozen=True)
class AudioStream:
    """A recording too long to hold: read block by block from `path` when transcribed."""

    path: Path
    samples: int  # 16 kHz mono samples, counted when it was scanned
    level: float  # RMS in dBFS


@dataclass
class MediaInput:
    """A decoded input: 16 kHz audio and/or 25 fps mouth crops for `mode`, or the error loading raised.
    A long audio-only input has `stream` instead of `audio` (`load_media`)."""

    name: str
    audio: np.ndarray | None = None
    video: np.ndarray | None = None  # (T, 96, 96) uint8 mouth crops
    mode: str = "asr"
    error: AvsrError | None = None
    seconds: float = 0.0  # time spent decoding
    face_span: tuple[float, float] | None = None  # seconds: first to last frame with a face found
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # information, not a problem (see Result.notes)
    stream: AudioStream | None = None
