"""Face stage: one face's 68 iBUG landmarks on every frame of a video, through interchangeable backends.

A backend finds faces (`detect`: boxes and scores) and fits 68 landmarks inside a box (`landmarks`):

- ``dlib`` (default, offline): dlib's HOG frontal-face detector and the 68-point shape predictor shipped in
  the `face-recognition-models` package (AV-HuBERT's avhubert/preparation/detect_landmark.py uses the pair).
- ``face-alignment``: the 2D-FAN landmarker of auto_avsr's default pipeline (its RetinaFace detector is
  replaced by the S3FD detector of the same package); needs its weight files, downloaded once.
- ``mediapipe``: BlazeFace detection and FaceMesh, the 468 mesh points mapped to the 68 iBUG points.

`track` runs the detector every `detect_every` frames and, in between, fits landmarks in the last detector box
moved with the face (its eyes and nose; small moves ignored where the backend's boxes move in steps); a fit
that no longer looks like the face found by the last detection (appearance correlation) counts as lost and
triggers a detection on that frame. The face followed is the one that overlaps the previous one, else the one
with the best detector score (never "the largest box").
Frames without a face are filled by `interpolate_landmarks`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import CheckpointError, UsageError
from ..runtime import cpu_threads, helper_thread
from ..storage import find_package

N_LANDMARKS = 68
BACKENDS = ("dlib", "face-alignment", "mediapipe")
MIN_IOU = 0.3  # a detection overlapping the followed face this much is the same face
MIN_SIMILARITY = 0.5  # appearance correlation below which a tracked fit counts as lost
PATCH = 32  # side of the grey face patch compared between frames


@dataclass(frozen=True)
class Detection:
    box: np.ndarray  # x0, y0, x1, y1 in frame pixels
    score: float


class Backend(Protocol):
    name: str

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 frame."""

    def landmarks(
        self, frame: np.ndarray, box: np.ndarray, gray: np.ndarray | None = None
    ) -> np.ndarray | None:
        """(68, 2) float landmarks (x, y) of the face in `box`, or None when there is none; `gray`: the frame
        in grey (to_gray), when the caller has it already."""


def to_gray(frame: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def _package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = find_package(module)
    locations = spec.submodule_search_locations if spec else None
    return Path(next(iter(locations))) if locations else None


def _require(module: str, backend: str, install: str) -> None:
    if find_package(module) is None:
        raise UsageError(f"the {backend} face backend needs {module}: pip install {install}")


class DlibBackend:
    """dlib's HOG detector (scored by `run`) and 68-point shape predictor."""

    name = "dlib"
    # detect() may run in another thread beside landmarks(): separate dlib objects, and dlib releases the
    # GIL while it scans (two threads detect 1.95x faster than one)
    detects_beside_landmarks = True
    # HOG windows over a 5/6 image pyramid, one 8-px cell apart: the detector's box moves in steps of a
    # cell, a ninth of its width (the box spans 9 cells: on a 720p face panning, per-frame detection's 300-px
    # box moved by 32-34 px; on the LRS3 clip it moved on 20 of 154 frames). A tracked box that follows every
    # sub-pixel move of the eyes fits landmarks where per-frame detection would not; moved in whole steps, as
    # the detector's is, tracked landmarks drift from per-frame detection by 0.00 px instead of 0.64 (median,
    # LRS3 clip; 720p still: 0.00 instead of 1.23; the face panning across 720p: 1.10 instead of 1.24, with
    # per-frame detection's own floor at 1.10). bench_mouth.py.
    box_step = 1 / 9

    def __init__(self, predictor_path: str | os.PathLike | None = None) -> None:
        _require("dlib", "dlib", "dlib-bin")
        import dlib

        if predictor_path is None:
            folder = _package_dir("face_recognition_models")  # importing it pulls setuptools' pkg_resources
            if folder is None:
                raise UsageError(
                    "the dlib face backend needs shape_predictor_68_face_landmarks.dat: "
                    "pip install --no-deps face-recognition-models"
                )
            predictor_path = folder / "models" / "shape_predictor_68_face_landmarks.dat"
        if not Path(predictor_path).is_file():
            raise CheckpointError(f"{predictor_path}: dlib shape predictor not found")
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(predictor_path))

    def detect(self, frame: np.ndarray) -> list[Detection]:
        gray = to_gray(frame)
        # HOG's window finds faces of about 80 px and more; one 2x upsampling (4x the work) reaches ~40 px,
        # tried only when the frame as it is shows no face (AV-HuBERT's detect_landmark.py always upsamples).
        for upsample in (0, 1):
            rects, scores, _ = self.detector.run(gray, upsample, 0.0)
            if rects:
                break
        return [
            Detection(np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], float), float(s))
            for r, s in zip(rects, scores, strict=True)
        ]

    def landmarks(
        self, frame: np.ndarray, box: np.ndarray, gray: np.ndarray | None = None
    ) -> np.ndarray | None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        gray = to_gray(frame) if gray is None else gray
        shape = self.predictor(gray, self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.array([(p.x, p.y) for p in shape.parts()], float)


# face-alignment's weight files (face_alignment/api.py models_urls, detection/sfd/sfd_detector.py).
FAN_WEIGHTS = {
    "2DFAN4-11f355bf06.pth.tar": "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
    "s3fd-619a316812.pth": "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
}


def fan_weights(weights_dir: str | os.PathLike | None = None, download: bool = True) -> dict[str, Path]:
    """Paths of face-alignment's FAN and S3FD weights: in `weights_dir`, ``$AVSR_FAN_DIR``, or torch hub's
    checkpoints folder (where face-alignment itself keeps them), downloaded there when missing and allowed."""
    import torch.hub

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    folders = [Path(d).expanduser() for d in (weights_dir, os.environ.get("AVSR_FAN_DIR")) if d] + [hub]
    found = {}
    for name, url in FAN_WEIGHTS.items():
        path = next((f / name for f in folders if (f / name).is_file()), None)
        if path is None and download:
            hub.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(url, str(hub / name), progress=False)
                path = hub / name
            except OSError:
                path = None
        if path is None:
            where = ", ".join(map(str, folders))
            raise CheckpointError(
                f"face-alignment weights {name} not found in {where} and not downloadable (offline?): "
                f"fetch {url} into one of them, or set AVSR_FAN_DIR to a folder holding "
                f"{' and '.join(FAN_WEIGHTS)}"
            )
        found[name] = path
    return found


class FaceAlignmentBackend:
    """face-alignment's S3FD detector and 2D-FAN-4 landmarker, in eager mode on the given device."""

    name = "face-alignment"

    def __init__(
        self, weights_dir: str | os.PathLike | None = None, device: str = "cpu", download: bool = True
    ) -> None:
        _require("face_alignment", "face-alignment", "face-alignment (and its weights)")
        import torch
        from face_alignment.detection.sfd.sfd_detector import SFDDetector
        from face_alignment.models import FAN

        paths = fan_weights(weights_dir, download)
        self.device = device
        self.detector = SFDDetector(device, path_to_detector=str(paths["s3fd-619a316812.pth"]))
        # face_alignment/api.py FaceAlignment._load_native: FAN(4), a plain state dict, eval mode (no
        # torch.compile here: that is its compile=True path, slow to start on CPU).
        self.fan = FAN(4)
        self.fan.load_state_dict(
            torch.load(paths["2DFAN4-11f355bf06.pth.tar"], map_location=device, weights_only=True)
        )
        self.fan.to(device).eval()

    def detect(self, frame: np.ndarray) -> list[Detection]:
        boxes = self.detector.detect_from_image(np.ascontiguousarray(frame))
        return [Detection(np.asarray(b[:4], float), float(b[4])) for b in boxes]

    def landmarks(
        self, frame: np.ndarray, box: np.ndarray, gray: np.ndarray | None = None
    ) -> np.ndarray | None:
        import torch
        from face_alignment.utils import CENTER_Y_OFFSET, crop, get_preds_fromhm

        # face_alignment/api.py get_landmarks_from_image: box centre moved up by 12% of its height, scale
        # (w + h) / the detector's reference scale, a 256x256 crop, heatmaps decoded back to frame pixels.
        x0, y0, x1, y1 = box
        center = np.array([(x0 + x1) / 2, (y0 + y1) / 2 - (y1 - y0) * CENTER_Y_OFFSET])
        scale = (x1 - x0 + y1 - y0) / self.detector.reference_scale
        patch = crop(np.ascontiguousarray(frame), center, scale).transpose(2, 0, 1).astype(np.float32) / 255
        with torch.inference_mode():
            out = self.fan(torch.from_numpy(patch)[None].to(self.device))
        heatmaps = (out[-1] if isinstance(out, list) else out).float().cpu().numpy()
        _, points, _ = get_preds_fromhm(heatmaps, center, scale)
        return np.asarray(points, float).reshape(N_LANDMARKS, 2)


# FaceMesh vertex nearest each iBUG-68 point, chosen by comparing FaceMesh with dlib's 68 points on 84 frames
# of two real clips (LRS3 example, carphone) and kept left-right symmetric. Mean distance to dlib's points,
# in inter-ocular distances: 0.041 on the stable alignment points, 0.033 on the mouth centre.
MEDIAPIPE_68 = [
    *(127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356),  # jaw 0-16
    *(70, 63, 105, 66, 107, 336, 296, 334, 293, 300),  # brows 17-26
    *(168, 197, 195, 4, 75, 97, 2, 326, 305),  # nose 27-35
    *(7, 160, 158, 155, 153, 144, 382, 385, 387, 249, 373, 380),  # eyes 36-47
    *(61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181),  # outer lips 48-59
    *(62, 38, 12, 268, 292, 316, 15, 86),  # inner lips 60-67
]


@contextlib.contextmanager
def _quiet_native_stderr():
    """Send what native code writes to file descriptor 2 to /dev/null (MediaPipe's absl/TFLite chatter)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class MediapipeBackend:
    """MediaPipe's bundled BlazeFace detector (full range, then short range) and FaceMesh landmarks."""

    name = "mediapipe"

    def __init__(self) -> None:
        _require("mediapipe", "mediapipe", "--no-deps 'mediapipe==0.10.21' (make install does it)")
        with _quiet_native_stderr():
            from mediapipe.python.solutions import face_detection

            self.detectors = [face_detection.FaceDetection(model_selection=m) for m in (1, 0)]
            self.mesh = _face_mesh()
            # Each graph logs from its own threads when it first runs; run them once here, where fd 2 is
            # quiet, or the lines land on the user's terminal later.
            blank = np.zeros((192, 192, 3), np.uint8)
            for detector in self.detectors:
                detector.process(blank)
            self.mesh.process(input_data={"image": blank})

    def detect(self, frame: np.ndarray) -> list[Detection]:
        h, w = frame.shape[:2]
        frame = np.ascontiguousarray(frame)
        for detector in self.detectors:  # auto_avsr's mediapipe detector.py: full range, else short range
            with _quiet_native_stderr():
                found = detector.process(frame).detections or []
            if found:
                break
        out = []
        for d in found:
            b = d.location_data.relative_bounding_box
            box = np.array([b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h])
            out.append(Detection(box, float(d.score[0])))
        return out

    def landmarks(
        self, frame: np.ndarray, box: np.ndarray, gray: np.ndarray | None = None
    ) -> np.ndarray | None:
        # FaceMesh finds the face itself; give it a square of twice the box around the box's centre
        h, w = frame.shape[:2]
        (cx, cy), half = (box[:2] + box[2:]) / 2, max(box[2] - box[0], box[3] - box[1])
        x0, y0 = int(max(cx - half, 0)), int(max(cy - half, 0))
        x1, y1 = int(min(cx + half, w)), int(min(cy + half, h))
        if x1 - x0 < 16 or y1 - y0 < 16:
            return None
        with _quiet_native_stderr():
            faces = self.mesh.process(input_data={"image": np.ascontiguousarray(frame[y0:y1, x0:x1])})
        faces = faces.multi_face_landmarks or []
        if not faces:
            return None
        mesh = np.array([(p.x, p.y) for p in faces[0].landmark]) * (x1 - x0, y1 - y0)
        return mesh[MEDIAPIPE_68] + (x0, y0)


def _face_mesh():
    """FaceMesh on single images. Its class sets options through protobuf's FieldDescriptor.label, gone in
    protobuf 7; the same graph with the same side inputs (and the graph's own default thresholds) then."""
    from mediapipe.python.solutions import face_mesh

    try:
        return face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1)
    except AttributeError:
        from mediapipe.python.solution_base import SolutionBase

        return SolutionBase(
            binary_graph_path=face_mesh._BINARYPB_FILE_PATH,
            side_inputs={"num_faces": 1, "with_attention": False, "use_prev_landmarks": False},
            outputs=["multi_face_landmarks"],
        )


def make_backend(name: str = "dlib", **kwargs) -> Backend:
    """A backend by name (see BACKENDS); keyword arguments go to its constructor."""
    classes = {"dlib": DlibBackend, "face-alignment": FaceAlignmentBackend, "mediapipe": MediapipeBackend}
    if name not in classes:
        raise UsageError(f"unknown face backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return classes[name](**kwargs)


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
    import cv2

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
    import cv2

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
