"""`avsr train --mode vsr / avsr / asr,vsr,avsr` with tiny random models on real face video.

Clips cut from the LRS3 clip go through face tracking, mouth crops (cached), the native AV-HuBERT (converted
from a fairseq .pt), the projectors and the LLM; multi-task training (Omni-AVSR); fine-tuning a checkpoint
whose parts live in its own folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from avsr_cli.errors import UsageError
from avsr_cli.modeling.config import CompressionConfig, ModelConfig
from avsr_cli.tasks.training.options import TrainOptions, TrainSetup
from avsr_cli.tasks.training.run import train
from avsr_cli.tasks.transcribe import TranscribeOptions, Transcriber
from tests.support.tiny import ffmpeg, tiny_config
from tests.test_avhubert import fairseq_checkpoint, fairseq_state, model_cfg

TEXTS = ["alpha one", "bravo two two", "charlie"]


@pytest.fixture(autouse=True)
def _env(mean_face, tmp_path, monkeypatch):
    monkeypatch.setenv("AVSR_MEAN_FACE", str(mean_face))
    monkeypatch.setenv("AVSR_CACHE", str(tmp_path / "avsr-cache"))


@pytest.fixture(scope="module")
def clips(lrs3_clip, tmp_path_factory):
    """Three 1-1.6 s pieces of the LRS3 clip (face + speech) with made-up transcripts (same-stem .txt)."""
    d = tmp_path_factory.mktemp("avdata")
    for i, text in enumerate(TEXTS):
        start, length = 0.2 + 1.7 * i, 1.0 + 0.3 * i
        ffmpeg(
            "-ss", str(start), "-i", lrs3_clip, "-t", str(length), "-r", "25", "-ar", "16000", d / f"v{i}.mp4"
        )
        (d / f"v{i}.txt").write_text(text + "\n")
    return d


@pytest.fixture(scope="module")
def av_base(tiny_dirs, tmp_path_factory):
    """(config .json of a tiny base with an LLM that fits a few transcripts fast, fairseq AV-HuBERT .pt)."""
    from tests.support.tiny import make_llm

    d = tmp_path_factory.mktemp("avbase")
    cfg = tiny_config(tiny_dirs[0], make_llm(d / "llm", init_range=0.5))
    cfg.compression = CompressionConfig(mode="stack", audio_rates=[4])
    cfg.save(d / "base.json")
    torch.save(fairseq_checkpoint(fairseq_state(), model_cfg()), d / "avhubert.pt")
    return d / "base.json", d / "avhubert.pt"


def _log(ck):
    return [json.loads(line) for line in (ck / "train_log.jsonl").read_text().splitlines()]


def test_vsr_training_learns_the_clips_and_caches_crops_and_frames(clips, av_base, tmp_path):
    base, avhubert_pt = av_base
    options = TrainOptions(mode="vsr", max_steps=150, lr=1e-2, max_batch=3, video_rates=[2])
    cache = tmp_path / "features"
    result = train(
        TrainSetup(
            clips,
            tmp_path / "ck",
            options,
            base=str(base),
            video_encoder=str(avhubert_pt),
            feature_cache=cache,
        )
    )
    assert result.steps == 150 and not result.failed
    assert np.mean(result.losses[-5:]) < 0.2 * np.mean(result.losses[:5]), result.losses[::5]
    mouths = tmp_path / "avsr-cache" / "mouth"  # shared with `avsr evaluate`
    assert len(list(mouths.glob("*.npz"))) == 3  # one mouth-crop file per clip
    assert len(list(cache.glob("video-*.safetensors"))) == 3 and not list(cache.glob("audio-*"))
    # the fairseq .pt was converted once into the avsr cache and the checkpoint names the converted folder
    config = ModelConfig.load(tmp_path / "ck" / "config.json")
    assert config.modes == ["vsr"] and config.compression.video_rates == [2]
    assert "avhubert" in config.video_encoder.source and config.video_encoder.dim == 32
    t = Transcriber.from_checkpoint(tmp_path / "ck")
    texts = [r.text for r in t.transcribe_many(sorted(clips.glob("*.mp4")), TranscribeOptions(mode="vsr"))]
    assert sum(h == ref for h, ref in zip(texts, TEXTS, strict=True)) >= 2, texts


def test_multitask_training_trains_every_mode_from_one_batch(clips, av_base, tmp_path):
    base, avhubert_pt = av_base
    options = TrainOptions(
        mode="asr,vsr,avsr",
        task_weights=[1, 1.5, 1],
        max_steps=80,
        lr=1e-2,
        max_batch=3,
        video_rates=[2],
        val_every=80,
    )
    cache = tmp_path / "features"
    result = train(
        TrainSetup(
            clips,
            tmp_path / "mt",
            options,
            base=str(base),
            video_encoder=str(avhubert_pt),
            feature_cache=cache,
            val_data=clips,
        )
    )
    log = _log(tmp_path / "mt")
    assert all(set(row["mode_losses"]) == {"asr", "vsr", "avsr"} for row in log)
    for mode in ("asr", "vsr", "avsr"):
        first = np.mean([row["mode_losses"][mode] for row in log[:5]])
        last = np.mean([row["mode_losses"][mode] for row in log[-5:]])
        assert last < 0.3 * first, (mode, first, last)
    # the step loss is sum(w_i * loss_i) / 3
    row = log[0]
    expected = (row["mode_losses"]["asr"] + 1.5 * row["mode_losses"]["vsr"] + row["mode_losses"]["avsr"]) / 3
    assert row["loss"] == pytest.approx(expected, rel=1e-5)
    assert set(result.validations[-1]["modes"]) == {"asr", "vsr", "avsr"}
    # avsr audio is cut or padded to 640 samples per video frame: twice as many Whisper frames as video frames
    from safetensors.torch import load_file

    video = sorted(load_file(str(p))["frames"].shape[0] for p in cache.glob("video-*.safetensors"))
    audio = sorted(load_file(str(p))["frames"].shape[0] for p in cache.glob("audio-*.safetensors"))
    assert audio == [2 * n for n in video] and len(video) == 3
    assert ModelConfig.load(tmp_path / "mt" / "config.json").modes == ["asr", "vsr", "avsr"]


def test_fine_tuning_a_self_contained_checkpoint_elsewhere(clips, av_base, tmp_path):
    """A checkpoint whose video encoder lives inside its own folder (as imported ones do) is fine-tuned into
    another folder: the new checkpoint names those parts by absolute path, so it loads from where it is."""
    base, avhubert_pt = av_base
    options = TrainOptions(mode="avsr", max_steps=4, lr=1e-2, max_batch=3, video_rates=[2])
    cache = tmp_path / "features"
    first = tmp_path / "first"
    train(
        TrainSetup(clips, first, options, base=str(base), video_encoder=str(avhubert_pt), feature_cache=cache)
    )
    config = ModelConfig.load(first / "config.json")
    shutil.copytree(config.video_encoder.source, first / "avhubert")
    config.video_encoder.source = "avhubert"  # relative to the checkpoint folder
    config.save(first / "config.json")
    tuned = tmp_path / "runs" / "tuned"
    result = train(TrainSetup(clips, tuned, options, checkpoint=str(first), feature_cache=cache))
    assert result.steps == 4
    assert ModelConfig.load(tuned / "config.json").video_encoder.source == str((first / "avhubert").resolve())
    t = Transcriber.from_checkpoint(tuned)
    assert isinstance(t.transcribe(clips / "v0.mp4", TranscribeOptions(mode="avsr")).text, str)


def test_lip_training_errors_are_clear(clips, av_base, tmp_path):
    base, _ = av_base
    with pytest.raises(UsageError, match="needs a video encoder.*--video-encoder"):
        train(TrainSetup(clips, tmp_path / "x", TrainOptions(mode="vsr", max_steps=1), base=str(base)))
    with pytest.raises(UsageError, match="unknown mode 'asr,lips'"):
        train(TrainSetup(clips, tmp_path / "x", TrainOptions(mode="asr,lips"), base=str(base)))
    with pytest.raises(UsageError, match="2 task weights for 3 modes"):
        train(
            TrainSetup(
                clips, tmp_path / "x", TrainOptions(mode="asr,vsr,avsr", task_weights=[1, 2]), base=str(base)
            )
        )


def test_cli_trains_vsr_and_rejects_bad_lip_options(clips, av_base, tmp_path):
    from typer.testing import CliRunner

    from avsr_cli.cli import app
    from tests.support.facevideos import noise

    base, avhubert_pt = av_base
    data = tmp_path / "data"
    shutil.copytree(clips, data)
    noise(data / "noface.mp4")  # no face in it: recorded as skipped, the run goes on
    (data / "noface.txt").write_text("nothing\n")
    args = ["train", "--data", data, "-o", tmp_path / "ck", "--base", base, "--video-encoder", avhubert_pt]
    args += ["--feature-cache", tmp_path / "f", "--max-steps", "2", "--video-rates", "2,3"]
    r = CliRunner().invoke(app, [str(a) for a in [*args, "--mode", "vsr", "--face-backend", "nope"]])
    assert r.exit_code == 2 and "Invalid value for '--face-backend'" in r.output and "'nope'" in r.output
    r = CliRunner().invoke(app, [str(a) for a in [*args, "--mode", "vsr", "--task-weights", "1,x"]])
    assert r.exit_code == 2 and "--task-weights 1,x: expected a list of numbers" in r.output
    r = CliRunner().invoke(app, [str(a) for a in [*args, "--mode", "vsr"]])
    assert r.exit_code == 0, r.output
    assert "trained 2 steps" in r.output
    assert "skipped: noface: no face found in" in r.output
    assert ModelConfig.load(tmp_path / "ck" / "config.json").compression.video_rates == [2, 3]
