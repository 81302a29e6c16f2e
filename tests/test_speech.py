"""Offline TTS (tests/support/speech.py): plausible, deterministic 16 kHz speech from every engine here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.support.speech import available_voices, make_clip, synthesize

VOICES = available_voices()
pytestmark = pytest.mark.skipif(
    not VOICES, reason="no offline TTS voice installed (see tests/support/speech.py)"
)
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things.",
]


def active(audio: np.ndarray, rate: int = 16000) -> np.ndarray:
    """Per 20 ms frame: louder than -40 dBFS."""
    frames = audio[: len(audio) // (rate // 50) * (rate // 50)].reshape(-1, rate // 50)
    return np.sqrt((frames**2).mean(1)) > 0.01


@pytest.mark.parametrize("voice", VOICES or ["none"])
def test_synthesize(tmp_path: Path, voice: str) -> None:
    for i, text in enumerate(SENTENCES):
        path = synthesize(text, tmp_path / f"{i}.wav", voice=voice)
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        audio, _ = sf.read(path, dtype="float32")
        words = len(text.split())
        assert words / 5 < len(audio) / 16000 < words / 1.5 + 1  # 1.5 to 5 words per second
        assert 0.5 < np.abs(audio).max() <= 1.0
        assert active(audio).mean() > 0.4  # mostly speech, not silence
    again = synthesize(SENTENCES[1], tmp_path / "again.wav", voice=voice)
    assert again.read_bytes() == (tmp_path / "1.wav").read_bytes()  # deterministic


def test_make_clip(tmp_path: Path) -> None:
    starts = make_clip([(0.5, SENTENCES[0]), (1.0, SENTENCES[1])], tmp_path / "clip.wav", tail=0.3)
    audio, rate = sf.read(tmp_path / "clip.wav", dtype="float32")
    assert rate == 16000 and starts[0] == pytest.approx(0.5, abs=1e-3)
    first_end = starts[1] - 1.0
    assert starts[0] + 1.5 < first_end < starts[0] + 6
    assert len(audio) / rate > starts[1] + 1.5
    on = active(audio)
    frame = lambda t: int(t * 50)  # noqa: E731
    assert not on[: frame(starts[0]) - 1].any() and on[frame(starts[0]) + 1 : frame(starts[0]) + 5].any()
    assert not on[frame(first_end) + 1 : frame(starts[1]) - 1].any()
    assert on[frame(starts[1]) + 1 : frame(starts[1]) + 5].any() and not on[-frame(0.3) + 1 :].any()
