"""Mouth stage on real and synthetic faces: crop geometry, bad inputs, model input, the mean-face asset, the
`crop-mouth` command. Contact sheets of the crops land in $AVSR_TEST_ARTIFACTS (default: a pytest tmp dir)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from typer.testing import CliRunner

from avsr_cli.cli import app
from avsr_cli.errors import CheckpointError, MediaError, UsageError
from avsr_cli.frontends.assets import MEAN_FACE, asset_path, load_mean_face
from avsr_cli.frontends.media import aligned_audio, probe
from avsr_cli.frontends.mouth import MouthOptions, mouth_frames, smooth_landmarks
from avsr_cli.frontends.video import load_video
from avsr_cli.modeling.avhubert import video_model_input
from avsr_cli.storage import find_package
from avsr_cli.tasks.crop_mouth import (
    CropFailure,
    CropResult,
    contact_sheet,
    crop_mouth_file,
    crop_mouth_files,
)
from tests.support.facevideos import (
    astronaut,
    black_gap,
    dlib_backend,
    frame_4k,
    noise,
    one_frame,
    rotated,
    talking_still,
    two_faces,
    variable_rate,
)

SHARED_MEAN_FACE = Path(__file__).resolve().parents[2] / "shared" / "assets" / "20words_mean_face.npy"


@pytest.fixture(scope="module")
def backend():
    return dlib_backend()


@pytest.fixture(scope="module")
def options(mean_face) -> MouthOptions:
    return MouthOptions(mean_face=str(mean_face))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("AVSR_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def centre_error(info, truth: np.ndarray | None = None) -> np.ndarray:
    """Distance (frame px) from each crop's centre, mapped back into the frame, to the mouth centre: the
    fitted landmarks' (frames where they were found) or a ground truth (T, 2)."""
    centres = info.crop_centres_in_frame()
    if truth is None:
        return np.linalg.norm(centres - info.landmarks[:, 48:68].mean(1), axis=1)[info.found]
    return np.linalg.norm(centres - truth[: len(centres)], axis=1)


@pytest.fixture(scope="module")
def lrs3_mouth(lrs3_clip, options, backend, artifacts):
    crops, info = mouth_frames(lrs3_clip, options, backend)
    Image.fromarray(contact_sheet(crops)).save(artifacts / "lrs3_crops.png")
    return crops, info


def test_lrs3_crops_are_centred_on_the_mouth(lrs3_mouth, mean_face):
    crops, info = lrs3_mouth
    assert crops.shape == (155, 96, 96, 3) and crops.dtype == np.uint8  # RGB, as auto_avsr saves them
    assert info.hit_rate >= 0.95 and info.rotation == 0 and not info.warnings
    err = centre_error(info)
    assert err.mean() < 2.0 and err.max() < 6.0
    # aligned onto the mean face: every crop centre sits near the mean face's mouth
    mean_mouth = np.load(mean_face)[48:68].mean(0)
    assert np.linalg.norm(info.centres - mean_mouth, axis=1).max() < 12
    # the lips are the darkest band of a mouth crop: darker in the middle rows than above the upper lip
    rows = crops.astype(float).mean(axis=(0, 2, 3))
    assert rows[40:56].min() < rows[:20].mean() - 15


def test_carphone_crops(carphone_clip, options, backend, artifacts):
    crops, info = mouth_frames(carphone_clip, options, backend)
    Image.fromarray(contact_sheet(crops)).save(artifacts / "carphone_crops.png")
    assert crops.shape == (100, 96, 96, 3)  # 4.004 s at 29.97 fps -> 25 fps
    assert info.hit_rate >= 0.9
    err = centre_error(info)
    assert err.mean() < 2.0 and err.max() < 6.0


def test_talking_still_face_with_tts(tmp_path, options, backend, artifacts):
    """A photograph with a synthetic mouth opening to TTS loudness, swaying by up to 8 px: the crops follow
    the true mouth centre and show the opening, frame by frame, and the audio stays aligned."""
    from avsr_cli.frontends.face_backends import make_backend
    from tests.support.speech import available_voices, speech

    image = astronaut()
    if image is None:
        pytest.skip("scikit-image's astronaut.png not found (pip install scikit-image)")
    if not available_voices():
        pytest.skip("no offline TTS voice")
    face = backend.detect(image)
    assert len(face) == 1
    mouth = backend.landmarks(image, face[0].box)[48:68].mean(0)
    audio = speech("the quick brown fox jumps over the lazy dog")
    video = tmp_path / "talking.mp4"
    truth = talking_still(image, mouth, audio, video)
    backends = [backend] + ([make_backend("mediapipe")] if find_package("mediapipe") else [])
    for each in backends:
        crops, info = mouth_frames(video, options, each)
        Image.fromarray(contact_sheet(crops)).save(artifacts / f"talking_{each.name}.png")
        n = len(truth["opening"])
        assert len(crops) == n and info.hit_rate == 1.0
        err = centre_error(info, truth["centre"])
        assert err.mean() < 4.0 and err.max() < 6.0, each.name
        dark = (crops[:, 24:72, 16:80].mean(axis=-1) < 50).sum(axis=(1, 2))  # RGB: the mean brightness
        assert np.corrcoef(dark, truth["opening"])[0, 1] > 0.9, each.name
    wav = aligned_audio(video, n)
    assert len(wav) == n * 640
    k = min(len(wav), len(audio)) - 2000  # AAC adds a little delay; compare the bulk
    assert np.corrcoef(wav[1000:k], audio[1000:k])[0, 1] > 0.8


def test_no_face_is_a_clear_error(tmp_path, options, backend):
    video = noise(tmp_path / "noise.mp4")
    with pytest.raises(MediaError, match=f"no face found in {video}"):
        mouth_frames(video, options, backend)


def test_two_faces_follow_one(lrs3_clip, tmp_path, options, backend):
    crops, info = mouth_frames(two_faces(lrs3_clip, tmp_path / "two.mp4"), options, backend)
    assert len(crops) == 50 and info.max_faces == 2
    assert any("2 faces" in w for w in info.warnings)
    x = info.crop_centres_in_frame()[:, 0]
    assert (x < 224).all() or (x > 224).all()
    assert centre_error(info).max() < 6.0


def test_black_gap_is_interpolated(lrs3_clip, tmp_path, options, backend):
    crops, info = mouth_frames(black_gap(lrs3_clip, tmp_path / "gap.mp4"), options, backend)
    assert len(crops) == 155
    assert np.flatnonzero(~info.found).tolist() == [50, 51, 52, 53, 54]
    assert crops[50:55].mean() < 10 and crops[45:50].mean() > 40  # the frames themselves are black
    # the crop square moves smoothly through the gap
    step = np.linalg.norm(np.diff(info.crop_centres_in_frame()[45:60], axis=0), axis=1)
    assert step.max() < 5


def test_one_decode_unless_a_lost_face_overflows_the_buffer(
    lrs3_clip, tmp_path, options, backend, monkeypatch
):
    """Frames are decoded once and cut as their landmarks become final; a face lost for longer than the
    buffer holds falls back to a second decode. Same crops, landmarks and transforms either way, and the same
    as cutting from the whole track (the way before streaming)."""
    import avsr_cli.frontends.mouth as mouth
    from avsr_cli.frontends.face import interpolate_landmarks, track

    video = black_gap(lrs3_clip, tmp_path / "gap.mp4", first=40, count=30)
    decodes = []
    real_frames = mouth._frames
    monkeypatch.setattr(mouth, "_frames", lambda *a: decodes.append(a) or real_frames(*a))
    streamed, info = mouth_frames(video, options, backend)
    assert len(decodes) == 1
    frame_bytes = 224 * 224 * 3
    monkeypatch.setattr(mouth, "STREAM_BUFFER_BYTES", 20 * frame_bytes)  # the 30-frame gap does not fit
    decodes.clear()
    overflowed, info2 = mouth_frames(video, options, backend)
    assert len(decodes) == 2
    np.testing.assert_array_equal(streamed, overflowed)
    np.testing.assert_array_equal(info.transforms, info2.transforms)
    np.testing.assert_array_equal(info.found, info2.found)
    # the whole-track computation: interpolate, smooth, align, cut
    face = track(real_frames(video, (224, 224), 0), backend, options.detect_every, options.detect_size)
    smoothed = smooth_landmarks(interpolate_landmarks(face.landmarks, face.found))
    np.testing.assert_allclose(info.landmarks, interpolate_landmarks(face.landmarks, face.found), atol=0)
    mean_face = load_mean_face(options.mean_face)
    for t in (0, 39, 45, 69, 80, 154):
        crop, _ = mouth.crop_mouth(
            next(f for i, f in enumerate(real_frames(video, (224, 224), 0)) if i == t),
            mouth.align_transform(smoothed[t], mean_face),
            smoothed[t][mouth.MOUTH],
        )
        np.testing.assert_array_equal(streamed[t], crop)


def test_rotated_pixels_are_turned_upright(lrs3_clip, tmp_path, options, backend):
    video = rotated(lrs3_clip, tmp_path / "sideways.mp4")  # turned 90 degrees clockwise
    crops, info = mouth_frames(video, options, backend)
    assert info.rotation == 90 and any("turned by 90" in w for w in info.warnings)
    assert len(crops) == 25 and info.hit_rate == 1.0 and centre_error(info).max() < 6.0
    with pytest.raises(MediaError, match="no face found"):
        mouth_frames(video, MouthOptions(mean_face=options.mean_face, auto_rotate=False), backend)


def test_rotation_metadata_is_applied(lrs3_clip, tmp_path, options, backend):
    video = rotated(lrs3_clip, tmp_path / "phone.mp4", metadata=True)
    crops, info = mouth_frames(video, options, backend)
    assert info.rotation == 0 and info.hit_rate == 1.0 and len(crops) == 25


def test_one_frame_video_without_audio(lrs3_clip, tmp_path, options, backend):
    video = one_frame(lrs3_clip, tmp_path / "one.mp4")
    crops, info = mouth_frames(video, options, backend)
    assert crops.shape == (1, 96, 96, 3) and info.found.all() and centre_error(info).max() < 3.0
    result = crop_mouth_file(video, tmp_path, options, backend)
    assert result.wav is None and "no audio stream: no .wav written" in result.info.warnings
    assert probe(result.video).n_frames == 1


def test_variable_frame_rate(lrs3_clip, tmp_path, options, backend):
    video = variable_rate(lrs3_clip, tmp_path / "vfr.mp4")
    crops, info = mouth_frames(video, options, backend)
    assert abs(len(crops) - 155) <= 2  # constant 25 fps over the same 6.2 s
    assert info.hit_rate >= 0.95 and centre_error(info).max() < 6.0


def test_4k_frame_is_scaled_down(lrs3_clip, tmp_path, options, backend):
    video = frame_4k(lrs3_clip, tmp_path / "4k.mp4")
    assert (probe(video).width, probe(video).height) == (3840, 2160)
    crops, info = mouth_frames(video, options, backend)
    assert info.frame_size == (720, 1280) and crops.shape == (1, 96, 96, 3)
    assert centre_error(info).max() < 6.0


def test_smoothing_matches_the_reference_loop(lrs3_mouth):
    """auto_avsr video_process.py crop_patch: mean over t-m..t+m with m = min(6, t, T-1-t), re-centred."""
    landmarks = lrs3_mouth[1].landmarks
    expected = []
    for t in range(len(landmarks)):
        m = min(6, t, len(landmarks) - 1 - t)
        window = landmarks[t - m : t + m + 1].mean(axis=0)
        expected.append(window + landmarks[t].mean(axis=0) - window.mean(axis=0))
    np.testing.assert_allclose(smooth_landmarks(landmarks), np.array(expected), atol=1e-9)


def test_video_model_input_is_the_reference_transform(lrs3_mouth):
    """auto_avsr VideoTransform("test") on RGB crops: x / 255, CenterCrop(88), torchvision Grayscale
    (0.2989 R + 0.587 G + 0.114 B, in float), Normalize(0.421, 0.165); computed here independently."""
    crops = lrs3_mouth[0]
    x = video_model_input(crops)
    assert x.shape == (155, 1, 88, 88) and str(x.dtype) == "torch.float32"
    f = crops[:, 4:92, 4:92].astype(np.float32) / np.float32(255.0)  # CenterCrop(88) of 96 starts at 4
    gray = np.float32(0.2989) * f[..., 0] + np.float32(0.587) * f[..., 1] + np.float32(0.114) * f[..., 2]
    expected = (gray - np.float32(0.421)) / np.float32(0.165)
    np.testing.assert_allclose(x[:, 0].numpy(), expected, rtol=0, atol=1e-6)
    # greying before the warp in uint8 (the old way, and OpenCV's 0.299) is measurably different
    early = (np.rint(crops[:, 4:92, 4:92] @ np.array([0.299, 0.587, 0.114])) / 255.0 - 0.421) / 0.165
    assert np.abs(early - expected).max() > 1e-3
    grey = np.rint(gray * 255).astype(np.uint8)  # grey crops are used as they are
    np.testing.assert_allclose(video_model_input(np.pad(grey, ((0, 0), (4, 4), (4, 4))))[:, 0].numpy(),
                               (grey / 255.0 - 0.421) / 0.165, atol=1e-6)  # fmt: skip


def test_aligned_audio_has_640_samples_a_frame(lrs3_clip):
    assert len(aligned_audio(lrs3_clip, 155)) == 155 * 640
    assert len(aligned_audio(lrs3_clip, 200)) == 200 * 640  # zero-padded
    assert not aligned_audio(lrs3_clip, 200)[-640:].any()


# --- the mean-face asset ---


def test_mean_face_from_env_is_checked(mean_face, tmp_path, monkeypatch):
    monkeypatch.setenv("AVSR_MEAN_FACE", str(mean_face))
    assert asset_path(MEAN_FACE) == mean_face
    face = load_mean_face()
    assert face.shape == (68, 2) and face.dtype == np.float64
    wrong = tmp_path / "other.npy"
    np.save(wrong, face + 1)
    monkeypatch.setenv("AVSR_MEAN_FACE", str(wrong))
    with pytest.raises(CheckpointError, match="sha256"):
        asset_path(MEAN_FACE)


@pytest.fixture
def loopback(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_mean_face_ships_in_the_package_and_works_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("AVSR_MEAN_FACE", raising=False)
    monkeypatch.setenv("AVSR_CACHE", str(tmp_path / "empty-cache"))  # nothing cached, no network used
    path = asset_path(MEAN_FACE, download=False)
    assert path == MEAN_FACE.packaged and path.parent.name == "data"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MEAN_FACE.sha256
    assert "Apache License, Version 2.0" in (path.parent / "NOTICE").read_text()
    assert load_mean_face().shape == (68, 2) and not (tmp_path / "empty-cache").exists()
    shared = SHARED_MEAN_FACE
    if shared.exists():  # the reference copy in the shared assets, when there
        assert shared.read_bytes() == path.read_bytes()


def test_mean_face_download_is_verified_and_cached(mean_face, loopback, tmp_path, monkeypatch):
    www, base = loopback
    monkeypatch.delenv("AVSR_MEAN_FACE", raising=False)
    monkeypatch.setenv("AVSR_CACHE", str(tmp_path / "cache"))
    (www / "good.npy").write_bytes(mean_face.read_bytes())
    (www / "bad.npy").write_bytes(mean_face.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="wrong sha256"):
        asset_path(MEAN_FACE, packaged=False, url=f"{base}/bad.npy")
    with pytest.raises(CheckpointError, match="not in .*AVSR_MEAN_FACE"):
        asset_path(MEAN_FACE, download=False, packaged=False)
    path = asset_path(MEAN_FACE, packaged=False, url=f"{base}/good.npy")
    assert path == tmp_path / "cache" / "assets" / "20words_mean_face.npy"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MEAN_FACE.sha256
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no partial files
    (www / "good.npy").unlink()
    assert asset_path(MEAN_FACE, packaged=False, url=f"{base}/good.npy") == path  # from the cache now


def test_mean_face_offline_error_names_url_and_variable(loopback, tmp_path, monkeypatch):
    _, base = loopback
    monkeypatch.delenv("AVSR_MEAN_FACE", raising=False)
    monkeypatch.setenv("AVSR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError) as err:
        asset_path(MEAN_FACE, url=f"{base}/missing.npy", packaged=False)  # 404, as a host offline would
    assert f"{base}/missing.npy" in str(err.value) and "AVSR_MEAN_FACE" in str(err.value)
    assert not (tmp_path / "cache" / "assets" / "20words_mean_face.npy").exists()


# --- the command ---


def test_crop_mouth_command(lrs3_clip, mean_face, backend, tmp_path, monkeypatch):
    monkeypatch.setenv("AVSR_MEAN_FACE", str(mean_face))
    out = tmp_path / "out"
    out.mkdir()
    bad = noise(tmp_path / "noise.mp4")
    files = [str(lrs3_clip), str(bad), str(tmp_path / "missing.mp4")]
    result = CliRunner().invoke(app, ["crop-mouth", *files, "-o", str(out), "--debug-overlay"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "no face found in" in errors[0] and "missing.mp4: no such file" in errors[1]
    assert "2 of 3 file(s) failed" in result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["lrs3_example.wav", "lrs3_example_crops.png", "lrs3_example_mouth.mp4",
                     "lrs3_example_overlay.mp4"]  # fmt: skip
    assert sorted(result.stdout.splitlines()) == [str(out / name) for name in names]  # stdout: every file
    info = probe(out / "lrs3_example_mouth.mp4")
    assert (info.width, info.height, info.video_fps, info.n_frames) == (96, 96, 25.0, 155)
    colour = load_video(out / "lrs3_example_mouth.mp4")
    assert np.abs(colour[..., 0].astype(int) - colour[..., 2]).mean() > 2  # RGB: the channels differ
    result = CliRunner().invoke(app, ["crop-mouth", str(lrs3_clip), "-o", str(tmp_path / "g"), "--gray"])
    grey = load_video(tmp_path / "g" / "lrs3_example_mouth.mp4")
    assert result.exit_code == 0 and np.abs(grey[..., 0].astype(int) - grey[..., 2]).max() <= 2
    assert result.stdout.splitlines() == [
        str(tmp_path / "g" / n) for n in ("lrs3_example_mouth.mp4", "lrs3_example.wav")
    ]
    audio, rate = sf.read(out / "lrs3_example.wav")
    assert rate == 16000 and audio.ndim == 1 and len(audio) == 155 * 640
    overlay = probe(out / "lrs3_example_overlay.mp4")
    assert (overlay.width, overlay.height, overlay.n_frames) == (224, 224, 155)
    assert oct((out / "lrs3_example_mouth.mp4").stat().st_mode & 0o777) != oct(0o600)


def test_crop_mouth_files_checks_first_then_reports_each_file(lrs3_clip, tmp_path, options):
    """The library call behind `avsr crop-mouth`: an unusable output folder is refused by the call itself,
    before any file is read; then one result per file, in order, a failed file not stopping the batch."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="output directory is not writable"):
        crop_mouth_files([lrs3_clip], blocker / "out", options)  # not iterated: raised by the call
    out = tmp_path / "out"
    results = list(crop_mouth_files([tmp_path / "missing.mp4", lrs3_clip], out, options))
    assert [type(r) for r in results] == [CropFailure, CropResult]
    assert results[0].path == tmp_path / "missing.mp4" and "no such file" in str(results[0].error)
    assert results[1].video == out / "lrs3_example_mouth.mp4" and probe(results[1].video).n_frames == 155


def test_crop_mouth_bad_backend_does_nothing(lrs3_clip, tmp_path):
    result = CliRunner().invoke(
        app, ["crop-mouth", str(lrs3_clip), "-o", str(tmp_path), "--face-backend", "hog"]
    )
    assert result.exit_code == 2 and not list(tmp_path.iterdir())


def test_helper_threads_cut_the_same_crops_as_one_thread(lrs3_clip, tmp_path, options, backend, monkeypatch):
    """With 2+ threads the mouths are cut in a helper thread and detections start ahead: same crops,
    transforms and landmarks as on one thread, across a lost face (lost: late detections, held cuts)."""
    import avsr_cli.frontends.face as face
    import avsr_cli.frontends.mouth as mouth

    video = black_gap(lrs3_clip, tmp_path / "gap.mp4", first=40, count=12)
    results = {}
    for threads in (1, 2):
        monkeypatch.setattr(face, "cpu_threads", lambda n=threads: n)
        monkeypatch.setattr(mouth, "cpu_threads", lambda n=threads: n)
        results[threads] = mouth_frames(video, options, backend)
    (one, info1), (two, info2) = results[1], results[2]
    assert len(one) == 155 and np.array_equal(one, two)
    np.testing.assert_array_equal(info1.transforms, info2.transforms)
    np.testing.assert_array_equal(info1.landmarks, info2.landmarks)
    assert info1.detections == info2.detections and not info1.found[40:52].any()
