"""Build the avsr-tiny-en corpus offline: public-domain English text spoken by every offline TTS voice.

Text: Lewis Carroll, "Alice's Adventures in Wonderland" (public domain), the Canterbury-corpus file
`tests/testdata/alice29.txt` inside the brotli source distribution on PyPI (brotli==1.2.1, fetched with
`pip download --no-binary :all:`; sha256 of the text pinned below). Sentences of 3-32 words, quotes and
odd characters removed, sentence case and . , ? ! ' kept.

Split: every 10th sentence is held out (test only). Voices: the piper `joe` voice at three speeds and
espeak-ng accents/variants at three speeds train; hibari `heart` is the held-out voice. Each training
sentence is spoken by `--voices-per-sentence` voices drawn at random; each training clip gets, at random,
additive noise (white or babble-like, 5-30 dB SNR, p=0.4), synthetic reverberation (exponential-decay
impulse response, RT60 0.2-0.8 s, p=0.3) and a gain (-12..0 dB).

Output, in the layout `avsr train` and `avsr evaluate` read (media + same-stem .txt):
    OUT/train/                training clips (augmented)
    OUT/test-heldout-voice/   held-out sentences, hibari heart (the voice never trained on), clean
    OUT/test-seen-voice/      held-out sentences, piper joe, clean
    OUT/recipe.json           the exact recipe (text hash, voices, counts, seed)

    python scripts/make_corpus.py OUT [--max-sentences N] [--voices-per-sentence 2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the offline TTS helpers

from speech import speech  # noqa: E402

from avsr_cli.frontends.media import SAMPLE_RATE  # noqa: E402
from avsr_cli.storage import cache_root  # noqa: E402
from avsr_cli.tasks.noise import add_noise, babble_noise, white_noise  # noqa: E402

TEXT_PACKAGE = "brotli==1.2.1"
TEXT_MEMBER = "brotli-1.2.1/tests/testdata/alice29.txt"
TEXT_SHA256 = "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0"

TRAIN_VOICES = [  # (voice, speed)
    *[("piper:joe", s) for s in (0.85, 1.0, 1.15)],
    *[
        (f"espeak:{v}", s)
        for v in ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us+f3", "en-gb+f4")
        for s in (0.85, 1.0, 1.2)
    ],
]
HELDOUT_VOICE = "hibari:heart"
SEEN_VOICE = "piper:joe"


def fetch_text() -> str:
    """alice29.txt from the brotli sdist, cached under the avsr cache and checked against TEXT_SHA256."""
    cached = cache_root() / "corpus" / "alice29.txt"
    if not cached.exists():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
            subprocess.run([*cmd, "-d", tmp, TEXT_PACKAGE], check=True)
            sdist = next(Path(tmp).glob("brotli-*.tar.gz"))
            with tarfile.open(sdist) as tar:
                data = tar.extractfile(TEXT_MEMBER).read()
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(data)
    data = cached.read_bytes()
    if hashlib.sha256(data).hexdigest() != TEXT_SHA256:
        raise SystemExit(f"{cached}: unexpected content (sha256 mismatch); delete it and run again")
    return data.decode("latin-1")


def sentences(text: str, min_words: int = 3, max_words: int = 32) -> list[str]:
    """Clean spoken-style sentences from the book text (no headings, quotes or odd characters)."""
    body = text[text.index("CHAPTER I") :]
    body = re.sub(r"^\s*CHAPTER [IVXL]+\s*$\n?(.*\n)?", "", body, flags=re.M)  # headings and titles
    body = body.replace("--", ", ").replace("`", "").replace("'", "'")
    body = re.sub(r"[()_*\[\]\"]", " ", body)
    body = re.sub(r"\s+", " ", body)
    out, seen = [], set()
    for raw in re.split(r"(?<=[.!?])'?\s+(?=[A-Z`'])", body):
        s = raw.strip(" '")
        s = re.sub(r"\s*[;:]\s*", ", ", s)
        s = re.sub(r"(^|\s)'|'(\s|$|[,.?!])", r"\1\2", s)  # quote marks, not apostrophes
        s = re.sub(r"\s+([,.?!])", r"\1", s)
        s = re.sub(r"[,\s]+$", "", s)
        s = re.sub(r"([,.?!])[,.?!]+", r"\1", s)
        s = re.sub(r"\s+", " ", s).strip(" ,")
        if not s or not re.fullmatch(r"[A-Za-z][A-Za-z ,.?!'-]*", s):
            continue
        if s.isupper():  # shouting in capitals, e.g. DRINK ME: keep as sentence case
            s = s.capitalize()
        s = re.sub(
            r"\b([A-Z]{2,}(?:'[A-Z]+)?)\b|\b(?<=')([A-Z])\b", lambda m: m.group(0).lower(), s
        )  # VERY -> very
        if s[-1] not in ".?!":
            s += "."
        n = len(s.split())
        if min_words <= n <= max_words and s.lower() not in seen:
            seen.add(s.lower())
            out.append(s[0].upper() + s[1:])
    return out


def reverb(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room response: exponentially decaying noise, RT60 0.2-0.8 s."""
    rt60 = rng.uniform(0.2, 0.8)
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    ir[0] = 1.0
    size = 1 << (len(audio) + n - 1).bit_length()  # FFT convolution (direct is ~1 s per clip)
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(ir / np.sqrt(np.sum(ir**2)), size), size)
    wet = wet[: len(audio)]
    return wet.astype(np.float32)


def augment(audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    info: dict = {}
    if rng.random() < 0.3:
        audio = reverb(audio, rng)
        info["reverb"] = True
    if rng.random() < 0.4:
        kind = "white" if rng.random() < 0.5 else "babble"
        noise = white_noise(len(audio), rng) if kind == "white" else babble_noise(len(audio), rng)
        snr = float(rng.uniform(5, 30))
        audio = add_noise(audio, noise, snr)
        info.update(noise=kind, snr=round(snr, 1))
    gain = 10 ** (-rng.uniform(0, 12) / 20)
    peak = np.abs(audio).max(initial=0.0)
    audio = audio * (0.9 * gain / peak) if peak > 0 else audio
    info["gain_db"] = round(20 * np.log10(gain), 1)
    return audio.astype(np.float32), info


def _write(job: tuple) -> dict:
    path, text, voice, speed, seed = job
    done = path.with_suffix(".json")
    if done.exists():  # written by an earlier, interrupted run
        return json.loads(done.read_text())
    audio = speech(text, voice, speed=speed)
    info = {"split": path.parent.name, "file": path.name, "voice": voice, "speed": speed}
    if seed is not None:
        audio, aug = augment(audio, np.random.default_rng(seed))
        info.update(aug)
    sf.write(path.with_suffix(".wav"), audio, SAMPLE_RATE, subtype="PCM_16")
    path.with_suffix(".txt").write_text(text + "\n")
    info["seconds"] = round(len(audio) / SAMPLE_RATE, 2)
    done.write_text(json.dumps(info))
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--max-sentences", type=int, default=0, help="use the first N sentences (0: all)")
    ap.add_argument("--voices-per-sentence", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    text = sentences(fetch_text())
    if args.max_sentences:
        text = text[: args.max_sentences]
    held = text[9::10]
    train = [s for i, s in enumerate(text) if i % 10 != 9]
    rng = random.Random(args.seed)
    jobs = []
    for split in ("train", "test-heldout-voice", "test-seen-voice"):
        (args.out / split).mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(train):
        for k, (voice, speed) in enumerate(rng.sample(TRAIN_VOICES, args.voices_per_sentence)):
            jobs.append(
                (args.out / "train" / f"s{i:04d}_{k}", s, voice, speed, args.seed * 100003 + i * 7 + k)
            )
    for i, s in enumerate(held):
        jobs.append((args.out / "test-heldout-voice" / f"h{i:04d}", s, HELDOUT_VOICE, 1.0, None))
        jobs.append((args.out / "test-seen-voice" / f"h{i:04d}", s, SEEN_VOICE, 1.0, None))
    with ProcessPoolExecutor(args.jobs) as pool:
        infos = []
        for n, info in enumerate(pool.map(_write, jobs, chunksize=8), 1):
            infos.append(info)
            if n % 200 == 0 or n == len(jobs):
                print(f"{n}/{len(jobs)} clips", file=sys.stderr, flush=True)
    recipe = {
        "text": {"package": TEXT_PACKAGE, "member": TEXT_MEMBER, "sha256": TEXT_SHA256},
        "sentences": {"train": len(train), "held_out": len(held)},
        "train_voices": [f"{v}@{s}" for v, s in TRAIN_VOICES],
        "held_out_voice": HELDOUT_VOICE,
        "voices_per_sentence": args.voices_per_sentence,
        "seed": args.seed,
        "hours": {
            split: round(sum(i["seconds"] for i in infos if i["split"] == split) / 3600, 3)
            for split in ("train", "test-heldout-voice", "test-seen-voice")
        },
        "clips": infos,
    }
    (args.out / "recipe.json").write_text(json.dumps(recipe, indent=1))


if __name__ == "__main__":
    main()
