"""Video stage: the first video stream of any container ffmpeg reads -> uint8 RGB frames at a constant rate;
frames -> H.264 mp4 files.

Frames are decoded in-process by PyAV when it is installed, else by the ffmpeg binary through a pipe
(`video_decoder`); both give the same frames, one at a time, so a long or large video never sits in memory
whole. Writers pipe raw frames to ffmpeg into a temporary file renamed into place when complete.
Every failure is a one-line `MediaError` naming the file and the problem.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from .. import storage
from ..errors import MediaError
from ..runtime import cpu_threads
from ..storage import atomic_path, display_name
from .media import VIDEO_FPS, MediaInfo, find_ffmpeg, input_url, pipe_reads, probe


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
    url = input_url(path)
    frames = _iter_video_pyav(path, url, fps, (height, width)) if video_decoder() == "pyav" else None
    yield from frames if frames is not None else _iter_video_ffmpeg(path, url, fps, (height, width))


def video_decoder() -> str:
    """How `iter_video` decodes: "pyav" (in-process, when PyAV is installed) or "ffmpeg" (the binary, through
    a pipe); AVSR_VIDEO_DECODER chooses. The frames are the same (tests/test_media.py; a stream cut by an edit
    list can end one frame apart); in-process decoding skips a subprocess and a 2.7 MB pipe copy per 720p
    frame (mouth crops at 720p: 1.1-1.3x)."""
    chosen = os.environ.get("AVSR_VIDEO_DECODER", "").strip().lower()
    if chosen not in ("", "pyav", "ffmpeg"):
        raise MediaError(f"AVSR_VIDEO_DECODER={chosen!r}: choose pyav or ffmpeg")
    if chosen == "ffmpeg" or storage.find_package("av") is None:  # looked up, not imported
        return "ffmpeg"
    return "pyav"


# The display matrix of an upright video (AV_PKT_DATA_DISPLAYMATRIX: 16.16 fixed point, 2.30 in the corner).
_UPRIGHT = np.array([1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30], "<i4").tobytes()


def _turned(side_data) -> bool:
    """Whether a frame's side data holds a display matrix other than upright (a turned video)."""
    # PyAV up to 18.1.0 iterates a frame's side data as the data; 18.1.1 as its types, a mapping's keys
    entries = [side_data[k] if not hasattr(k, "type") else k for k in side_data]
    return any(sd.type.name == "DISPLAYMATRIX" and bytes(sd) != _UPRIGHT for sd in entries)


def _iter_video_pyav(
    path: str | os.PathLike, url: str, fps: float, size: tuple[int, int]
) -> Iterator[np.ndarray] | None:
    """`iter_video` in-process through PyAV, with the filters the ffmpeg command runs (fps, then a bicubic
    scale into rgb24, on timestamps counted from the file's start as the command counts them); None when the
    video carries a rotation or flip (the command's autorotate filters are not rebuilt here)."""
    import av  # lazy: PyAV is optional (the video extra); only this decoder needs it

    height, width = size
    try:
        container = av.open(url)  # the file: URL (`input_url`): names such as a:b.mp4 are not protocols
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
        if _turned(first.side_data):
            container.close()
            return None
    except BaseException:
        container.close()
        raise
    return _filtered(container, stream, first, decoded, fps, width, height, path)


def _decoded_frames(container, stream, path) -> Iterator:
    """Decoded frames, timestamps shifted as ffmpeg's command shifts them (minus the file's start time);
    packets the decoder rejects are skipped, as the command skips them."""
    import av  # lazy: PyAV is optional, as in _iter_video_pyav

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
    import av  # lazy: PyAV is optional, as in _iter_video_pyav

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
    for buf in pipe_reads(path, url, "video", args, height * width * 3, whole=True):
        yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)


class VideoWriter:
    """Frames piped to ffmpeg (H.264, yuv420p, 25 fps) into a temporary file renamed to `path` by `close`;
    `abort` (after close, a no-op) removes it, so no partial file is ever left under `path`."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, pix_fmt: str = "gray") -> None:
        self.path = Path(path)
        exe = find_ffmpeg()
        if exe is None:
            raise MediaError(f"{path}: cannot encode, ffmpeg not found")
        self._output = atomic_path(self.path, ".part")  # committed by close, discarded by abort
        self.tmp = self._output.__enter__()
        self.err = tempfile.TemporaryFile()
        args = [exe, "-nostdin", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", pix_fmt,
                "-s", f"{width}x{height}", "-r", str(VIDEO_FPS), "-i", "-",
                "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast",
                "-crf", "17", "-pix_fmt", "yuv420p", "-f", "mp4", self.tmp]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=self.err)
        self.done = False

    def write(self, frame: np.ndarray) -> None:
        try:
            self.proc.stdin.write(np.ascontiguousarray(frame, np.uint8).tobytes())
        except BrokenPipeError:
            self._fail()

    def _fail(self) -> None:
        self.proc.wait()
        self.err.seek(0)
        lines = self.err.read().decode(errors="replace").strip().splitlines()
        raise MediaError(f"{self.path}: cannot write video" + (f" ({lines[-1]})" if lines else ""))

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        if self.proc.wait() != 0:
            self._fail()
        self._output.__exit__(None, None, None)
        self.done = True
        self.err.close()

    def abort(self) -> None:
        if self.done:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        aborted = MediaError(f"{self.path}: not written")
        self._output.__exit__(MediaError, aborted, None)  # removes the temporary file
        self.err.close()
        self.done = True


def write_video(path: str | os.PathLike, frames: np.ndarray) -> Path:
    """Write (T, H, W) grey or (T, H, W, 3) RGB uint8 frames as an H.264 mp4 at 25 fps, atomically."""
    frames = np.asarray(frames, np.uint8)
    writer = VideoWriter(path, frames.shape[2], frames.shape[1], "rgb24" if frames.ndim == 4 else "gray")
    try:
        for frame in frames:
            writer.write(frame)
        writer.close()
    finally:
        writer.abort()
    return Path(path)
