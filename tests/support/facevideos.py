"""Test videos for the face and mouth stages, made with ffmpeg from a real face clip (or from scratch)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np

from avsr_cli.frontends.media import SAMPLE_RATE, SAMPLES_PER_FRAME, find_ffmpeg
from tests.support.tiny import ffmpeg


def dlib_backend():
    """The dlib face backend, or a pytest skip saying what to install."""
    import pytest

    if (
        importlib.util.find_spec("dlib") is None
        or importlib.util.find_spec("face_recognition_models") is None
    ):
        pytest.skip(
            "dlib backend absent: pip install dlib-bin; pip install --no-deps face-recognition-models"
        )
    from avsr_cli.frontends.face_backends import make_backend

    return make_backend("dlib")


def black_gap(src: Path, dst: Path, first: int = 50, count: int = 5) -> Path:
    """`src` with frames first..first+count-1 painted black."""
    box = f"drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(n,{first},{first + count - 1})'"
    ffmpeg("-i", src, "-vf", box, "-c:a", "copy", dst)
    return dst


def panning(src: Path, dst: Path, width: int = 480, height: int = 270) -> Path:
    """`src` moving across a larger black frame (up to 120 px left and right, 20 px up and down)."""
    graph = (
        f"color=black:s={width}x{height}:r=25[bg];"
        f"[bg][0:v]overlay=x='(W-w)/2+120*sin(t*1.5)':y='(H-h)/2+20*cos(t)':shortest=1"
    )
    ffmpeg("-i", src, "-filter_complex", graph, "-an", dst)
    return dst


def two_faces(src: Path, dst: Path, seconds: float = 2.0) -> Path:
    """`src` and its mirror image side by side: two equally good faces."""
    graph = "[0:v]split[a][b];[b]hflip[c];[a][c]hstack"
    ffmpeg("-i", src, "-t", seconds, "-filter_complex", graph, "-an", dst)
    return dst


def rotated(src: Path, dst: Path, seconds: float = 1.0, metadata: bool = False) -> Path:
    """Pixels turned 90 degrees clockwise; with `metadata`, a display matrix that turns them upright again
    (as phones store portrait video)."""
    ffmpeg("-i", src, "-t", seconds, "-vf", "transpose=1", "-an", dst.with_suffix(".tmp.mp4"))
    tag = ["-metadata:s:v:0", "rotate=90"] if metadata else []
    ffmpeg("-i", dst.with_suffix(".tmp.mp4"), "-c", "copy", *tag, dst)
    dst.with_suffix(".tmp.mp4").unlink()
    return dst


def one_frame(src: Path, dst: Path) -> Path:
    ffmpeg("-i", src, "-frames:v", "1", "-an", dst)
    return dst


def variable_rate(src: Path, dst: Path) -> Path:
    """Variable frame rate: all of the first 40 frames, then every third one, timestamps kept."""
    ffmpeg("-i", src, "-vf", r"select='lt(n\,40)+not(mod(n\,3))'", "-fps_mode", "vfr", "-an", dst)
    return dst


def frame_4k(src: Path, dst: Path) -> Path:
    """One 3840x2160 frame: the face upscaled to 2160x2160 and padded left and right."""
    ffmpeg("-i", src, "-frames:v", "1", "-vf", "scale=2160:2160,pad=3840:2160:840:0", "-an", dst)
    return dst


def noise(dst: Path, seconds: float = 1.0) -> Path:
    """Grey noise, no face anywhere."""
    ffmpeg("-f", "lavfi", "-i", f"color=gray:s=160x120:r=25:d={seconds}", "-vf", "noise=alls=80:allf=t", dst)
    return dst


def astronaut() -> np.ndarray | None:
    """scikit-image's bundled astronaut photograph (a real face, 512x512 RGB), read without importing it."""
    from PIL import Image

    spec = importlib.util.find_spec("skimage")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "astronaut.png" if spec else None
    return np.asarray(Image.open(path).convert("RGB")) if path and path.exists() else None


def talking_still(
    image: np.ndarray, mouth: np.ndarray, audio: np.ndarray, dst: Path, half_width: int = 20
) -> dict:
    """A still face whose synthetic mouth (a dark ellipse at `mouth`, (x, y)) opens with the loudness of
    `audio` (16 kHz) while the whole picture sways by a few pixels; muxed with the audio into `dst`.

    Returns the ground truth per 25 fps frame: "centre" (T, 2) mouth centre, "opening" (T,) ellipse height.
    """
    import cv2

    n = len(audio) // SAMPLES_PER_FRAME
    rms = np.sqrt((audio[: n * SAMPLES_PER_FRAME].reshape(n, -1) ** 2).mean(axis=1))
    opening = 2 + 26 * rms / rms.max()
    t = np.arange(n)
    shift = np.stack([8 * np.sin(2 * np.pi * t / 60), 5 * np.sin(2 * np.pi * t / 45)], axis=1)
    h, w = image.shape[:2]
    wav, raw = dst.with_suffix(".wav"), dst.with_suffix(".rgb")
    import soundfile as sf

    sf.write(wav, audio, SAMPLE_RATE, subtype="PCM_16")
    with open(raw, "wb") as f:
        for i in range(n):
            frame = image.copy()
            centre = (int(round(mouth[0])), int(round(mouth[1])))
            cv2.ellipse(frame, centre, (half_width, int(round(opening[i] / 2))), 0, 0, 360, (25, 10, 10), -1)
            m = np.float32([[1, 0, shift[i, 0]], [0, 1, shift[i, 1]]])
            f.write(cv2.warpAffine(frame, m, (w, h), borderMode=cv2.BORDER_REPLICATE).tobytes())
    args = [find_ffmpeg(), "-nostdin", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    args += ["-s", f"{w}x{h}", "-r", "25", "-i", str(raw), "-i", str(wav), "-c:v", "libx264", "-crf", "18"]
    args += ["-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(dst)]
    subprocess.run(args, check=True)
    raw.unlink()
    wav.unlink()
    return {"centre": mouth + shift, "opening": opening}
