"""Mouth stage: video -> 96x96 RGB mouth crops at 25 fps, aligned as the Llama-AVSR checkpoints were trained.

Frames are decoded once and streamed: each frame's mouth is cut as soon as its smoothed landmarks are final
(the 6 frames after it, and every frame up to the next one with a face, have landmarks), so only those
frames wait in memory. A face lost for longer than the buffer holds (`STREAM_BUFFER_BYTES`) falls back to
decoding the video a second time to cut the rest: the crops are the same either way. The alignment
follows auto_avsr's preparation/detectors/retinaface/video_process.py (`VideoProcess`, identical in
Omni-AVSR's preprocessing_inference_example/video_process.py); `video_model_input` is the test-time
transform of auto_avsr's datamodule/transforms.py (`VideoTransform("test")`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MediaError
from ..runtime import cpu_threads, helper_thread
from ..storage import atomic_open
from .assets import load_mean_face
from .face import FaceTracker, detect_faces, interpolate_landmarks
from .face_backends import BACKENDS, Backend, make_backend
from .media import VIDEO_FPS, MediaInfo, probe
from .video import VideoWriter, iter_video

# auto_avsr preparation/detectors/retinaface/video_process.py (VideoProcess and its affine_transform):
STABLE_POINTS = (28, 33, 36, 39, 42, 45, 48, 54)  # nose ridge and base, eye corners, mouth corners
MOUTH = slice(48, 68)  # start_idx=48, stop_idx=68: the 20 mouth landmarks
ALIGNED_SIZE = 256  # target_size = reference_size = (256, 256): the mean face's frame
CROP_SIZE = 96  # crop_width = crop_height = 96
WINDOW = 12  # window_margin=12: landmarks averaged over frames t-6..t+6 (fewer at the clip's ends)
# The RGB frame is warped and cropped, as auto_avsr's preprocess_lrs2lrs3.py made the released data
# (VideoProcess(convert_gray=False), RGB crops saved); grey comes later, in float, at the model input
# (modeling.avhubert.video_model_input). Deviation: VideoProcess returns nothing for clips shorter than 12
# frames (here the window shrinks, so even a 1-frame video crops).
CROP_FORMAT = "rgb"  # part of the crop-cache key: grey crops cached by older versions are not reused
CENTRE_LIMIT = 5  # cut_patch threshold: the mouth may lie at most 48 + 5 px off the aligned frame's centre
# Frames held while waiting for landmarks (about 90 frames of 720p RGB, 3.7 s); beyond, a second decode.
STREAM_BUFFER_BYTES = 256 * 2**20


@dataclass(frozen=True)
class MouthOptions:
    """How to find the face and cut the mouth.

    backend: dlib, face-alignment or mediapipe. detect_every: run the face detector every N frames and track
    in between (1: on every frame, as the reference preprocessing does). max_size: frames larger than this
    (longest side, px) are scaled down first; detect_size: the same for the detector's input.
    auto_rotate: when no upright face is found, try the frames turned by 90, 270 and 180 degrees.
    mean_face: path of 20words_mean_face.npy (None: the cached asset, see assets.py).
    """

    backend: str = "dlib"
    detect_every: int = field(default=10, metadata={"min": 1})
    max_size: int = 1280
    detect_size: int = 640
    auto_rotate: bool = True
    mean_face: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown face backend '{self.backend}' (choose from {', '.join(BACKENDS)})")
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {self.detect_every}")
        if self.max_size < 64 or self.detect_size < 64:
            raise ValueError("max_size and detect_size must be >= 64 px")


@dataclass
class MouthInfo:
    """What `mouth_frames` did, per frame where it matters (T frames at 25 fps)."""

    path: Path
    frame_size: tuple[int, int]  # (height, width) of the frames the landmarks refer to
    rotation: int  # degrees the frames were turned (counter-clockwise) to show an upright face
    backend: str
    found: np.ndarray  # (T,) bool: landmarks fitted on the frame (others interpolated)
    landmarks: np.ndarray  # (T, 68, 2) interpolated landmarks, frame pixels
    transforms: np.ndarray  # (T, 2, 3) similarity transforms, frame -> aligned 256x256 face
    centres: np.ndarray  # (T, 2) crop centres in the aligned face (mean of the smoothed mouth points)
    detections: int
    max_faces: int
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return len(self.found)

    @property
    def hit_rate(self) -> float:
        return float(self.found.mean()) if self.n_frames else 0.0

    def crop_centres_in_frame(self) -> np.ndarray:
        """(T, 2) crop centres mapped back into the (rotated, scaled) frame."""
        return np.array(
            [_invert(m) @ np.append(c, 1.0) for m, c in zip(self.transforms, self.centres, strict=True)]
        )


def _invert(m: np.ndarray) -> np.ndarray:
    a = np.linalg.inv(m[:, :2])
    return np.hstack([a, -a @ m[:, 2:]])


def processing_size(height: int, width: int, max_size: int) -> tuple[int, int]:
    """(height, width) scaled down so that the longest side is at most `max_size` (never scaled up)."""
    scale = min(1.0, max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _frames(path, size: tuple[int, int], rotation: int, info: MediaInfo | None = None):
    k = rotation // 90
    for frame in iter_video(path, VIDEO_FPS, size, info):
        yield np.rot90(frame, k) if k else frame


def smoothed_frame(landmarks, t: int, n: int, window: int = WINDOW) -> np.ndarray:
    """Frame t's landmarks averaged over the frames within window // 2 of it (a symmetric window that shrinks
    at the ends of the n frames), moved back onto the frame's own landmark centroid (auto_avsr
    video_process.py crop_patch: np.mean over the window, then += the centroid difference). `landmarks` is
    any sequence of (68, 2) arrays holding at least frames t-6..t+6."""
    half = min(window // 2, t, n - 1 - t)
    mean = np.mean(np.asarray(landmarks[t - half : t + half + 1]), axis=0)
    return mean + (np.asarray(landmarks[t]).mean(axis=0) - mean.mean(axis=0))


def smooth_landmarks(landmarks: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """`smoothed_frame` of every frame: (T, 68, 2)."""
    n = len(landmarks)
    return np.array([smoothed_frame(landmarks, t, n, window) for t in range(n)]).reshape(landmarks.shape)


def align_transform(points: np.ndarray, mean_face: np.ndarray) -> np.ndarray:
    """2x3 similarity transform taking the stable points onto the mean face's (cv2 LMEDS fit, as auto_avsr's
    estimate_affine_transform; the mean face's frame is the target frame, so no offset is added)."""
    import cv2  # lazy: OpenCV is in the video extra, and costs 0.3 s to import

    src = points[list(STABLE_POINTS)].astype(np.float64)
    dst = mean_face[list(STABLE_POINTS)].astype(np.float64)
    m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    if m is None:  # degenerate points (LMEDS found no model): a least-squares similarity instead
        m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1e9)
    if m is None:
        raise ValueError("cannot align degenerate landmarks")
    return m


def crop_mouth(frame: np.ndarray, m: np.ndarray, mouth_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Warp a frame (RGB or grey) into the aligned 256x256 face (bilinear, black border) and cut the 96x96
    square centred on the mean of the transformed mouth points; returns (crop, centre)."""
    import cv2  # lazy: OpenCV is in the video extra, as in align_transform

    aligned = cv2.warpAffine(frame, m, (ALIGNED_SIZE, ALIGNED_SIZE), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)  # fmt: skip
    centre = (mouth_points @ m[:, :2].T + m[:, 2]).mean(axis=0)
    half = CROP_SIZE // 2
    offset = np.abs(centre - ALIGNED_SIZE / 2)
    if (offset > half + CENTRE_LIMIT).any():
        raise ValueError(f"mouth {offset.max():.0f} px off the aligned face's centre")
    x0, y0 = (int(round(v - half)) for v in centre)  # within the limit the square always fits in 256
    return aligned[y0 : y0 + CROP_SIZE, x0 : x0 + CROP_SIZE].copy(), centre


def _find_rotation(samples: list[np.ndarray], backend: Backend, detect_size: int) -> int | None:
    for degrees in (90, 270, 180):
        if any(detect_faces(backend, np.rot90(f, degrees // 90), detect_size) for f in samples):
            return degrees
    return None


class _CropStream:
    """One pass over the frames: track the face, and cut each frame's mouth once its smoothed landmarks are
    final, holding the frames in between (up to `buffer_bytes`, beyond which the cuts wait for `cut_rest`)."""

    def __init__(self, path, mean_face: np.ndarray, tracker: FaceTracker, overlay_path, buffer_bytes: int):
        self.path, self.mean_face, self.tracker = path, mean_face, tracker
        self.overlay_path, self.writer = overlay_path, None
        self.buffer_bytes = buffer_bytes
        self.filled: list[np.ndarray] = []  # interpolated landmarks, final up to the last frame with a face
        self.pending: dict[int, np.ndarray] = {}  # frame index -> frame not cut yet
        self.streaming = True  # False once the buffer overflowed: the rest is cut by `cut_rest`
        self.crops: list[np.ndarray] = []
        self.transforms: list[np.ndarray] = []
        self.centres: list[np.ndarray] = []
        self.next_cut = 0  # the first frame not handed to the cutter yet
        # frame index, frame and its (crop, transform, centre) being computed, in frame order
        self.cuts: deque[tuple[int, np.ndarray, Future]] = deque()
        self.cutter = helper_thread("mouth-cut") if cpu_threads() > 1 else None

    @property
    def n_frames(self) -> int:
        return len(self.tracker.found)

    def add(self, frame: np.ndarray, ahead: Sequence[np.ndarray] = ()) -> None:
        t = self.n_frames
        found = self.tracker.step(frame, ahead) is not None
        if self.streaming:
            self.pending[t] = frame
            if len(self.pending) * frame.nbytes > self.buffer_bytes:
                self.streaming, self.pending = False, {}
        if found:
            self._fill(t)
            self._cut_ready(t - WINDOW // 2, t + 1)

    @property
    def has_face(self) -> bool:
        return bool(self.filled)  # filled grows from the first frame with a face on

    def finish(self) -> None:
        """End of the frames (with a face): fill the frames after the last face and cut what is held."""
        # copies of the last face's landmarks after it
        self.filled += [self.filled[-1]] * (self.n_frames - len(self.filled))
        self._cut_ready(self.n_frames - 1, self.n_frames)
        self._collect(wait=True)

    def cut_rest(self, frames) -> None:
        """Cut the frames the overflowed buffer dropped, from a second decode of the video."""
        for t, frame in enumerate(frames):
            if t >= self.n_frames:
                break
            if t >= self.next_cut:
                self._cut(t, frame, self.n_frames)
        self._collect(wait=True)

    def _fill(self, t: int) -> None:
        """Interpolated landmarks up to frame t, which has a face (auto_avsr interpolate_landmarks: linear
        between faces, copies before the first; np.interp between two neighbours is the same computed on the
        whole track or on the segment)."""
        rows = self.tracker.rows
        if not self.filled:
            self.filled = [rows[t]] * (t + 1)
            return
        last = len(self.filled) - 1
        if last == t - 1:  # no gap: interpolating between neighbours gives the frame's own landmarks
            self.filled.append(rows[t])
            return
        found = np.array(self.tracker.found[last : t + 1])
        segment = interpolate_landmarks(np.array(rows[last : t + 1]), found)
        self.filled += list(segment[1:])

    def _cut_ready(self, upto: int, n: int) -> None:
        """Cut the held frames up to `upto`, whose landmark window (of n frames so far) is final."""
        for t in range(self.next_cut, upto + 1):
            if t not in self.pending:
                return
            self._cut(t, self.pending.pop(t), n)

    def _cut(self, t: int, frame: np.ndarray, n: int) -> None:
        """Align and cut frame t: in the cutter thread when there is one (OpenCV releases the GIL, so the
        warp runs beside the next frame's landmark fit), else here."""
        smoothed = smoothed_frame(self.filled, t, n)
        if self.cutter is None:
            done: Future = Future()
            try:
                done.set_result(_align_and_cut(frame, smoothed, self.mean_face))
            except ValueError as exc:
                done.set_exception(exc)
        else:
            done = self.cutter.submit(_align_and_cut, frame, smoothed, self.mean_face)
        self.cuts.append((t, frame, done))
        self.next_cut = t + 1
        self._collect(wait=len(self.cuts) > MAX_CUTS_AHEAD)

    def _collect(self, wait: bool) -> None:
        """Take finished cuts in frame order (all of them when `wait`)."""
        while self.cuts and (wait or self.cuts[0][2].done()):
            t, frame, done = self.cuts.popleft()
            try:
                crop, m, centre = done.result()
            except ValueError as exc:
                raise MediaError(f"{self.path}: frame {t}: {exc}") from None
            self.crops.append(crop)
            self.transforms.append(m)
            self.centres.append(centre)
            if self.overlay_path is not None:
                if self.writer is None:
                    self.writer = VideoWriter(self.overlay_path, frame.shape[1], frame.shape[0], "rgb24")
                self.writer.write(_overlay(frame, self.filled[t], self.tracker.found[t], m, centre))


LOOKAHEAD = 3  # decoded frames the tracker sees ahead (a scheduled detection on one starts early)
MAX_CUTS_AHEAD = 4  # frames handed to the cutter thread and not collected yet


def _align_and_cut(frame: np.ndarray, smoothed: np.ndarray, mean_face: np.ndarray):
    """(crop, transform, centre) of one frame from its smoothed landmarks."""
    m = align_transform(smoothed, mean_face)
    crop, centre = crop_mouth(frame, m, smoothed[MOUTH])
    return crop, m, centre


def mouth_frames(
    video_path: str | os.PathLike,
    options: MouthOptions = MouthOptions(),
    backend: Backend | None = None,
    overlay_path: str | os.PathLike | None = None,
) -> tuple[np.ndarray, MouthInfo]:
    """Mouth crops of a video: uint8 (T, 96, 96, 3) RGB at 25 fps, and what was done (`MouthInfo`).

    backend: a loaded face backend (make it once for many files), None: `options.backend`. overlay_path:
    also write the frames with landmarks and crop square drawn there (mp4). Raises MediaError (one line naming
    the file) when the video cannot be read or shows no face.
    """
    mean_face = load_mean_face(options.mean_face)
    backend = backend or make_backend(options.backend)
    info = probe(video_path)
    if not info.has_video or not info.width or not info.height:
        raise MediaError(f"{video_path}: has no video stream")
    size = processing_size(info.height, info.width, options.max_size)
    began = time.perf_counter()
    samples: list[np.ndarray] = []  # one frame a second (at most 10), to look for a turned face

    def one_pass(rotation: int) -> _CropStream:
        tracker = FaceTracker(backend, options.detect_every, options.detect_size)
        stream = _CropStream(video_path, mean_face, tracker, overlay_path, STREAM_BUFFER_BYTES)
        window: deque[np.ndarray] = deque()  # the frame to add and up to LOOKAHEAD frames after it
        for i, frame in enumerate(_frames(video_path, size, rotation, info)):
            if not rotation and i % VIDEO_FPS == 0 and len(samples) < 10:
                samples.append(frame)
            window.append(frame)
            if len(window) > LOOKAHEAD:
                stream.add(window.popleft(), window)
        while window:
            stream.add(window.popleft(), window)
        return stream

    rotation, stream = 0, None
    try:
        stream = one_pass(rotation)
        if not stream.n_frames:
            raise MediaError(f"{video_path}: no video frames")
        if not stream.has_face and options.auto_rotate:
            rotation = _find_rotation(samples, backend, options.detect_size) or 0
            if rotation:
                stream = one_pass(rotation)
        if not stream.has_face:
            raise MediaError(
                f"no face found in {video_path} ({stream.n_frames} frames, {backend.name} backend"
                + (", upright or turned" if options.auto_rotate else "")
                + ")"
            )
        stream.finish()
        tracked = time.perf_counter()
        if not stream.streaming:
            stream.cut_rest(_frames(video_path, size, rotation, info))
        if stream.writer is not None:
            stream.writer.close()
    finally:
        if stream is not None and stream.writer is not None:
            stream.writer.abort()
    timings = {"track+crop": tracked - began, "second pass": time.perf_counter() - tracked}
    return _results(video_path, stream, size, rotation, backend.name, timings)


def _results(video_path, stream: _CropStream, size, rotation: int, backend: str, timings: dict):
    """`mouth_frames`' crops and `MouthInfo` from a finished crop stream, with its warnings."""
    face = stream.tracker.result()
    n = len(stream.crops)
    result = MouthInfo(
        path=Path(video_path),
        frame_size=size if rotation in (0, 180) else size[::-1],
        rotation=rotation,
        backend=backend,
        found=face.found[:n],
        landmarks=np.array(stream.filled[:n]).reshape(n, 68, 2),
        transforms=np.array(stream.transforms).reshape(n, 2, 3),
        centres=np.array(stream.centres).reshape(n, 2),
        detections=face.detections,
        max_faces=face.max_faces,
        timings=timings,
    )
    if face.max_faces > 1:
        result.warnings.append(
            f"up to {face.max_faces} faces in a frame: followed the best-scored one, then the same one"
        )
    if rotation:
        result.warnings.append(f"no upright face: the frames were turned by {rotation} degrees")
    if result.hit_rate < 0.5:
        result.warnings.append(f"landmarks found on {100 * result.hit_rate:.0f}% of frames only")
    return np.array(stream.crops, np.uint8).reshape(n, CROP_SIZE, CROP_SIZE, 3), result


def _overlay(frame, points, found, m, centre) -> np.ndarray:
    """The frame with its landmarks (green: fitted, orange: interpolated) and the crop square (red)."""
    import cv2  # lazy: OpenCV is in the video extra, as in align_transform

    image = np.ascontiguousarray(frame).copy()
    colour = (0, 255, 0) if found else (255, 160, 0)
    radius = max(1, round(max(image.shape[:2]) / 300))
    for x, y in points:
        cv2.circle(image, (int(round(x)), int(round(y))), radius, colour, -1)
    half = CROP_SIZE / 2
    square = np.array([[-half, -half], [half, -half], [half, half], [-half, half]]) + centre
    inv = _invert(m)
    corners = square @ inv[:, :2].T + inv[:, 2]
    cv2.polylines(image, [np.round(corners).astype(np.int32)], True, (255, 0, 0), radius)
    return image


_BACKENDS: dict[str, Backend] = {}


def shared_backend(name: str) -> Backend:
    """One loaded face backend per name and process (loading dlib or FAN takes a while)."""
    if name not in _BACKENDS:
        _BACKENDS[name] = make_backend(name)
    return _BACKENDS[name]


def cached_mouth_frames(
    video_path: str | os.PathLike,
    options: MouthOptions = MouthOptions(),
    cache_dir: str | os.PathLike | None = None,
    backend: Backend | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(crops (T, 96, 96, 3) uint8 RGB, found (T,) bool, warnings) of a video, kept in `cache_dir` when given.

    The key covers the file (absolute path, size, mtime) and every option that changes the crops, so models
    and modes share crops and a changed file or option is cropped again. Files are `.npz` (no pickle).
    """
    if cache_dir is None:
        crops, info = mouth_frames(video_path, options, backend)
        return crops, info.found, info.warnings
    path = Path(video_path)
    st = path.stat()
    opts = {k: getattr(options, k) for k in options.__dataclass_fields__}
    ident = [str(path.resolve()), st.st_size, st.st_mtime_ns, opts, CROP_SIZE, CROP_FORMAT]
    ident = json.dumps(ident, sort_keys=True)
    entry = Path(cache_dir) / f"{hashlib.sha256(ident.encode()).hexdigest()[:32]}.npz"
    if entry.exists():
        with np.load(entry, allow_pickle=False) as z:
            return z["crops"], z["found"], [str(w) for w in z["warnings"]]
    crops, info = mouth_frames(video_path, options, backend)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(entry, "wb") as f:
        np.savez(f, crops=crops, found=info.found, warnings=np.array(info.warnings, dtype=str))
    return crops, info.found, info.warnings
