"""A training manifest for `avsr train --data` from the built corpus: clips of one or more splits.

    python -m recipes.avsr_tiny_en.manifest OUT.jsonl [--ids models/avsr-tiny-en/training-clips.txt.gz]
    python -m recipes.avsr_tiny_en.manifest OUT.jsonl --split train:4000 --split train-kokoro

`--split NAME[:N]` (repeatable; default `train`) reads ~/.cache/avsr/corpus/v2/NAME/manifest.jsonl (build.py),
all of its clips or N drawn with `--seed`. `--ids` takes one clip id a line (gzip or plain), looked up in the
splits: the shipped avsr-tiny-en lists the clips it trained on. Writes path, transcript, id per line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

CORPUS = Path.home() / ".cache/avsr/corpus/v2"


def read_ids(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [line.strip() for line in f if line.strip()]


def read_split(corpus: Path, spec: str, rng: random.Random) -> dict[str, dict]:
    """`NAME` or `NAME:N`: the split's clips by id, all or N of them drawn by `rng`."""
    name, _, count = spec.partition(":")
    folder = corpus / name
    if "/" in name or name.startswith(".") or not (folder / "manifest.jsonl").is_file():
        raise SystemExit(f"{folder / 'manifest.jsonl'}: no such split (build it with build.py)")
    clips = {}
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        clips[row["id"]] = {"path": str(folder / row["media"]), "transcript": row["text"], "id": row["id"]}
    if count:
        if not count.isdigit() or int(count) > len(clips):
            raise SystemExit(f"--split {spec}: N must be a whole number up to {len(clips)}")
        keep = rng.sample(sorted(clips), int(count))
        clips = {i: clips[i] for i in sorted(keep)}
    return clips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--ids", type=Path, help="only these clip ids (one a line, .gz or plain)")
    ap.add_argument("--split", action="append", help="NAME or NAME:N (N clips drawn); repeatable")
    ap.add_argument("--seed", type=int, default=0, help="seed for the N clips drawn of a split")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    clips: dict[str, dict] = {}
    for spec in args.split or ["train"]:
        clips.update(read_split(args.corpus, spec, rng))
    ids = read_ids(args.ids) if args.ids else sorted(clips)
    missing = [i for i in ids if i not in clips]
    if missing:
        raise SystemExit(f"{args.ids}: {len(missing)} ids not in the splits read, e.g. {missing[0]}")
    args.out.write_text("".join(json.dumps(clips[i]) + "\n" for i in ids))
    print(f"{len(ids)} clips: {args.out}")


if __name__ == "__main__":
    main()
