"""The recipe's manifest.py: the training manifest `avsr train --data` reads, from the built corpus."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def corpus(root: Path) -> Path:
    """Two splits as build.py writes them: <split>/manifest.jsonl rows with media, text, id."""
    for split, count in (("train", 20), ("train-kokoro", 5)):
        folder = root / split
        folder.mkdir(parents=True)
        rows = [
            {"media": f"{split}-{i}.wav", "text": f"sentence {i}", "id": f"{split}-{i}"} for i in range(count)
        ]
        (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def run(root: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "recipes.avsr_tiny_en.manifest", str(out), "--corpus", str(root), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT)


def manifest(root: Path, out: Path, *args: str) -> list[dict]:
    done = run(root, out, *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_splits_and_drawn_subsets(tmp_path):
    root = corpus(tmp_path / "c")
    plain = manifest(root, tmp_path / "a.jsonl")
    assert [r["id"] for r in plain] == sorted(f"train-{i}" for i in range(20))
    assert plain[0]["path"] == str(root / "train" / "train-0.wav")
    assert plain[0]["transcript"] == "sentence 0"

    mix = ("--split", "train-kokoro", "--split", "train:5")
    mixed = manifest(root, tmp_path / "b.jsonl", *mix)
    ids = [r["id"] for r in mixed]
    assert len(ids) == len(set(ids)) == 10
    assert sum(i.startswith("train-kokoro-") for i in ids) == 5
    # The drawn subset is seeded: the same seed gives the same clips, another seed others.
    again = manifest(root, tmp_path / "c.jsonl", *mix)
    other = manifest(root, tmp_path / "d.jsonl", *mix, "--seed", "1")
    assert again == mixed
    assert other != mixed


def test_ids_are_looked_up_in_every_split_read(tmp_path):
    root = corpus(tmp_path / "c")
    ids = tmp_path / "ids.txt.gz"
    with gzip.open(ids, "wt") as f:
        f.write("train-kokoro-3\ntrain-7\n")
    both = ("--split", "train", "--split", "train-kokoro")
    rows = manifest(root, tmp_path / "a.jsonl", *both, "--ids", str(ids))
    assert [r["id"] for r in rows] == ["train-kokoro-3", "train-7"]
    missing = run(root, tmp_path / "b.jsonl", "--ids", str(ids))
    assert missing.returncode != 0 and "1 ids not in the splits read" in missing.stderr


def test_bad_split_names_are_one_line_errors(tmp_path):
    root = corpus(tmp_path / "c")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "manifest.jsonl").write_text("")
    for spec, words in (("../outside", "no such split"), ("nope", "no such split"), ("train:99", "up to 20")):
        done = run(root, tmp_path / "o.jsonl", "--split", spec)
        assert done.returncode != 0 and words in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "o.jsonl").exists()
