"""Face backends: interchangeable detectors (`detect`: boxes and scores) and 68-point iBUG landmarkers
(`landmarks`: fitted inside a box), made by name with `make_backend`:

- ``dlib`` (default, offline): dlib's HOG frontal-face detector and the 68-point shape predictor shipped in
  the `face-recognition-models` package (AV-HuBERT's avhubert/preparation/detect_landmark.py uses the pair).
- ``face-alignment``: the 2D-FAN landmarker of auto_avsr's default pipeline (its RetinaFace detector is
  replaced by the S3FD detector of the same package); needs its weight files, downloaded once.
- ``mediapipe``: BlazeFace detection and FaceMesh, the 468 mesh points mapped to the 68 iBUG points.

Each backend's package is optional and imported only when that backend is made.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import CheckpointError, UsageError
from ..storage import find_package

N_LANDMARKS = 68
BACKENDS = ("dlib", "face-alignment", "mediapipe")


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
    import cv2  # lazy: OpenCV is in the video extra, and costs 0.3 s to import

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
        import dlib  # lazy: each backend's package is optional (checked by _require)

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
    import torch.hub  # lazy: keeps this module free of torch until face-alignment is used

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
        # lazy: face-alignment is optional, and torch loads only for it
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
        # lazy: as in __init__ (the module loads without torch)
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
            # lazy: mediapipe is optional; imported here, where its native logs are silenced
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
    from mediapipe.python.solutions import face_mesh  # lazy: mediapipe is optional

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
