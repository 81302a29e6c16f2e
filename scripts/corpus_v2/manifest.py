"""A training manifest for `avsr train --data` from the built corpus: every training clip, or those listed.

    python scripts/corpus_v2/manifest.py OUT.jsonl [--ids models/avsr-tiny-en/training-clips.txt.gz]

`--ids` takes one clip id a line (gzip or plain): the shipped avsr-tiny-en lists the 16,173 clips it trained
on. Reads ~/.cache/avsr/corpus/v2/train/manifest.jsonl (build.py); writes path, transcript, id per line.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

CORPUS = Path.home() / ".cache/avsr/corpus/v2"


def read_ids(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [line.strip() for line in f if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--ids", type=Path, help="only these clip ids (one a line, .gz or plain)")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    args = ap.parse_args()
    train = args.corpus / "train"
    clips = {}
    for line in (train / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        clips[row["id"]] = {"path": str(train / row["media"]), "transcript": row["text"], "id": row["id"]}
    ids = read_ids(args.ids) if args.ids else sorted(clips)
    missing = [i for i in ids if i not in clips]
    if missing:
        where = train / "manifest.jsonl"
        raise SystemExit(f"{args.ids}: {len(missing)} ids not in {where}, e.g. {missing[0]}")
    args.out.write_text("".join(json.dumps(clips[i]) + "\n" for i in ids))
    print(f"{len(ids)} clips: {args.out}")


if __name__ == "__main__":
    main()
