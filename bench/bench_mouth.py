"""Benchmark: the mouth-crop pipeline (decode + detect + landmarks + align + crop) in frames per second, per
face backend, detecting every N frames and tracking in between (avsr's default) against detecting on every
frame (the reference preprocessing's way), in the same run on the same clips.

Reference rows: "av_hubert dlib" is AV-HuBERT's avhubert/preparation/detect_landmark.py (HOG upsampled once
on every frame, then the 68-point predictor); auto_avsr's RetinaFace+FAN has no offline weights, so
its stand-in is the face-alignment backend (S3FD + FAN) with detect_every=1. When the FAN weights are absent
that backend runs on randomly initialised weights: its speed is real (it does not depend on weight values),
its landmarks are not. "ffmpeg pipe" rows decode with the ffmpeg binary through a pipe (the same frames as
PyAV's in-process decoding, avsr's default). The dlib rows detecting every 10 frames are the median of 5
passes; the others one pass. A second table gives the landmark drift of tracking (`drift`).

    python -m bench.bench_mouth [--json bench/out/mouth.json] [--fan-frames 10]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "assets"


ROUNDS = 5  # timed passes of the headline rows (dlib, detect every 10; either decoder)


def make_clips(tmp: Path, fan_frames: int) -> dict[str, Path]:
    from avsr_cli.frontends.media import find_ffmpeg

    lrs3 = SHARED / "lrs3_example.mp4"
    if not lrs3.exists():
        sys.exit(f"bench_mouth: {lrs3} not found (shared assets)")
    ff = [find_ffmpeg(), "-nostdin", "-y", "-loglevel", "error", "-i", str(lrs3)]
    clips = {"lrs3 224x224": lrs3, "720p": tmp / "720p.mp4", "lrs3 short": tmp / "short.mp4"}
    clips["720p panning"] = tmp / "720p-panning.mp4"
    # a 1280x720 frame with the face at 540x540, as in a typical recorded talk
    subprocess.run(ff + ["-vf", "scale=540:540,pad=1280:720:370:90", "-an", str(clips["720p"])], check=True)
    # the same face moving across the frame (150 px left and right, 40 px up and down)
    pan = ("color=black:s=1280x720:r=25[bg];[0:v]scale=540:540[face];"
           "[bg][face]overlay=x='370+150*sin(t*1.5)':y='90+40*cos(t)':shortest=1")  # fmt: skip
    subprocess.run(ff + ["-filter_complex", pan, "-an", str(clips["720p panning"])], check=True)
    subprocess.run(ff + ["-frames:v", str(fan_frames), "-an", str(clips["lrs3 short"])], check=True)
    return clips


class AvHubertDlib:
    """AV-HuBERT detect_landmark.py: HOG upsampled once on every frame (its CNN fallback needs weights we do
    not have, and is not reached on these clips), the last face found, 68-point predictor."""

    name = "av_hubert dlib"

    def __init__(self) -> None:
        from avsr_cli.frontends.face_backends import DlibBackend

        self.inner = DlibBackend()

    def detect(self, frame):
        from avsr_cli.frontends.face_backends import Detection, to_gray

        rects = self.inner.detector(to_gray(frame), 1)
        boxes = [np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], float) for r in rects]
        return [Detection(box, 1.0) for box in boxes]

    def landmarks(self, frame, box, gray=None):
        return self.inner.landmarks(frame, box, gray)


def fan_backend(tmp: Path):
    from avsr_cli.errors import CheckpointError
    from avsr_cli.frontends.face_backends import make_backend

    try:
        return make_backend("face-alignment", download=False), "real weights"
    except CheckpointError:
        import torch
        from face_alignment.detection.sfd.net_s3fd import s3fd
        from face_alignment.models import FAN

        torch.manual_seed(0)
        torch.save(FAN(4).state_dict(), tmp / "2DFAN4-11f355bf06.pth.tar")
        torch.save(s3fd().state_dict(), tmp / "s3fd-619a316812.pth")
        return make_backend("face-alignment", weights_dir=tmp, download=False), "random weights: speed only"


@contextlib.contextmanager
def decoder(name: str | None):
    """Decode through `name` ("pyav" or "ffmpeg"; None: avsr's default) inside the block."""
    saved = os.environ.get("AVSR_VIDEO_DECODER")
    if name:
        os.environ["AVSR_VIDEO_DECODER"] = name
    try:
        yield
    finally:
        os.environ.pop("AVSR_VIDEO_DECODER", None)
        if saved is not None:
            os.environ["AVSR_VIDEO_DECODER"] = saved


def decode_only(clip: Path) -> dict:
    """One decoding pass alone (what every row below pays too; a second only when a lost face overflows the
    stream buffer)."""
    from avsr_cli.frontends.media import probe
    from avsr_cli.frontends.mouth import processing_size
    from avsr_cli.frontends.video import iter_video

    info = probe(clip)
    size = processing_size(info.height, info.width, 1280)
    t0 = time.perf_counter()
    frames = sum(1 for _ in iter_video(clip, size=size))
    seconds = time.perf_counter() - t0
    return {"frames": frames, "fps": frames / seconds, "seconds": seconds, "hit_rate": float("nan"),
            "detector_runs": 0, "track_crop_s": 0.0, "second_pass_s": 0.0}  # fmt: skip


def warm_up(backend, clip: Path) -> None:
    """One detection and fit before timing (face-alignment compiles numba code on first use)."""
    from avsr_cli.frontends.video import load_video

    frame = load_video(clip, max_frames=1)[0]
    for d in backend.detect(frame)[:1]:
        backend.landmarks(frame, d.box)


def run(clip: Path, backend, every: int, mean_face: str, rounds: int = 1) -> dict:
    """One mouth_frames pass, timed; with `rounds`, the median of that many by speed (the headline dlib
    rows, where one 6-second pass varies by 10-20 % on a shared machine)."""
    from avsr_cli.frontends.mouth import MouthOptions, mouth_frames

    options = MouthOptions(detect_every=every, mean_face=mean_face, auto_rotate=False)
    timed = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        crops, info = mouth_frames(clip, options, backend)
        timed.append((time.perf_counter() - t0, crops, info))
    seconds, crops, info = sorted(timed, key=lambda t: t[0])[len(timed) // 2]
    return {
        "frames": len(crops),
        "fps": len(crops) / seconds,
        "seconds": seconds,
        "rounds": rounds,
        "hit_rate": info.hit_rate,
        "detector_runs": info.detections,
        "track_crop_s": info.timings["track+crop"],
        "second_pass_s": info.timings["second pass"],
    }


def drift(clip: Path, backend) -> dict:
    """Landmark drift: landmarks tracked between detections (every 10 frames) against per-frame
    detection, beside the noise floor of that comparison, per-frame detection against itself on the same
    frames moved 1 px to the right. Median over frames of the mean point distance, px; "smoothed": after
    the reference's 12-frame window (what places the crop)."""
    import numpy as np

    from avsr_cli.frontends.face import landmark_gap, track
    from avsr_cli.frontends.media import probe
    from avsr_cli.frontends.mouth import processing_size, smooth_landmarks
    from avsr_cli.frontends.video import iter_video

    info = probe(clip)
    size = processing_size(info.height, info.width, 1280)
    every = track(iter_video(clip, size=size), backend, detect_every=1).landmarks
    tracked = track(iter_video(clip, size=size), backend, detect_every=10).landmarks
    moved = (np.roll(f, 1, axis=1) for f in iter_video(clip, size=size))
    floor = track(moved, backend, detect_every=1).landmarks - (1, 0)
    return {
        "tracked_px": landmark_gap(tracked, every),
        "floor_px": landmark_gap(floor, every),
        "tracked_smoothed_px": landmark_gap(smooth_landmarks(tracked), smooth_landmarks(every)),
        "floor_smoothed_px": landmark_gap(smooth_landmarks(floor), smooth_landmarks(every)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "mouth.json")
    parser.add_argument("--fan-frames", type=int, default=10, help="frames of the clip given to FAN (slow)")
    args = parser.parse_args()
    import torch

    from avsr_cli.frontends.face_backends import make_backend

    mean_face = str(SHARED / "20words_mean_face.npy")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips = make_clips(tmp, args.fan_frames)
        dlib = make_backend("dlib")
        plan = [("dlib", dlib, 10), ("dlib", dlib, 1), ("av_hubert dlib", AvHubertDlib(), 1)]
        if importlib.util.find_spec("mediapipe"):
            mesh = make_backend("mediapipe")
            plan += [("mediapipe", mesh, 10), ("mediapipe", mesh, 1)]
        for _, backend, _ in plan:
            warm_up(backend, clips["lrs3 short"])
        for clip in ("lrs3 224x224", "720p", "720p panning"):
            rows.append({"clip": clip, "backend": "decode", "detect_every": 0, **decode_only(clips[clip])})
            with decoder("ffmpeg"):  # the ffmpeg binary through a pipe, as before PyAV: the same frames
                rows.append({"clip": clip, "backend": "decode, ffmpeg pipe", "detect_every": 0,
                             **decode_only(clips[clip])})  # fmt: skip
                rows.append({"clip": clip, "backend": "dlib, ffmpeg pipe", "detect_every": 10,
                             **run(clips[clip], dlib, 10, mean_face, ROUNDS)})  # fmt: skip
            for name, backend, every in plan:
                rounds = ROUNDS if (name, every) == ("dlib", 10) else 1
                rows.append({"clip": clip, "backend": name, "detect_every": every,
                             **run(clips[clip], backend, every, mean_face, rounds)})  # fmt: skip
        if importlib.util.find_spec("face_alignment"):
            fan, note = fan_backend(tmp)
            warm_up(fan, clips["lrs3 short"])
            for every in (10, 1):
                row = run(clips["lrs3 short"], fan, every, mean_face)
                name = f"face-alignment ({note})"
                rows.append({"clip": "lrs3 short", "backend": name, "detect_every": every, **row})
        drifts = [
            {"clip": clip, **drift(clips[clip], dlib)} for clip in ("lrs3 224x224", "720p", "720p panning")
        ]
    from avsr_cli.frontends.video import video_decoder

    print(f"mouth crops, {torch.get_num_threads()} CPU threads (decode + detect + landmarks + align + crop), "
          f"decoded by {video_decoder()} unless a row says otherwise")  # fmt: skip
    print(f"{'clip':<14}{'backend':<42}{'every':>6}{'frames':>8}{'fps':>8}{'hit %':>7}{'detects':>9}")
    for r in rows:
        print(f"{r['clip']:<14}{r['backend']:<42}{r['detect_every']:>6}{r['frames']:>8}{r['fps']:>8.1f}"
              f"{100 * r['hit_rate']:>7.0f}{r['detector_runs']:>9}".replace("nan", "  -"))  # fmt: skip
    print(
        "\nlandmark drift, dlib, px (median per frame): tracked every 10 frames against per-frame detection;"
    )
    print("floor: per-frame detection against itself on the frames moved 1 px; smoothed: the 12-frame window")
    print(f"{'clip':<14}{'tracked':>9}{'floor':>7}{'tracked smoothed':>18}{'floor smoothed':>16}")
    for d in drifts:
        print(f"{d['clip']:<14}{d['tracked_px']:>9.2f}{d['floor_px']:>7.2f}{d['tracked_smoothed_px']:>18.2f}"
              f"{d['floor_smoothed_px']:>16.2f}")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"fps": rows, "drift": drifts}, indent=2) + "\n")


if __name__ == "__main__":
    main()
