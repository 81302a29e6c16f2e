"""Face stage: one face's 68 iBUG landmarks on every frame of a video, through a face backend
(face_backends.py).

`track` runs the detector every `detect_every` frames and, in between, fits landmarks in the last detector box
moved with the face (its eyes and nose; small moves ignored where the backend's boxes move in steps); a fit
that no longer looks like the face found by the last detection (appearance correlation) counts as lost and
triggers a detection on that frame. The face followed is the one that overlaps the previous one, else the one
with the best detector score (never "the largest box").
Frames without a face are filled by `interpolate_landmarks`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from ..runtime import cpu_threads, helper_thread
from .face_backends import N_LANDMARKS, Backend, Detection, to_gray

MIN_IOU = 0.3  # a detection overlapping the followed face this much is the same face
MIN_SIMILARITY = 0.5  # appearance correlation below which a tracked fit counts as lost
PATCH = 32  # side of the grey face patch compared between frames


@dataclass
class FaceTrack:
    """Landmarks of one followed face: `landmarks` (T, 68, 2) in frame pixels, NaN where `found` is False."""

    landmarks: np.ndarray
    found: np.ndarray  # (T,) bool: landmarks fitted on that frame (detected or tracked)
    detections: int  # detector runs
    max_faces: int  # most faces one detector run saw

    @property
    def hit_rate(self) -> float:
        return float(self.found.mean()) if len(self.found) else 0.0


def _bbox(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points.min(0), points.max(0)])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _anchor(points: np.ndarray) -> np.ndarray:
    """Centre of the eyes and nose (landmarks 27-47): it moves with the head, not with the jaw."""
    return points[27:48].mean(axis=0)


def _patch(gray: np.ndarray, points: np.ndarray) -> np.ndarray | None:
    """Zero-mean unit-norm PATCH x PATCH grey crop of the landmarks' box (None if blank or off-frame)."""
    import cv2  # lazy: OpenCV is in the video extra, and costs 0.3 s to import

    x0, y0, x1, y1 = np.round(_bbox(points)).astype(int)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, gray.shape[1]), min(y1, gray.shape[0])
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    patch = cv2.resize(gray[y0:y1, x0:x1], (PATCH, PATCH), interpolation=cv2.INTER_AREA).astype(np.float32)
    patch -= patch.mean()
    norm = float(np.linalg.norm(patch))
    return patch / norm if norm > 1e-3 * PATCH else None


_DETECTING = threading.Lock()  # detectors keep scratch state: one detection at a time, whichever thread


def detect_faces(backend: Backend, frame: np.ndarray, detect_size: int) -> list[Detection]:
    """Detections on the frame shrunk to at most `detect_size` pixels on its longest side."""
    with _DETECTING:
        return _detect_scaled(backend, frame, detect_size)


def _detect_scaled(backend: Backend, frame: np.ndarray, detect_size: int) -> list[Detection]:
    import cv2  # lazy: OpenCV is in the video extra, as in _patch

    scale = min(1.0, detect_size / max(frame.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
        small = cv2.resize(np.ascontiguousarray(frame), size, interpolation=cv2.INTER_AREA)
        return [Detection(d.box / scale, d.score) for d in backend.detect(small)]
    return backend.detect(frame)


class FaceTracker:
    """Follows one face frame by frame: `step(frame)` returns the frame's landmarks (None when lost),
    `result()` the whole track. detect_every=1 is per-frame detection (the reference's way: auto_avsr's
    detectors and AV-HuBERT's detect_landmark.py detect on every frame)."""

    def __init__(self, backend: Backend, detect_every: int = 10, detect_size: int = 640) -> None:
        self.backend, self.detect_every, self.detect_size = backend, detect_every, detect_size
        self.box_step = getattr(backend, "box_step", 0.0)
        # A scheduled detection on a frame the caller passed ahead runs in a thread while this one tracks
        # the frames before it; its result is the same (a function of the frame alone), so it is used only on
        # the frame it was made for.
        prefetch = detect_every > 1 and getattr(backend, "detects_beside_landmarks", False)
        self.prefetcher = helper_thread("face-detect") if prefetch and cpu_threads() > 1 else None
        self.prefetched: tuple[int, Future] | None = None  # (frame index, detections)
        self.rows: list[np.ndarray] = []
        self.found: list[bool] = []
        self.detections = self.max_faces = 0
        # last fitted landmarks; the last detector box and the landmark anchor in it; the face's appearance
        # patch
        self.last = self.box = self.anchor = self.template = None
        self.since = detect_every  # frames since the last detector run

    def _follow(self, frame: np.ndarray, gray: np.ndarray) -> np.ndarray | None:
        """Landmarks fitted in the last detector box moved with the face (its size kept: a box redrawn around
        the fitted points shrinks frame after frame on a turned head), if they still show the same face."""
        fit = self.backend.landmarks(frame, self._moved_box(), gray)
        patch = _patch(gray, fit) if fit is not None else None
        return fit if patch is not None and float((patch * self.template).sum()) >= MIN_SIMILARITY else None

    def _moved_box(self) -> np.ndarray:
        """The last detector box moved with the face's eyes and nose since that detection: in whole
        `box_step`s of the backend (a fraction of the box width) when it has them, as per-frame detection's
        box would move."""
        shift = _anchor(self.last) - self.anchor
        step = self.box_step * (self.box[2] - self.box[0])
        if step > 0:
            shift = np.round(shift / step) * step
        return self.box + np.tile(shift, 2)

    def _detect(self, t: int, frame: np.ndarray) -> list[Detection]:
        if self.prefetched is not None:
            index, future = self.prefetched
            self.prefetched = None
            detections = future.result()  # also: never two detections at once (dlib keeps scratch state)
            if index == t:
                return detections
        return detect_faces(self.backend, frame, self.detect_size)

    def _prefetch(self, ahead: Sequence[np.ndarray]) -> None:
        """Start the next scheduled detection if its frame is among `ahead` (the frames after this one)."""
        if self.prefetcher is None or self.prefetched is not None:
            return
        tracking = self.last is not None and self.template is not None
        j = max(1, self.detect_every - self.since + 1) if tracking else 1  # the j-th next frame detects
        if j <= len(ahead):
            future = self.prefetcher.submit(detect_faces, self.backend, ahead[j - 1], self.detect_size)
            self.prefetched = (len(self.found) - 1 + j, future)

    def step(self, frame: np.ndarray, ahead: Sequence[np.ndarray] = ()) -> np.ndarray | None:
        """Landmarks (68, 2) of the followed face in `frame` (RGB uint8), or None. `ahead`: the next few
        frames, when the caller has them (their scheduled detection starts early, in a thread)."""
        t = len(self.found)
        gray = to_gray(frame)
        points, tried = None, False
        can_track = self.detect_every > 1 and self.last is not None and self.template is not None
        if can_track and self.since < self.detect_every:
            points, tried = self._follow(frame, gray), True
        if points is None:  # scheduled detection, or the track was lost
            dets = self._detect(t, frame)
            self.detections, self.since = self.detections + 1, 0
            self.max_faces = max(self.max_faces, len(dets))
            ref = None
            if self.last is not None and self.box is not None:
                ref = self._moved_box()
            near = [d for d in dets if ref is not None and _iou(d.box, ref) >= MIN_IOU]
            choice = max(near, key=lambda d: d.score, default=None)
            if choice is None and can_track and not tried:  # the detector missed the followed face
                points = self._follow(frame, gray)
            if choice is None and points is None:
                choice = max(dets, key=lambda d: d.score, default=None)
            if choice is not None:
                fit = self.backend.landmarks(frame, choice.box, gray)
                patch = _patch(gray, fit) if fit is not None else None
                if patch is not None:
                    points, self.box, self.anchor, self.template = fit, choice.box, _anchor(fit), patch
        self.since += 1
        self.found.append(points is not None)
        self.rows.append(points if points is not None else np.full((N_LANDMARKS, 2), np.nan))
        if points is not None:
            self.last = points
        else:
            self.since = self.detect_every  # lost: detect again on the next frame
        self._prefetch(ahead)
        return points

    def result(self) -> FaceTrack:
        landmarks = np.array(self.rows, float).reshape(-1, N_LANDMARKS, 2)
        return FaceTrack(landmarks, np.array(self.found, bool), self.detections, self.max_faces)


def track(
    frames: Iterable[np.ndarray], backend: Backend, detect_every: int = 10, detect_size: int = 640
) -> FaceTrack:
    """Follow one face through `frames` (RGB uint8); see FaceTracker."""
    tracker = FaceTracker(backend, detect_every, detect_size)
    for frame in frames:
        tracker.step(frame)
    return tracker.result()


def landmark_gap(a: np.ndarray, b: np.ndarray) -> float:
    """How far two (T, 68, 2) tracks of the same frames lie apart, in pixels (the "landmark drift" of
    docs/benchmarks.md): the median over the frames both have (NaN when none) of the mean distance between
    corresponding points."""
    per_frame = np.linalg.norm(np.asarray(a, float) - np.asarray(b, float), axis=-1).mean(-1)
    both = np.isfinite(per_frame)
    return float(np.median(per_frame[both])) if both.any() else float("nan")


def interpolate_landmarks(landmarks: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Fill frames without landmarks: linear between the nearest found frames, copies before the first and
    after the last (auto_avsr preparation/detectors/retinaface/video_process.py interpolate_landmarks).
    Raises ValueError when no frame has landmarks."""
    index = np.flatnonzero(found)
    if not len(index):
        raise ValueError("no landmarks in any frame")
    t = np.arange(len(found))
    flat = landmarks[index].reshape(len(index), -1)
    filled = np.stack([np.interp(t, index, flat[:, k]) for k in range(flat.shape[1])], axis=1)
    return filled.reshape(landmarks.shape)
