"""Noisy copies of a speech folder (`.wav` + same-stem `.txt`), for noise fine-tuning of avsr-tiny-en.

Each clip gets one copy with babble-like or white noise (avsr_cli.tasks.noise, half each) at an SNR drawn from
`--snr` (default 0, 5, 10, 15 dB: the noisy part of the reference's train-time set -5..20 dB), seeded per
clip name, so the copy is reproducible. Writes DST/<stem>_noisy.wav and .txt; `--limit N` copies the first N
clips (sorted), `--keep-clean` also links the clean clips into DST, `--manifest F` writes a JSONL manifest of
the clean clips (at their own paths, so their cached features are reused) and the noisy copies.

    python scripts/noisy_copy.py ~/.cache/avsr/corpus/tiny-en/train ~/.cache/avsr/corpus/tiny-en/train-noisy
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from avsr_cli.tasks.noise import add_noise, babble_noise, white_noise


def noisy_copy(
    src: Path, dst: Path, snrs: list[float], seed: int, limit: int = 0, keep_clean: bool = False
) -> int:
    """Write the noisy copies; returns how many clips were copied."""
    dst.mkdir(parents=True, exist_ok=True)
    wavs = sorted(src.glob("*.wav"))[: limit or None]
    for wav in wavs:
        text = wav.with_suffix(".txt").read_text()
        digest = hashlib.sha256(f"{seed}:{wav.stem}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        audio, sr = sf.read(wav, dtype="float32")
        noise = white_noise(len(audio), rng) if rng.random() < 0.5 else babble_noise(len(audio), rng)
        mixed = add_noise(audio, noise, float(rng.choice(snrs)))
        peak = float(np.abs(mixed).max())
        if peak > 0.99:  # no clipping
            mixed = mixed * (0.99 / peak)
        tmp = dst / f".{wav.stem}_noisy.wav"
        sf.write(tmp, mixed, sr, subtype="PCM_16")
        os.replace(tmp, dst / f"{wav.stem}_noisy.wav")
        (dst / f"{wav.stem}_noisy.txt").write_text(text)
        if keep_clean:
            for suffix in (".wav", ".txt"):
                link = dst / f"{wav.stem}{suffix}"
                if not link.exists():
                    os.link(wav.with_suffix(suffix), link)
    return len(wavs)


def write_manifest(path: Path, folders: list[Path]) -> int:
    """A JSONL manifest (`avsr train --data`) of every `.wav` + `.txt` in `folders`; returns the row count."""
    rows = 0
    with open(path, "w") as f:
        for folder in folders:
            for wav in sorted(folder.glob("*.wav")):
                text = wav.with_suffix(".txt").read_text().strip()
                f.write(
                    json.dumps({"path": str(wav.resolve()), "text": text, "id": f"{folder.name}/{wav.stem}"})
                )
                f.write("\n")
                rows += 1
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--snr", default="0,5,10,15", help="SNRs in dB to draw from (comma list)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--keep-clean", action="store_true", help="also hard-link the clean clips into DST")
    ap.add_argument("--manifest", type=Path, help="write a JSONL manifest of SRC's clips and the copies")
    args = ap.parse_args()
    n = noisy_copy(
        args.src, args.dst, [float(s) for s in args.snr.split(",")], args.seed, args.limit, args.keep_clean
    )
    print(f"{n} noisy copies in {args.dst}")
    if args.manifest:
        print(f"{write_manifest(args.manifest, [args.src, args.dst])} clips in {args.manifest}")


if __name__ == "__main__":
    main()
