"""Noise stage: audio noise at an exact SNR and video corruptions, for robustness tables like Llama-AVSR's.

Audio (Llama-AVSR datamodule/transforms.py AddNoise): a random segment of a noise
recording (auto_avsr's ``babble_noise.wav``; `load_noise`) is cut with ``random.randint(0, len(noise) - n)``
and mixed with ``torchaudio.functional.add_noise(speech, segment, snr)``: the noise is scaled so that the
energy ratio over the whole utterance is the SNR; the sum is not clipped. The reference draws the offset
unseeded; here each clip has its own generator seeded from (seed, clip id) (`clip_rng`), so runs repeat and
clips get different segments. Llama-AVSR's eval.py offers SNR 5, 2, 0, -2, -5 dB; the Omni-AVSR paper uses
5, 2.5, 0, -2.5, -5; the reference's "clean" default 999999 dB adds nothing measurable (here exactly nothing).

`white_noise` and `babble_noise` generate noise when no recording is at hand; numbers comparable with the
papers need their ``babble_noise.wav``.

Video (`occlude`): the DeeperForensics-1.0 distortions that open Llama-AVSR PR #1 applies to the 96x96 mouth
crops before CenterCrop(88) (datamodule/distortions.py, add_distortion_to_video.py; levels 1-5 there, 0 =
none), plus a real JPEG and a single occluding rectangle. OpenCV is not needed: blur, resize and colour
maths are written in numpy and match cv2 within 2 grey levels (cv2 rounds in fixed point; checked against
opencv-python 4 on random 96x96 frames). Frames are uint8 RGB (T, H, W, 3) or grey (T, H, W); the result
has the same shape and dtype.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..errors import MediaError
from ..frontends.media import SAMPLE_RATE, load_audio

# ---------------------------------------------------------------------------------------------------- audio


def add_noise(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`speech` plus `noise` (same shape) scaled to `snr_db` over the whole utterance, as float32.

    As torchaudio.functional.add_noise: scale = 10 ** ((10 log10(E_speech / E_noise) - snr) / 20). Silent
    speech or snr = +inf gives the speech unchanged; silent noise cannot reach an SNR (ValueError).
    """
    speech, noise = np.asarray(speech), np.asarray(noise)
    if speech.shape != noise.shape:
        raise ValueError(f"speech {speech.shape} and noise {noise.shape} differ in shape")
    if math.isnan(snr_db) or snr_db == -math.inf:
        raise ValueError(f"SNR must be a number or +inf, not {snr_db}")
    s, v = speech.astype(np.float64), noise.astype(np.float64)
    e_speech, e_noise = float(np.sum(s * s)), float(np.sum(v * v))
    if e_noise == 0:
        raise ValueError("the noise is silent: no SNR can be reached")
    scale = math.sqrt(e_speech / e_noise) * 10 ** (-snr_db / 20)  # 0.0 for 999999 dB (underflow)
    return (s + scale * v).astype(np.float32)


def measured_snr(speech: np.ndarray, noisy: np.ndarray) -> float:
    """10 log10(speech energy / residual energy) in dB, the residual being ``noisy - speech``."""
    s = np.asarray(speech, np.float64)
    residual = np.asarray(noisy, np.float64) - s
    return float(10 * np.log10(np.sum(s * s) / np.sum(residual * residual)))


def clip_rng(seed: int, clip_id: str) -> np.random.Generator:
    """A generator for one clip, stable across runs and machines (SHA-256 of seed and id, not hash())."""
    digest = hashlib.sha256(f"{seed}\0{clip_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def noise_segment(noise: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` samples of `noise` from a random offset (as the reference's randint(0, len - n)); a recording
    shorter than `n` is tiled from a random offset."""
    noise = np.asarray(noise, np.float32)
    if noise.ndim != 1 or noise.size == 0:
        raise ValueError("noise must be a non-empty 1-D array")
    if len(noise) >= n:
        start = int(rng.integers(0, len(noise) - n + 1))
        return noise[start : start + n].copy()
    start = int(rng.integers(0, len(noise)))
    return noise[(start + np.arange(n)) % len(noise)]


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise, RMS 0.1."""
    return (0.1 * rng.standard_normal(n)).astype(np.float32)


def _speech_shaped(n: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """One synthetic talker: noise with a rough speech spectrum, switched on and off at a syllabic rate.

    Spectrum: nothing below 100 Hz, flat to 500 Hz, -6 dB/octave above (an approximation of the long-term
    average speech spectrum, not a standard one). Envelope: Gaussian noise at 100 Hz smoothed by a 0.25 s
    Hann window (about 4 syllables/s), half-wave rectified, so the talker pauses about half of the time.
    """
    freqs = np.fft.rfftfreq(n, 1 / sample_rate)
    gain = np.where(freqs < 100, 0.0, 500 / np.maximum(freqs, 500))  # amplitude 1/f: -6 dB/octave
    shaped = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * gain, n)
    hop = sample_rate // 100
    control = np.convolve(rng.standard_normal(n // hop + 2), np.hanning(25), mode="same")
    envelope = np.interp(np.arange(n) / hop, np.arange(len(control)), np.maximum(control, 0.0))
    return shaped * envelope


def babble_noise(
    n: int,
    rng: np.random.Generator,
    speakers: int = 6,
    voices: Sequence[np.ndarray] | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Babble: `speakers` talkers at equal level summed, RMS 0.1.

    voices: speech recordings (e.g. TTS utterances) to draw talkers from, each a random voice at a random
    offset (tiled when short); without them each talker is synthetic (`_speech_shaped`: a crowd-like murmur
    with speech's spectrum and rhythm, no pitch or words).
    """
    total = np.zeros(n, np.float64)
    for _ in range(speakers if n else 0):
        if voices:
            talker = noise_segment(voices[int(rng.integers(len(voices)))], n, rng).astype(np.float64)
        else:
            talker = _speech_shaped(n, rng, sample_rate)
        rms = np.sqrt(np.mean(talker * talker)) if n else 0.0
        if rms > 0:
            total += talker / rms
    rms = np.sqrt(np.mean(total * total)) if n else 0.0
    return (0.1 * total / rms if rms > 0 else total).astype(np.float32)


def load_noise(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A noise recording as float32 mono at `sample_rate` (any format ffmpeg reads); MediaError if silent."""
    noise = load_audio(path, sample_rate)
    if not np.any(noise):
        raise MediaError(f"{path}: the noise recording is empty or silent")
    return noise


@dataclass(frozen=True)
class AudioNoise:
    """Noise at one SNR, reproducible per clip: ``apply(speech, clip_id)``."""

    noise: np.ndarray = field(repr=False, compare=False)
    snr_db: float
    seed: int = 0
    name: str = "noise"

    def apply(self, speech: np.ndarray, clip_id: str) -> np.ndarray:
        if self.snr_db == math.inf:
            return np.asarray(speech, np.float32)
        segment = noise_segment(self.noise, len(speech), clip_rng(self.seed, clip_id))
        return add_noise(speech, segment, self.snr_db)


# ---------------------------------------------------------------------------------------------------- video

# kind -> (parameter for levels 1..5, meaning). DeeperForensics-1.0 values as in Llama-AVSR PR #1
# (add_distortion_to_video.py get_distortion_parameter); jpeg qualities are ImageNet-C's severities
# (Hendrycks & Dietterich, corruptions.py jpeg_compression); block is our own.
OCCLUSIONS: dict[str, tuple[tuple[float, ...], str]] = {
    "gaussian_blur": ((7, 9, 13, 17, 21), "Gaussian blur with a k x k kernel, sigma k/6 (GB)"),
    "gaussian_noise": (
        (0.001, 0.002, 0.005, 0.01, 0.05),
        "white Gaussian noise of this variance added in YCbCr on a 0-1 scale, truncated to uint8 (GNC)",
    ),
    "block_wise": (
        (16, 32, 48, 64, 80),
        "this many 3x3 mid-grey blocks per frame, times max(1, shorter side // 96) (BW, PR #1's variant)",
    ),
    "pixelate": (
        (2, 3, 4, 5, 6),
        "shrunk by this factor and enlarged back, bilinear (DeeperForensics 'JPEG')",
    ),
    "color_saturation": ((0.4, 0.3, 0.2, 0.1, 0.0), "chroma scaled by this factor (CS)"),
    "color_contrast": ((0.85, 0.725, 0.6, 0.475, 0.35), "pixel values scaled by this factor (CC)"),
    "jpeg": ((25, 18, 15, 10, 7), "JPEG at this quality, per frame, with Pillow"),
    "block": (
        (0.1, 0.2, 0.3, 0.4, 0.5),
        "one mid-grey rectangle over this fraction of the frame, fixed per clip",
    ),
}
# Llama-AVSR PR #1 --occlusion-type codes -> kinds. Its "JPEG" is DeeperForensics' down/up-scaling, not JPEG.
REFERENCE_OCCLUSIONS = {
    "CS": "color_saturation",
    "CC": "color_contrast",
    "BW": "block_wise",
    "GNC": "gaussian_noise",
    "GB": "gaussian_blur",
    "JPEG": "pixelate",
}
GREY = 128  # the fill of DeeperForensics' blocks


def occlusion_kind(kind: str) -> str:
    """The kind named `kind`, or by its PR #1 code in capitals (GB, GNC, BW, JPEG, CS, CC).

    Mind the case: "JPEG" is PR #1's down/up-scaling (pixelate), "jpeg" a real JPEG.
    """
    name = REFERENCE_OCCLUSIONS.get(kind, kind)
    if name not in OCCLUSIONS:
        codes = ", ".join([*OCCLUSIONS, *REFERENCE_OCCLUSIONS])
        raise ValueError(f"unknown occlusion {kind!r} (expected one of {codes})")
    return name


def occlusion_parameter(kind: str, level: int) -> float:
    """The parameter of `kind` at `level` (1-5)."""
    if level not in range(1, 6):
        raise ValueError(f"occlusion level must be 1 to 5, not {level}")
    return OCCLUSIONS[occlusion_kind(kind)][0][level - 1]


def _blur(f: np.ndarray, k: int) -> np.ndarray:
    """cv2.GaussianBlur(img, (k, k), k / 6) on every frame, with cv2's default BORDER_REFLECT_101."""
    sigma = k / 6
    x = np.arange(k) - (k - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2)).astype(np.float32)
    g /= g.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * f.ndim
        pad[axis] = (k // 2, k // 2)
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(f, pad, mode="reflect"), k, axis=axis)
        f = windows @ g
    return f


def _resize(f: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.resize(..., INTER_LINEAR) of every frame: half-pixel centres, edges clamped, no antialiasing."""
    for axis, size in ((1, height), (2, width)):
        n = f.shape[axis]
        src = np.clip((np.arange(size) + 0.5) * (n / size) - 0.5, 0, n - 1)
        i0 = np.floor(src).astype(np.intp)
        w = (src - i0).astype(np.float32).reshape([size if a == axis else 1 for a in range(f.ndim)])
        f = np.take(f, i0, axis=axis) * (1 - w) + np.take(f, np.minimum(i0 + 1, n - 1), axis=axis) * w
    return f


def _to_uint8(f: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def _gaussian_noise(frames: np.ndarray, variance: float, rng: np.random.Generator) -> np.ndarray:
    """DeeperForensics gaussian_noise_color, in closed form.

    It converts to YCbCr (cv2 float, rescaled to [16, 235]/255 and [16, 240]/255), divides by 255, adds
    sqrt(variance) * N(0, 1) per channel, multiplies by 255 and converts back. That is noise of standard
    deviation sqrt(variance) * 255² / 219 on Y and * 255² / 224 on Cb and Cr, in pixel units, mapped to RGB
    with cv2's inverse (R = Y + 1.403 Cr, G = Y - 0.714 Cr - 0.344 Cb, B = Y + 1.773 Cb); the result is
    truncated to uint8 as there. Grey frames get the Y noise only (what Grayscale of the colour result keeps).
    """
    sd = math.sqrt(variance) * 255**2
    shape = frames.shape[:3]
    n_y = rng.standard_normal(shape, np.float32) * (sd / 219)
    if frames.ndim == 3:
        noise = n_y
    else:
        n_cb = rng.standard_normal(shape, np.float32) * (sd / 224)
        n_cr = rng.standard_normal(shape, np.float32) * (sd / 224)
        noise = np.stack([n_y + 1.403 * n_cr, n_y - 0.714 * n_cr - 0.344 * n_cb, n_y + 1.773 * n_cb], axis=-1)
    return np.clip(frames + noise, 0, 255).astype(np.uint8)


def _block_wise(frames: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """DeeperForensics block_wise as PR #1 has it: 3x3 grey blocks at randint(0, side - 1 - 3) per frame."""
    t, h, w = frames.shape[:3]
    size = 3
    count *= max(1, min(h, w) // 96)  # PR #1: min(H, W) // 96 * param; max(1, ...) keeps small crops occluded
    out = frames.copy()
    corners = rng.integers(0, [max(h - size, 1), max(w - size, 1)], size=(t, count, 2))
    ys = corners[..., 0, None, None] + np.arange(size)[:, None]
    xs = corners[..., 1, None, None] + np.arange(size)[None, :]
    out[np.arange(t)[:, None, None, None], np.minimum(ys, h - 1), np.minimum(xs, w - 1)] = GREY
    return out


def _rectangle(frames: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """One grey rectangle covering `fraction` of the frame area (aspect 1:2 to 2:1), at the same place in
    every frame, like a hand or a microphone in front of the mouth."""
    h, w = frames.shape[1:3]
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    bh = min(h, max(1, round(math.sqrt(fraction * h * w * aspect))))
    bw = min(w, max(1, round(fraction * h * w / bh)))
    y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    out = frames.copy()
    out[:, y : y + bh, x : x + bw] = GREY
    return out


def _jpeg(frames: np.ndarray, quality: int) -> np.ndarray:
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, "JPEG", quality=int(quality))
        out[i] = np.asarray(Image.open(buffer))
    return out


def occlude(frames: np.ndarray, kind: str, level: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """`frames` (uint8, (T, H, W, 3) RGB or (T, H, W) grey) corrupted by `kind` at `level` (0 = unchanged).

    kind: a key of OCCLUSIONS or a PR #1 code (REFERENCE_OCCLUSIONS). rng: randomness for the noise and
    block kinds (None: seed 0). Returns a new array of the same shape and dtype.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or not (frames.ndim == 3 or (frames.ndim == 4 and frames.shape[-1] == 3)):
        raise ValueError(f"frames must be uint8 (T, H, W, 3) or (T, H, W), not {frames.dtype} {frames.shape}")
    kind = occlusion_kind(kind)
    if level == 0:
        return frames.copy()
    p = occlusion_parameter(kind, level)
    rng = rng if rng is not None else np.random.default_rng(0)
    if kind == "gaussian_blur":
        return _to_uint8(_blur(frames.astype(np.float32), int(p)))
    if kind == "gaussian_noise":
        return _gaussian_noise(frames, p, rng)
    if kind == "block_wise":
        return _block_wise(frames, int(p), rng)
    if kind == "pixelate":
        h, w = frames.shape[1:3]
        small = _to_uint8(_resize(frames.astype(np.float32), max(h // int(p), 1), max(w // int(p), 1)))
        return _to_uint8(_resize(small.astype(np.float32), h, w))
    if kind == "color_saturation":
        if frames.ndim == 3:
            return frames.copy()
        f = frames.astype(np.float32)
        y = f @ np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as cv2's YCrCb
        return np.clip(y[..., None] + p * (f - y[..., None]), 0, 255).astype(np.uint8)
    if kind == "color_contrast":
        return (frames.astype(np.float32) * p).astype(np.uint8)
    if kind == "jpeg":
        return _jpeg(frames, int(p))
    return _rectangle(frames, p, rng)


@dataclass(frozen=True)
class VideoOcclusion:
    """A video corruption reproducible per clip: ``apply(frames, clip_id)``."""

    kind: str
    level: int
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", occlusion_kind(self.kind))
        if self.level != 0:
            occlusion_parameter(self.kind, self.level)

    def apply(self, frames: np.ndarray, clip_id: str) -> np.ndarray:
        return occlude(frames, self.kind, self.level, clip_rng(self.seed, clip_id))
