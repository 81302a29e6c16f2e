"""`--mode vsr` / `--mode avsr` end to end with tiny random models: a real face video goes through face
tracking, mouth crops, the native AV-HuBERT encoder, the projector and the LLM; mode choice; errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from avsr_cli.cli import app
from avsr_cli.tasks.transcribe import TranscribeOptions, Transcriber
from tests.support.facevideos import noise
from tests.support.tiny import ffmpeg


@pytest.fixture(autouse=True)
def _mean_face(mean_face, monkeypatch):
    monkeypatch.setenv("AVSR_MEAN_FACE", str(mean_face))


@pytest.fixture(scope="module")
def media(lrs3_clip, tmp_path_factory):
    """The LRS3 clip (face + speech), its video alone, its audio alone, and a video with no face."""
    d = tmp_path_factory.mktemp("media")
    ffmpeg("-i", lrs3_clip, "-vn", d / "speech.wav")
    ffmpeg("-i", lrs3_clip, "-an", "-c:v", "copy", d / "silent.mp4")
    return {
        "av": lrs3_clip,
        "video": d / "silent.mp4",
        "audio": d / "speech.wav",
        "noface": noise(d / "noface.mp4"),
    }


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_auto_mode_follows_the_streams(av_ckpt, media):
    t = Transcriber.from_checkpoint(av_ckpt)
    results = list(t.transcribe_many([media["av"], media["video"], media["audio"]], TranscribeOptions()))
    assert [r.mode for r in results] == ["avsr", "vsr", "asr"]
    assert results[1].duration == pytest.approx(6.2, abs=0.1)  # 155 frames at 25 fps
    assert results[0].timings["video_encoder"] > 0 and results[0].timings["encoder"] > 0
    assert "video_encoder" in results[1].timings and "encoder" not in results[1].timings


def test_vsr_batch_equals_one_by_one(av_ckpt, media, tmp_path):
    ffmpeg("-i", media["video"], "-t", "3", "-c:v", "libx264", tmp_path / "short.mp4")  # another length
    t = Transcriber.from_checkpoint(av_ckpt)
    files = [media["video"], tmp_path / "short.mp4"]
    opts = TranscribeOptions(mode="vsr")
    alone = [t.transcribe(f, opts).text for f in files]
    batched = [r.text for r in t.transcribe_many(files, TranscribeOptions(mode="vsr", batch_size=2))]
    assert batched == alone


def test_long_silent_video_gets_fixed_windows_over_the_face(av_ckpt, media):
    r = run("transcribe", media["video"], "-c", av_ckpt, "--mode", "vsr", "--max-chunk", "2", "-f", "json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    spans = [(s["start"], s["end"]) for s in data["segments"]]
    assert data["mode"] == "vsr"
    if spans:  # a random model may write nothing for a window; the windows themselves are what we check
        assert all(e - s == pytest.approx(2.0) for s, e in spans)
        assert spans[-1][1] <= 6.2 + 1e-6


def test_missing_stream_and_no_face_are_clear_errors(av_ckpt, media, tmp_path):
    r = run("transcribe", media["audio"], media["video"], "-c", av_ckpt, "--mode", "avsr")
    assert r.exit_code == 1
    assert f"{media['audio']}: mode avsr needs a video stream" in r.stderr
    assert f"{media['video']}: mode avsr needs an audio stream" in r.stderr
    r = run("transcribe", media["noface"], "-c", av_ckpt, "--mode", "vsr")
    assert r.exit_code == 1 and "no face found in" in r.stderr and "Traceback" not in r.stderr
    r = run("transcribe", media["video"], "-c", av_ckpt, "--mode", "vsr", "--video-rate", "3")
    assert r.exit_code == 2 and "3" in r.stderr


def test_audio_only_checkpoint_refuses_vsr(tiny_ckpt, media):
    r = run("transcribe", media["video"], "-c", tiny_ckpt)
    assert r.exit_code == 1 and "has no audio stream, and checkpoint 'tiny-test' reads only asr" in r.stderr
    r = run("transcribe", media["video"], "-c", tiny_ckpt, "--mode", "vsr")
    assert r.exit_code == 2 and "reads only asr, not vsr" in r.stderr


def test_evaluate_video_modes_with_occlusion_and_crop_cache(av_ckpt, media, tmp_path):
    from avsr_cli.tasks.datasets import Item
    from avsr_cli.tasks.evaluate import EvaluateOptions, prepare_item

    data = tmp_path / "data"
    data.mkdir()
    (data / "talk.mp4").write_bytes(media["av"].read_bytes())
    (data / "talk.txt").write_text("it turned out that we were doing a lot of low level drug cases\n")
    cache = tmp_path / "mouth"
    args = ["evaluate", data, "-c", av_ckpt, "--mode", "vsr", "--mode", "avsr", "--snr", "5"]
    args += ["--occlusion", "gaussian_blur", "--level", "3", "--mouth-cache", cache, "--json", "-q"]
    r = run(*args)
    assert r.exit_code == 0, r.stderr
    conditions = [(c["mode"], c["snr"], c["occlusion"]) for c in json.loads(r.stdout)["conditions"]]
    assert conditions == [
        ("vsr", "clean", "none"),
        ("vsr", "clean", "gaussian_blur:3"),
        ("avsr", "clean", "none"),
        ("avsr", "clean", "gaussian_blur:3"),
        ("avsr", "5", "none"),
        ("avsr", "5", "gaussian_blur:3"),
    ]
    entries = list(cache.iterdir())
    assert len(entries) == 1  # one crop set serves both modes and all six conditions
    mtime = entries[0].stat().st_mtime_ns
    item = Item("talk", data / "talk.mp4", "x")
    options = EvaluateOptions(occlusion="gaussian_blur", transcribe=TranscribeOptions(mouth_cache=str(cache)))
    clean = prepare_item(item, "vsr", float("inf"), "none", options)
    blurred = prepare_item(item, "vsr", float("inf"), "gaussian_blur:3", options)
    assert entries[0].stat().st_mtime_ns == mtime  # served from the cache
    assert clean.video.shape == blurred.video.shape == (155, 96, 96, 3)
    assert blurred.video.std() < clean.video.std()  # blur smooths the crops
    r = run("evaluate", data, "-c", av_ckpt, "--mode", "vsr", "--occlusion", "fog", "-q")
    assert r.exit_code == 2 and "unknown occlusion 'fog'" in r.stderr


def test_export_subtitles_of_a_silent_video(av_ckpt, media, tmp_path):
    import srt

    r = run(
        "export-subtitles",
        media["video"],
        "-c",
        av_ckpt,
        "--max-chunk",
        "3",
        "-o",
        tmp_path,
        "-f",
        "srt",
        "-f",
        "json",
    )
    assert r.exit_code == 0, r.stderr
    segments = json.loads((tmp_path / "silent.json").read_text())["segments"]
    cues = list(srt.parse((tmp_path / "silent.srt").read_text()))
    assert all(0 <= c.start.total_seconds() < c.end.total_seconds() <= 6.2 + 1e-6 for c in cues)
    assert all(s["end"] - s["start"] == pytest.approx(3.0) for s in segments)  # fixed windows over the face
