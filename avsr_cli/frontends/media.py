"""Media stage: what a media file holds (`probe`) and its audio as numpy arrays, from any container ffmpeg
reads (wav, flac, mp3, m4a, mp4, mkv, webm...); its video is read by video.py, through the same ffmpeg pipe
reader (`pipe_reads`).

Decoding runs the ffmpeg binary (the one on PATH, else imageio-ffmpeg's), as openai/whisper's audio.py does.
Paths reach ffmpeg as absolute ``file:`` URLs, so names such as ``-clip.wav`` or ``a:b.mp4`` are safe.
WAV and FLAC files that need no conversion are read in-process by libsndfile (soundfile) instead: the same
samples, without two subprocesses per file.
Every failure is a one-line `MediaError` naming the file and the problem. `prefetch` reads a file ahead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

try:
    import fcntl
except ImportError:  # not a POSIX system: pipes keep their default size
    fcntl = None

import numpy as np
import soundfile

from ..errors import MediaError
from ..runtime import cpu_threads
from ..storage import atomic_path, display_name
from .prefetch import Prefetched, prefetched_for, start_prefetch

# Llama-AVSR / auto_avsr preprocessing: 16 kHz mono audio, 25 fps video, i.e. 640 audio samples per frame.
SAMPLE_RATE = 16000
VIDEO_FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS

_CHANNEL_LAYOUTS = {
    "mono": 1,
    "stereo": 2,
    "2.1": 3,
    "3.0": 3,
    "quad": 4,
    "4.0": 4,
    "4.1": 5,
    "5.0": 5,
    "5.1": 6,
    "6.0": 6,
    "6.1": 7,
    "7.0": 7,
    "7.1": 8,
}


@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds (first audio and first video stream; cover art is not video).

    width/height are as displayed (after rotation). n_frames comes from the container when it says,
    else it is estimated as duration * fps.
    """

    path: Path
    duration: float
    has_audio: bool
    has_video: bool
    audio_sample_rate: int | None
    audio_channels: int | None
    video_fps: float | None
    width: int | None
    height: int | None
    n_frames: int | None


def check_input(path: str | os.PathLike) -> os.stat_result:
    """Raise MediaError unless `path` is a regular file this process may read. Checked with stat first, so a
    FIFO, socket or device is refused without being opened (opening a FIFO blocks until a writer comes)."""
    name = display_name(path)
    st = _stat(path)
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
        raise MediaError(f"{name}: is {kind}, not a media file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise MediaError(f"{name}: cannot read ({exc.strerror or exc})") from None
    return st


def _stat(path: str | os.PathLike) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise MediaError(f"{display_name(path)}: no such file") from None
    except OSError as exc:
        raise MediaError(f"{display_name(path)}: cannot read ({exc.strerror or exc})") from None


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def find_ffmpeg() -> str | None:
    """Path of the ffmpeg binary: on PATH, else the one bundled with imageio-ffmpeg; None if neither."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg  # lazy: only when ffmpeg is not on PATH (and it may be absent)

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def find_ffprobe() -> str | None:
    """Path of ffprobe on PATH, or None (imageio-ffmpeg ships none; `probe` then parses ``ffmpeg -i``)."""
    return shutil.which("ffprobe")


def input_url(path: str | os.PathLike) -> str:
    """Check that `path` is a readable non-empty regular file (`check_input`: every decode and probe goes
    through here, so no command can hang on a FIFO) and return it as an ffmpeg-safe ``file:`` URL."""
    if check_input(path).st_size == 0:
        raise MediaError(f"{display_name(path)}: empty file (0 bytes)")
    return "file:" + os.path.abspath(path)


def _exec(exe: str | None, args: list[str], path: str | os.PathLike) -> subprocess.CompletedProcess[bytes]:
    if exe is None:
        hint = "apt install ffmpeg, or pip install imageio-ffmpeg"
        raise MediaError(f"{path}: cannot decode, ffmpeg not found ({hint})")
    try:
        return subprocess.run([exe, *args], check=False, capture_output=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise MediaError(f"{path}: cannot run {exe} ({e.strerror})") from None


def _error(path: str | os.PathLike, url: str, stderr: bytes, kind: str | None = None) -> MediaError:
    """MediaError from ffmpeg's stderr: a missing stream, else its last line as detail."""
    text = stderr.decode(errors="replace")
    if kind and "matches no streams" in text:
        return MediaError(f"{path}: has no {kind} stream")
    lines = [
        re.sub(r"^Error opening input files?: ", "", line.strip().replace(url + ": ", ""))
        for line in text.splitlines()
        if line.strip()
    ]
    return MediaError(f"{path}: cannot read media file" + (f" ({lines[-1]})" if lines else ""))


def _decode_args(url: str, kind: str, output_args: list[str]) -> list[str]:
    """ffmpeg's arguments to decode the first `kind` ("audio"/"video") stream of `url` to stdout."""
    args = ["-nostdin", "-hide_banner", "-loglevel", "error", "-threads", str(cpu_threads())]
    return [*args, "-i", url, "-map", f"0:{kind[0]}:0", *output_args, "-"]


def _decode(path: str | os.PathLike, url: str, kind: str, output_args: list[str]) -> bytes:
    """Raw output of ffmpeg decoding the first `kind` ("audio"/"video") stream of `url` with `output_args`."""
    proc = _exec(find_ffmpeg(), _decode_args(url, kind, output_args), path)
    if proc.returncode != 0:
        raise _error(path, url, proc.stderr, kind)
    return proc.stdout


def _audio_args(sample_rate: int) -> list[str]:
    return ["-f", "f32le", "-ac", "1", "-rematrix_maxval", "1", "-ar", str(sample_rate)]


def _decode_audio(path: str | os.PathLike, url: str, sample_rate: int) -> np.ndarray:
    """ffmpeg's float32 mono samples of the first audio stream at `sample_rate` (no checks, no clipping)."""
    return np.frombuffer(_decode(path, url, "audio", _audio_args(sample_rate)), np.float32)


def _stream_audio(
    path: str | os.PathLike, url: str, sample_rate: int, block_size: int
) -> Iterator[np.ndarray]:
    """`_decode_audio` through a pipe, `block_size` samples at a time (the last block shorter)."""
    args = _decode_args(url, "audio", _audio_args(sample_rate))
    for buf in pipe_reads(path, url, "audio", args, 4 * block_size):
        yield np.frombuffer(buf, np.float32, len(buf) // 4)


def pipe_reads(
    path: str | os.PathLike, url: str, kind: str, args: list[str], nbytes: int, whole: bool = False
) -> Iterator[bytes]:
    """ffmpeg `args` run with its output through a pipe, read `nbytes` at a time (`whole`: full reads only,
    a shorter tail is dropped); ffmpeg is killed when the consumer stops early, and its failure is raised as
    `path`'s media error once the output has been read."""
    exe = find_ffmpeg()
    if exe is None:
        _exec(exe, [], path)  # raises the "ffmpeg not found" error
    with tempfile.TemporaryFile() as err:
        try:
            pipe = subprocess.PIPE
            proc = subprocess.Popen([exe, *args], stdin=subprocess.DEVNULL, stdout=pipe, stderr=err)
        except OSError as e:
            raise MediaError(f"{path}: cannot run {exe} ({e.strerror})") from None
        _widen_pipe(proc.stdout, nbytes)
        try:
            while buf := proc.stdout.read(nbytes):
                if whole and len(buf) < nbytes:
                    break
                yield buf
            proc.wait()
        finally:
            if proc.poll() is None:  # the consumer stopped early
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if proc.returncode != 0:
            err.seek(0)
            raise _error(path, url, err.read(), kind)


def _widen_pipe(pipe, frame_bytes: int) -> None:
    """Let ffmpeg write a whole frame ahead (Linux pipes hold 64 KiB by default; up to pipe-max-size, 1 MiB
    unless raised): it decodes the next frame while we work on this one (crops of a 224x224 video: 1.1x)."""
    size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if size is not None:
        try:
            fcntl.fcntl(pipe.fileno(), size, min(frame_bytes, 1 << 20))
        except OSError:  # above this user's pipe-max-size: keep the default
            pass


# Sample formats whose float32 values libsndfile and ffmpeg compute alike: 16-bit PCM scaled by 1/32768,
# float32 copied (tests/test_media.py compares the two bit for bit).
_SAME_AS_FFMPEG = {"PCM_16", "FLOAT"}


def _sound_file_info(path: str | os.PathLike):
    """soundfile's header info when `path` is a WAV or FLAC file libsndfile reads, else None."""
    try:
        info = soundfile.info(os.fsencode(path))  # bytes: any file name, UTF-8 or not
    except (RuntimeError, OSError, TypeError, ValueError):  # soundfile.LibsndfileError is a RuntimeError
        return None
    readable = info.format in ("WAV", "WAVEX", "FLAC") and info.channels > 0 and info.samplerate > 0
    return info if readable else None


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of `path` as float32 mono in [-1, 1] at `sample_rate`.

    Channels are averaged (``rematrix_maxval=1`` makes ffmpeg's stereo downmix the plain mean, as auto_avsr's
    ``mean(dim=0)``); a zero-length stream gives an empty array.
    """
    url = input_url(path)
    if _in_process(path, sample_rate):
        audio = soundfile.read(os.fsencode(path), dtype="float32", always_2d=False)[0]
    else:
        audio = _decode_audio(path, url, sample_rate)
    bad = int(np.count_nonzero(~np.isfinite(audio)))
    if bad:  # float WAV/FLAC can carry NaN or infinity; clipping would hide them as silence or full scale
        raise _invalid_samples(path, bad, audio.size)
    return np.clip(audio, -1.0, 1.0)


AUDIO_BLOCK = 1 << 16  # samples per block of `iter_audio`: 4.1 s at 16 kHz, 256 KiB


def iter_audio(
    path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, block_size: int = AUDIO_BLOCK
) -> Iterator[np.ndarray]:
    """`load_audio` block by block: the same samples, `block_size` at a time (the last block shorter), read
    through the same decoder, so that a recording of any length never sits in memory whole.

    NaN or infinite samples raise `load_audio`'s error once the stream has been read to its end (it counts
    them); the block that holds the first of them and all after it are not yielded.
    """
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    if sample_rate == SAMPLE_RATE and block_size == AUDIO_BLOCK:
        job = prefetched_for(path)
        blocks = job.take_blocks() if job is not None else None
        if blocks is not None:
            yield from blocks
            return
    yield from _iter_audio(path, sample_rate, block_size)


def _iter_audio(path: str | os.PathLike, sample_rate: int, block_size: int) -> Iterator[np.ndarray]:
    url = input_url(path)
    if _in_process(path, sample_rate):
        blocks = _read_blocks(path, block_size)
    else:
        blocks = _stream_audio(path, url, sample_rate, block_size)
    bad = total = 0
    for block in blocks:
        total += block.size
        bad += int(np.count_nonzero(~np.isfinite(block)))
        if not bad:
            yield np.clip(block, -1.0, 1.0)
    if bad:
        raise _invalid_samples(path, bad, total)


def _read_blocks(path: str | os.PathLike, block_size: int) -> Iterator[np.ndarray]:
    with soundfile.SoundFile(os.fsencode(path)) as sound:
        while len(block := sound.read(block_size, dtype="float32", always_2d=False)):
            yield block


def _in_process(path: str | os.PathLike, sample_rate: int) -> bool:
    """Whether libsndfile reads `path` as mono `sample_rate` float32 with ffmpeg's samples."""
    info = _sound_file_info(path)
    return (
        bool(info)
        and info.channels == 1
        and info.samplerate == sample_rate
        and info.subtype in _SAME_AS_FFMPEG
    )


def _invalid_samples(path: str | os.PathLike, bad: int, total: int) -> MediaError:
    return MediaError(
        f"{display_name(path)}: audio holds invalid samples ({bad} of {total} are NaN or infinite)"
    )


def aligned_audio(path: str | os.PathLike, n_frames: int) -> np.ndarray | None:
    """16 kHz mono audio cut or zero-padded to 640 samples per video frame (Llama-AVSR av_dataset.py
    cut_or_pad to len(video) * 640); None when the file has no audio stream."""
    if not probe(path).has_audio:
        return None
    audio = load_audio(path)[: n_frames * SAMPLES_PER_FRAME]
    return np.pad(audio, (0, n_frames * SAMPLES_PER_FRAME - len(audio)))


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = 16000) -> Path:
    """Write mono float audio as 16-bit PCM WAV, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        soundfile.write(tmp, audio, sample_rate, subtype="PCM_16", format="WAV")
    return path


def probe(path: str | os.PathLike) -> MediaInfo:
    """Read the streams of `path`: a WAV or FLAC header in-process, anything else with ffprobe, or by parsing
    ``ffmpeg -i`` when ffprobe is absent."""
    job = prefetched_for(path)
    if job is not None and job.info is not None:
        return replace(job.info, path=Path(path))
    return _probe(path)


def _probe(path: str | os.PathLike) -> MediaInfo:
    url = input_url(path)
    sound = _sound_file_info(path)
    ffprobe = None if sound is not None else find_ffprobe()
    if sound is not None:
        info = MediaInfo(
            path=Path(path),
            duration=sound.frames / sound.samplerate,
            has_audio=True,
            has_video=False,
            audio_sample_rate=sound.samplerate,
            audio_channels=sound.channels,
            video_fps=None,
            width=None,
            height=None,
            n_frames=None,
        )
    elif ffprobe is None:
        info = _probe_ffmpeg(path, url)
    else:
        args = ["-v", "error", "-print_format", "json", "-show_format", "-show_streams", url]
        proc = _exec(ffprobe, args, path)
        if proc.returncode != 0:
            raise _error(path, url, proc.stderr)
        info = _probe_json(path, json.loads(proc.stdout or b"{}"))
    if not (info.has_audio or info.has_video):
        raise MediaError(f"{path}: has no audio or video stream")
    return info


def _number(value: object) -> float | None:
    """Float of an ffprobe field ("6.2", "25/1"); None when absent, zero or not a number."""
    try:
        num, _, den = str(value).partition("/")
        x = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return x if x > 0 else None


def _frames(n_frames: float | None, duration: float | None, fps: float | None) -> int | None:
    if n_frames:
        return int(n_frames)
    return round(duration * fps) if duration and fps else None


def _probe_json(path: str | os.PathLike, data: dict) -> MediaInfo:
    streams = [s for s in data.get("streams", []) if not s.get("disposition", {}).get("attached_pic")]
    audio = next((s for s in streams if s.get("codec_type") == "audio"), {})
    video = next((s for s in streams if s.get("codec_type") == "video"), {})
    duration = _number(data.get("format", {}).get("duration")) or max(
        (_number(s.get("duration")) or 0.0 for s in streams), default=0.0
    )
    fps = _number(video.get("avg_frame_rate")) or _number(video.get("r_frame_rate"))
    rotation = next(
        (sd.get("rotation", 0) for sd in video.get("side_data_list", []) if "rotation" in sd),
        video.get("tags", {}).get("rotate", 0),
    )
    width, height = video.get("width"), video.get("height")
    if abs(int(float(rotation))) % 180 == 90:
        width, height = height, width
    return MediaInfo(
        path=Path(path),
        duration=duration,
        has_audio=bool(audio),
        has_video=bool(video),
        audio_sample_rate=int(audio["sample_rate"]) if audio.get("sample_rate") else None,
        audio_channels=audio.get("channels"),
        video_fps=fps,
        width=width,
        height=height,
        n_frames=_frames(_number(video.get("nb_frames")), _number(video.get("duration")) or duration, fps)
        if video
        else None,
    )


def _probe_ffmpeg(path: str | os.PathLike, url: str) -> MediaInfo:
    """Parse the stream dump of ``ffmpeg -i`` (which exits 1 because no output is given)."""
    proc = _exec(find_ffmpeg(), ["-nostdin", "-hide_banner", "-i", url], path)
    text = proc.stderr.decode(errors="replace")
    if "Input #0" not in text:
        raise _error(path, url, proc.stderr)
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", text)
    duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else 0.0
    streams = re.findall(r"Stream #0:\d+.*?: (Audio|Video): (.*)", text)
    streams = [(kind, desc) for kind, desc in streams if "attached pic" not in desc]
    audio = next((desc for kind, desc in streams if kind == "Audio"), None)
    video = next((desc for kind, desc in streams if kind == "Video"), None)
    rate = channels = fps = width = height = None
    if audio:
        m = re.search(r"(\d+) Hz, ([^,]+)", audio)
        if m:
            rate, layout = int(m[1]), m[2].split("(")[0].strip()
            n = re.match(r"(\d+) channels", layout)
            channels = int(n[1]) if n else _CHANNEL_LAYOUTS.get(layout)
    if video:
        m = re.search(r", (\d+)x(\d+)", video)
        width, height = (int(m[1]), int(m[2])) if m else (None, None)
        m = re.search(r"([\d.]+)(k?) (?:fps|tbr)", video)
        fps = float(m[1]) * (1000 if m[2] else 1) if m else None
        m = re.search(r"rotation of (-?[\d.]+) degrees", text, re.IGNORECASE)
        if m and abs(round(float(m[1]))) % 180 == 90:
            width, height = height, width
    return MediaInfo(
        path=Path(path),
        duration=duration,
        has_audio=audio is not None,
        has_video=video is not None,
        audio_sample_rate=rate,
        audio_channels=channels,
        video_fps=fps,
        width=width,
        height=height,
        n_frames=_frames(None, duration, fps) if video else None,
    )


PREFETCH_SECONDS = 30.0  # the most audio a prefetch keeps; a longer file is decoded again when it is used


def prefetch(path: str | os.PathLike, audio: bool = True) -> None:
    """Probe `path` and, with `audio`, decode up to PREFETCH_SECONDS of its audio ahead, on the helper
    thread (prefetch.py), beside what the caller does next (the CLI: importing torch and loading the model,
    while ffprobe and ffmpeg run on another core). `probe` and `iter_audio` of the same unchanged file then
    take the results; whatever the prefetch could not do (an error, a longer file) they do as usual."""
    start_prefetch(path, lambda job: _run_prefetch(job, path, audio))


def _run_prefetch(job: Prefetched, path: str | os.PathLike, audio: bool) -> None:
    job.info = _probe(path)
    if audio and job.info.has_audio:
        blocks, samples = [], 0
        with closing(_iter_audio(path, SAMPLE_RATE, AUDIO_BLOCK)) as stream:  # closed early: ffmpeg stops
            for block in stream:
                samples += len(block)
                if samples > PREFETCH_SECONDS * SAMPLE_RATE:
                    return
                blocks.append(block)
        job.blocks = blocks
