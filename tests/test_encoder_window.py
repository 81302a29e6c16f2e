"""Whisper encoder windows: `padded-30s` (the reference: every clip padded to 30 s) and `trimmed` (each clip
padded only to a multiple of the compression rate), in the checkpoint config and through the encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avsr_cli.checkpoints.loading import build_model, load_checkpoint, save_checkpoint
from avsr_cli.errors import CheckpointError
from avsr_cli.frontends.features import LogMel, WhisperFrontEnd, encoder_frames
from avsr_cli.modeling.config import EncoderConfig, ModelConfig
from avsr_cli.modeling.encoders import WhisperAudioEncoder
from tests.support.tiny import tiny_config


@pytest.fixture(scope="module")
def encoder(tiny_dirs):
    return WhisperAudioEncoder.from_dir(tiny_dirs[0]), LogMel.from_dir(tiny_dirs[0])


def waves(*seconds: float) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]


@pytest.mark.parametrize("window", ["padded-30s", "trimmed"])
def test_window_round_trips_through_the_checkpoint(tiny_dirs, tmp_path, window):
    cfg = tiny_config(*tiny_dirs)
    cfg.audio_encoder.window = window
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(cfg), tmp_path / "c")
    assert json.loads((ckpt / "config.json").read_text())["audio_encoder"]["window"] == window
    model = load_checkpoint(ckpt, device="cpu")
    assert model.config.audio_encoder.window == window and model.audio_frontend.window == window


def test_configs_without_a_window_are_padded_30s_and_unknown_windows_refused():
    data = ModelConfig(name="x", audio_encoder=EncoderConfig(source="s", dim=8)).to_dict()
    del data["audio_encoder"]["window"]  # a checkpoint written before the field, or an imported one
    assert ModelConfig.from_dict(data).audio_encoder.window == "padded-30s"
    data["audio_encoder"]["window"] = "15s"
    with pytest.raises(CheckpointError, match="unknown encoder window '15s'"):
        ModelConfig.from_dict(data)


def test_imported_reference_checkpoints_keep_the_reference_window():
    from avsr_cli.checkpoints.importer import ImportSpec

    assert ImportSpec.__dataclass_fields__.keys().isdisjoint({"window", "encoder_window"})
    assert EncoderConfig().window == "padded-30s"  # what import_reference writes (it sets no window)


def test_trimmed_forward_equals_the_stock_encoder_on_a_full_window(encoder):
    enc, log_mel = encoder
    (wave,) = waves(30)
    padded = WhisperFrontEnd(log_mel)([wave])
    trimmed = WhisperFrontEnd(log_mel, "trimmed", 4)([wave])
    assert torch.equal(padded.input_features[0], trimmed.input_features[0])
    ours = enc(trimmed.input_features, trimmed.n_frames)[0]
    stock = enc(padded.input_features, padded.n_frames)[0]
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-6)


def test_trimmed_frames_cover_the_clip_and_do_not_depend_on_the_batch(encoder):
    enc, log_mel = encoder
    front = WhisperFrontEnd(log_mel, "trimmed", 4)
    clips = waves(1.03, 2.5, 1.03, 0.4)
    feats = front(clips)
    for wave, f in zip(clips, feats.input_features, strict=True):
        k = encoder_frames(len(wave))
        assert f.shape[-1] == 2 * (-(-k // 4) * 4)  # just the clip, rounded up to the rate
    together = enc(feats.input_features, feats.n_frames)
    for i, wave in enumerate(clips):
        alone = front([wave])
        torch.testing.assert_close(
            together[i], enc(alone.input_features, alone.n_frames)[0], rtol=0, atol=1e-6
        )
        assert together[i].shape[0] == encoder_frames(len(wave))


def test_encoder_weights_come_from_the_file_and_a_missing_one_is_named(tiny_dirs, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from avsr_cli.modeling.encoders import safetensors_files

    (weights,) = safetensors_files(tiny_dirs[0])
    saved = load_file(weights)
    encoder = WhisperAudioEncoder.from_dir(tiny_dirs[0]).encoder
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, saved[f"model.encoder.{name}"]), name
    broken = tmp_path / "whisper"
    shutil.copytree(tiny_dirs[0], broken)
    kept = {k: v for k, v in saved.items() if k != "model.encoder.layers.0.fc1.weight"}
    save_file(kept, broken / weights.name)
    with pytest.raises(CheckpointError, match=r"missing: layers\.0\.fc1\.weight"):
        WhisperAudioEncoder.from_dir(broken)
