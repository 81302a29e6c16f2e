"""Whisper log-mel features computed by avsr (`LogMel`) equal transformers' WhisperFeatureExtractor's, for
speech and edge lengths, 80 and 128 mel bins, padded to 30 s and trimmed; the built-in model's transcript is
the same with either; and loading its tokenizer and features imports no transformers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from avsr_cli.errors import CheckpointError
from avsr_cli.frontends.features import LogMel, WhisperFrontEnd, mel_filters, normalize_waveform
from tests.support.speech import available_voices, synthesize

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000


@pytest.fixture(scope="module")
def voice_clip(tmp_path_factory) -> np.ndarray:
    if not available_voices():
        pytest.skip("no offline TTS voice")
    path = synthesize(
        "The quick brown fox jumps over the lazy dog.", tmp_path_factory.mktemp("tts") / "s.wav"
    )
    audio, rate = sf.read(path, dtype="float32")
    assert rate == RATE
    return audio


@pytest.fixture(scope="module")
def waves(voice_clip) -> dict[str, np.ndarray]:
    """Speech, and speech cut or repeated to edge lengths: under a hop, exactly 30 s, over 30 s."""
    long = np.tile(voice_clip, 40)
    return {
        "speech": voice_clip,
        "under-a-hop": voice_clip[RATE // 2 : RATE // 2 + 100],
        "30s": long[: 30 * RATE],
        "31s": long[: 31 * RATE],
        "normalized": normalize_waveform(voice_clip),
    }


def extractor_dir(tmp_path: Path, n_mels: int) -> Path:
    from transformers import WhisperFeatureExtractor

    WhisperFeatureExtractor(feature_size=n_mels).save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_equal_transformers(n_mels: int) -> None:
    from transformers.audio_utils import mel_filter_bank

    theirs = mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    )
    np.testing.assert_allclose(mel_filters(n_mels, 400, 16000), theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_features_equal_the_whisper_feature_extractor(n_mels: int, waves, tmp_path: Path) -> None:
    from transformers import WhisperFeatureExtractor

    folder = extractor_dir(tmp_path, n_mels)
    ours, theirs = LogMel.from_dir(folder), WhisperFeatureExtractor.from_pretrained(folder)
    assert ours.n_mels == n_mels
    batch = list(waves.values())
    want = theirs(batch, sampling_rate=RATE, return_tensors="pt").input_features  # padded / cut to 30 s
    got = ours(batch)
    assert got.shape == want.shape == (len(batch), n_mels, 3000)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    for name, wave in waves.items():
        for samples in (8000, 16000, 2 * 160 * 1500):  # the trimmed windows: shorter, as long, longer
            want = theirs(
                wave, sampling_rate=RATE, return_tensors="pt", padding="max_length", max_length=samples
            ).input_features
            got = ours([wave], samples)
            assert got.shape == want.shape == (1, n_mels, samples // 160), name
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f"{name}, {samples} samples")


@pytest.mark.parametrize("window, multiple", [("padded-30s", 1), ("trimmed", 4)])
def test_front_end_equals_the_extractor_path(window: str, multiple: int, waves, tmp_path: Path) -> None:
    """The front end as the built-in model runs it (normalised waveform, bf16 rounding) gives the features
    the reference's transformers extractor gives."""
    from transformers import WhisperFeatureExtractor

    folder = extractor_dir(tmp_path, 80)
    extractor = WhisperFeatureExtractor.from_pretrained(folder)
    clips = [waves["speech"], waves["under-a-hop"], waves["31s"]]
    for dtype in (torch.float32, torch.bfloat16):
        front = WhisperFrontEnd(LogMel.from_dir(folder), window, multiple, input_dtype=dtype)
        got = front(clips)
        inputs = [torch.from_numpy(normalize_waveform(c)).to(dtype).float().numpy() for c in clips]
        if window == "padded-30s":
            want = extractor(inputs, sampling_rate=RATE, return_tensors="pt").input_features
            torch.testing.assert_close(got.input_features, want, rtol=0, atol=1e-5)
            continue
        for feats, wave, frames in zip(got.input_features, inputs, got.n_frames, strict=True):
            samples = 2 * 160 * min(-(-frames // multiple) * multiple, 1500)
            want = extractor(
                wave, sampling_rate=RATE, return_tensors="pt", padding="max_length", max_length=samples
            ).input_features[0]
            torch.testing.assert_close(feats, want, rtol=0, atol=1e-5)


def test_bad_preprocessor_config_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no preprocessor_config.json"):
        LogMel.from_dir(tmp_path)
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({"feature_size": 80, "sampling_rate": 8000}))
    with pytest.raises(CheckpointError, match="sampling_rate 8000") as err:
        LogMel.from_dir(tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        LogMel.from_dir(tmp_path)


class ExtractorLogMel:
    """transformers' WhisperFeatureExtractor behind LogMel's call, as the front end used it before."""

    def __init__(self, folder: Path) -> None:
        from transformers import WhisperFeatureExtractor

        self.extractor = WhisperFeatureExtractor.from_pretrained(folder)

    def __call__(self, waveforms, n_samples=None):
        kwargs = {} if n_samples is None else {"padding": "max_length", "max_length": n_samples}
        return self.extractor(waveforms, sampling_rate=RATE, return_tensors="pt", **kwargs).input_features


def test_built_in_model_transcript_is_unchanged() -> None:
    """examples/heldout.wav through the library: the same transcript with avsr's features as with
    transformers' extractor (and the right one)."""
    from avsr_cli.checkpoints.loading import default_checkpoint
    from avsr_cli.checkpoints.sources import resolve_source
    from avsr_cli.modeling.config import CONFIG_FILE, ModelConfig
    from avsr_cli.tasks.transcribe import Transcriber

    clip = ROOT / "examples" / "heldout.wav"
    transcriber = Transcriber.from_checkpoint()
    ours = transcriber.transcribe(clip).text
    front = transcriber.model.audio_frontend
    assert isinstance(front.log_mel, LogMel)
    encoder = ModelConfig.load(default_checkpoint() / CONFIG_FILE).audio_encoder
    front.log_mel = ExtractorLogMel(
        resolve_source(encoder.source, default_checkpoint(), encoder.revision, False)
    )
    assert transcriber.transcribe(clip).text == ours
    assert ours == (ROOT / "examples" / "heldout.txt").read_text().strip()


def test_tokenizer_and_features_of_the_built_in_model_import_no_transformers() -> None:
    script = textwrap.dedent(
        """
        import sys
        import soundfile as sf
        from avsr_cli.checkpoints.loading import default_checkpoint
        from avsr_cli.checkpoints.sources import resolve_source
        from avsr_cli.frontends.features import LogMel, WhisperFrontEnd
        from avsr_cli.modeling.config import CONFIG_FILE, ModelConfig
        from avsr_cli.modeling.llm import load_tokenizer, token_ids

        ckpt = default_checkpoint()
        config = ModelConfig.load(ckpt / CONFIG_FILE)
        enc, llm = config.audio_encoder, config.llm
        llm_dir = resolve_source(llm.source, ckpt, llm.revision, False)
        tokenizer, base = load_tokenizer(llm_dir, config.special_tokens)
        ids = token_ids(tokenizer, llm, config.special_tokens, base)
        hello = tokenizer("Hello there.", add_special_tokens=False).input_ids + [ids.eos]
        text = tokenizer.batch_decode([hello], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        log_mel = LogMel.from_dir(resolve_source(enc.source, ckpt, enc.revision, False))
        audio, _ = sf.read(sys.argv[1], dtype="float32")
        feats = WhisperFrontEnd(log_mel, enc.window)([audio]).input_features[0]  # (n_mels, frames)
        loaded = sorted(m for m in sys.modules if m.startswith("transformers"))
        print(text[0], feats.shape[0], bool(feats.isfinite().all()), loaded)
        """
    )
    clip = ROOT / "examples" / "heldout.wav"
    p = subprocess.run([sys.executable, "-c", script, str(clip)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "Hello there. 80 True []", p.stdout
