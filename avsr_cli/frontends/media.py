"""Media stage: any container ffmpeg reads (wav, flac, mp3, m4a, mp4, mkv, webm...) -> numpy arrays.

Decoding runs the ffmpeg binary (the one on PATH, else imageio-ffmpeg's), as openai/whisper's audio.py does.
Paths reach ffmpeg as absolute ``file:`` URLs, so names such as ``-clip.wav`` or ``a:b.mp4`` are safe.
WAV and FLAC files that need no conversion are read in-process by libsndfile (soundfile) instead: the same
samples, without two subprocesses per file.
Every failure is a one-line `MediaError` naming the file and the problem.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import MediaError
from ..runtime import cpu_threads
from ..storage import display_name

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
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def find_ffprobe() -> str | None:
    """Path of ffprobe on PATH, or None (imageio-ffmpeg ships none; `probe` then parses ``ffmpeg -i``)."""
    return shutil.which("ffprobe")


def _url(path: str | os.PathLike) -> str:
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
    for buf in _pipe_reads(path, url, "audio", args, 4 * block_size):
        yield np.frombuffer(buf, np.float32, len(buf) // 4)


def _pipe_reads(
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


# Sample formats whose float32 values libsndfile and ffmpeg compute alike: 16-bit PCM scaled by 1/32768,
# float32 copied (tests/test_media.py compares the two bit for bit).
_SAME_AS_FFMPEG = {"PCM_16", "FLOAT"}


def _sound_file_info(path: str | os.PathLike):
    """soundfile's header info when `path` is a WAV or FLAC file libsndfile reads, else None."""
    import soundfile

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
    url = _url(path)
    if _in_process(path, sample_rate):
        import soundfile

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
    url = _url(path)
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
    import soundfile

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


def load_video(
    path: str | os.PathLike,
    fps: float = VIDEO_FPS,
    size: tuple[int, int] | None = None,
    max_frames: int | None = None,
) -> np.ndarray:
    """Decode the first video stream of `path` as uint8 RGB frames (T, H, W, 3) at a constant `fps`.

    size: (height, width) to resize to; None keeps the displayed size. max_frames: stop after that many.
    """
    info = probe(path)
    height, width = size or (info.height or 0, info.width or 0)
    frames = list(itertools.islice(iter_video(path, fps, size, info), max_frames))
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)


def iter_video(
    path: str | os.PathLike,
    fps: float = VIDEO_FPS,
    size: tuple[int, int] | None = None,
    info: MediaInfo | None = None,
) -> Iterator[np.ndarray]:
    """Stream the first video stream of `path` as read-only uint8 RGB frames (H, W, 3) at a constant `fps`.

    As `load_video`, one frame at a time (long or large videos never sit in memory whole); size: (height,
    width) to resize to, None keeps the displayed size. Frame-rate conversion (ffmpeg's fps filter) turns
    variable-frame-rate input into constant `fps`. info: `probe(path)`, when the caller has it (an ffprobe
    run costs 70 ms).
    """
    info = probe(path) if info is None else info
    if not info.has_video:
        raise MediaError(f"{path}: has no video stream")
    height, width = size or (info.height, info.width)
    url = _url(path)
    frames = _iter_video_pyav(path, url, fps, (height, width)) if video_decoder() == "pyav" else None
    yield from frames if frames is not None else _iter_video_ffmpeg(path, url, fps, (height, width))


def video_decoder() -> str:
    """How `iter_video` decodes: "pyav" (in-process, when PyAV is installed) or "ffmpeg" (the binary, through
    a pipe); AVSR_VIDEO_DECODER chooses. The frames are the same (tests/test_media.py; a stream cut by an edit
    list can end one frame apart); in-process decoding skips a subprocess and a 2.7 MB pipe copy per 720p
    frame (mouth crops at 720p: 1.1-1.3x)."""
    from ..storage import find_package

    chosen = os.environ.get("AVSR_VIDEO_DECODER", "").strip().lower()
    if chosen not in ("", "pyav", "ffmpeg"):
        raise MediaError(f"AVSR_VIDEO_DECODER={chosen!r}: choose pyav or ffmpeg")
    if chosen == "ffmpeg" or find_package("av") is None:
        return "ffmpeg"
    return "pyav"


# The display matrix of an upright video (AV_PKT_DATA_DISPLAYMATRIX: 16.16 fixed point, 2.30 in the corner).
_UPRIGHT = np.array([1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30], "<i4").tobytes()


def _iter_video_pyav(
    path: str | os.PathLike, url: str, fps: float, size: tuple[int, int]
) -> Iterator[np.ndarray] | None:
    """`iter_video` in-process through PyAV, with the filters the ffmpeg command runs (fps, then a bicubic
    scale into rgb24, on timestamps counted from the file's start as the command counts them); None when the
    video carries a rotation or flip (the command's autorotate filters are not rebuilt here)."""
    import av

    height, width = size
    try:
        container = av.open(url)  # the file: URL (`_url`): names such as a:b.mp4 are not protocols
    except av.FFmpegError as e:
        raise _av_error(path, e) from None
    try:
        if not container.streams.video:
            raise MediaError(f"{display_name(path)}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame and slice threads, as the command's -threads
        stream.codec_context.thread_count = cpu_threads()
        decoded = _decoded_frames(container, stream, path)
        first = next(decoded, None)
        if first is None:
            container.close()
            return iter(())
        if any(sd.type.name == "DISPLAYMATRIX" and bytes(sd) != _UPRIGHT for sd in first.side_data):
            container.close()
            return None
    except BaseException:
        container.close()
        raise
    return _filtered(container, stream, first, decoded, fps, width, height, path)


def _decoded_frames(container, stream, path) -> Iterator:
    """Decoded frames, timestamps shifted as ffmpeg's command shifts them (minus the file's start time);
    packets the decoder rejects are skipped, as the command skips them."""
    import av

    offset = _start_offset(container, stream)
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                continue
            for frame in frames:
                if frame.pts is not None:
                    frame.pts -= offset
                yield frame
    except av.FFmpegError as e:
        raise _av_error(path, e) from None


def _filtered(container, stream, first, decoded, fps, width, height, path) -> Iterator[np.ndarray]:
    """The frames through fps -> scale -> rgb24, as many as ffmpeg's command writes: its constant-rate output
    counts from the file's start (a video that starts late opens with copies of its first frame) and ends as
    `_output_frames` says."""
    import av

    with container:
        graph = av.filter.Graph()
        graph.threads = cpu_threads()
        chain = [
            graph.add_buffer(template=stream),
            graph.add("fps", str(fps)),
            # flags=bicubic: what ffmpeg's command gives the filters it builds (its default sws_flags)
            graph.add("scale", f"{width}:{height}:flags=bicubic"),
            graph.add("format", "rgb24"),
            graph.add("buffersink"),
        ]
        for a, b in zip(chain, chain[1:], strict=False):
            a.link_to(b)
        graph.configure()

        def drain() -> Iterator[np.ndarray]:
            while True:
                try:
                    out = graph.pull()
                except (av.BlockingIOError, av.EOFError):
                    return
                array = out.to_ndarray()
                array.flags.writeable = False  # as the pipe's frames; a frame may be yielded twice
                yield array

        count, last, end = 0, None, None
        lead = _frames_before(first.pts, stream.time_base, fps)
        step = _frame_step(stream)
        try:
            for frame in itertools.chain([first], decoded):
                graph.push(frame)
                if frame.pts is not None:
                    end = frame.pts + step
                for last in drain():
                    for _ in range(1 + lead if count == 0 else 1):
                        count += 1
                        yield last
            graph.push(None)  # end of stream: the fps filter emits what it still holds
            total = _output_frames(container, stream, end, fps)
            for last in drain():
                if total is not None and count >= total:
                    break
                count += 1
                yield last
        except av.FFmpegError as e:
            raise _av_error(path, e) from None
        for _ in range(total - count if total is not None and last is not None else 0):
            yield last


def _frame_step(stream) -> int:
    """One frame at the codec's frame rate, in the stream's time base (0 when no rate is known)."""
    rate = stream.codec_context.framerate or stream.guessed_rate or stream.base_rate
    return round(1 / (Fraction(rate) * Fraction(stream.time_base))) if rate else 0


def _output_frames(container, stream, end: int | None, fps: float) -> int | None:
    """How many frames ffmpeg's command writes: up to the end of the stream, the later of its last frame plus
    one frame at the codec's rate and the end the container gives the stream, counted from the file's start
    (measured against ffmpeg 5.1's command on variable-rate, late-starting and edited streams)."""
    if stream.duration is not None and stream.start_time is not None:
        listed = stream.start_time + stream.duration - _start_offset(container, stream)
        end = listed if end is None else max(end, listed)
    return None if end is None else _frames_before(end, stream.time_base, fps)


def _frames_before(pts: int | None, time_base, fps: float) -> int:
    """Output frames of a constant `fps` before time `pts` (ffmpeg's fps filter rounds to the nearest frame,
    halves away from zero)."""
    if pts is None or pts <= 0:
        return 0
    t = Fraction(pts) * Fraction(time_base) * Fraction(fps).limit_denominator(1001)
    return int(t.numerator * 2 + t.denominator) // (2 * t.denominator)


def _start_offset(container, stream) -> int:
    """Where ffmpeg's command starts counting the stream's timestamps, in the stream's time base: the file's
    start time; for formats with timestamp discontinuities (MPEG-TS/PS), the start of the streams it decodes
    when that is later (fftools/ffmpeg.c, "Correcting starttime based on the enabled streams")."""
    start = Fraction(container.start_time, 1_000_000) if container.start_time is not None else Fraction(0)
    if container.format.flags & _AVFMT_TS_DISCONT and stream.start_time is not None:
        start = max(start, stream.start_time * Fraction(stream.time_base))
    return round(start / Fraction(stream.time_base))


_AVFMT_TS_DISCONT = 0x0200  # libavformat/avformat.h


def _av_error(path: str | os.PathLike, error) -> MediaError:
    """MediaError from a PyAV error, worded as `_error` words the command's."""
    detail = getattr(error, "strerror", None) or str(error)
    return MediaError(f"{display_name(path)}: cannot read media file ({detail})")


def _iter_video_ffmpeg(
    path: str | os.PathLike, url: str, fps: float, size: tuple[int, int]
) -> Iterator[np.ndarray]:
    height, width = size
    args = ["-nostdin", "-hide_banner", "-loglevel", "error", "-threads", str(cpu_threads())]
    args += ["-i", url, "-map", "0:v:0"]
    args += ["-vf", f"fps={fps},scale={width}:{height}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    for buf in _pipe_reads(path, url, "video", args, height * width * 3, whole=True):
        yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)


def _widen_pipe(pipe, frame_bytes: int) -> None:
    """Let ffmpeg write a whole frame ahead (Linux pipes hold 64 KiB by default; up to pipe-max-size, 1 MiB
    unless raised): it decodes the next frame while we work on this one (crops of a 224x224 video: 1.1x)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return
    size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if size is not None:
        try:
            fcntl.fcntl(pipe.fileno(), size, min(frame_bytes, 1 << 20))
        except OSError:  # above this user's pipe-max-size: keep the default
            pass


def probe(path: str | os.PathLike) -> MediaInfo:
    """Read the streams of `path`: a WAV or FLAC header in-process, anything else with ffprobe, or by parsing
    ``ffmpeg -i`` when ffprobe is absent."""
    url = _url(path)
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
