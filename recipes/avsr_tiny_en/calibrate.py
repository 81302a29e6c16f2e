"""The `low_confidence` threshold a checkpoint's card sets, from its held-out clips' avg_logprob.

    python -m recipes.avsr_tiny_en.calibrate EVAL_DIR [--out calibration.json] [--write CHECKPOINT]

EVAL_DIR is a ship_eval.py output folder: its `avsr-heldout-*` reports (`avsr evaluate` records each clip's
avg_logprob). Each held-out clip is one segment. A segment is *wrong* at 50 % WER or more and *exact* at 0 %.
The threshold is the highest one that flags at most MAX_EXACT_FLAGGED of the exact segments: picked on half
the clips (by a stable hash of their id) and reported on the other half, beside faster-whisper's -1.0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from avsr_cli.tasks.scoring import score

# the card's rule: flag at most 10 % of exact segments, and as many wrong ones as that allows
MAX_EXACT_FLAGGED = 0.10
WRONG_WER = 0.5
CLOSE_WER = 0.2  # reported too: segments with a word or two wrong, which a useful flag mostly spares
WHISPER_DEFAULT = -1.0  # faster-whisper's log_prob_threshold, avsr's default without a card value


def segments(eval_dir: Path) -> list[dict]:
    """Every held-out clip as {id, set, avg_logprob, wer}."""
    out = []
    for results in sorted(eval_dir.glob("avsr-heldout-*/results.jsonl")):
        rows = [json.loads(line) for line in results.read_text().splitlines()]
        rows = [r for r in rows if r.get("hyp") is not None and r.get("avg_logprob") is not None]
        scored = score([(r["ref"], r["hyp"]) for r in rows]).rows
        for r, s in zip(rows, scored, strict=True):
            wer = s.errors / max(s.ref_words, 1)
            out.append(
                {"id": r["id"], "set": results.parent.name, "avg_logprob": r["avg_logprob"], "wer": wer}
            )
    return out


def half(clip_id: str) -> int:
    return hashlib.sha256(clip_id.encode()).digest()[0] % 2


def rates(rows: list[dict], threshold: float) -> dict:
    """Shares of wrong and of exact segments flagged (avg_logprob below `threshold`)."""
    wrong = [r for r in rows if r["wer"] >= WRONG_WER]
    exact = [r for r in rows if r["wer"] == 0]
    flagged = lambda group: sum(r["avg_logprob"] < threshold for r in group) / max(len(group), 1)  # noqa: E731
    close = [r for r in rows if 0 < r["wer"] < CLOSE_WER]
    return {
        "wrong_flagged": round(flagged(wrong), 3),
        "exact_flagged": round(flagged(exact), 3),
        "close_flagged": round(flagged(close), 3),
        "all_flagged": round(flagged(rows), 3),
        "wrong": len(wrong),
        "exact": len(exact),
        "close": len(close),
        "segments": len(rows),
    }


def pick(rows: list[dict]) -> float:
    """The highest threshold (midway between two clips' scores) that flags at most MAX_EXACT_FLAGGED of the
    exact segments."""
    scores = sorted({r["avg_logprob"] for r in rows})
    cuts = [(a + b) / 2 for a, b in zip(scores, scores[1:], strict=False)] + [scores[-1] + 1e-3]
    allowed = [c for c in cuts if rates(rows, c)["exact_flagged"] <= MAX_EXACT_FLAGGED]
    return round(max(allowed, default=scores[0] - 1e-3), 2)


def calibration(eval_dir: Path) -> dict:
    """The threshold picked on half of `eval_dir`'s held-out clips, with the rates it gives."""
    rows = segments(eval_dir)
    if not rows:
        raise SystemExit(f"{eval_dir}: no avsr-heldout-*/results.jsonl with avg_logprob")
    fit = [r for r in rows if half(r["id"]) == 0]
    check = [r for r in rows if half(r["id"]) == 1]
    threshold = pick(fit)
    return {
        "threshold": threshold,
        "picked_on": rates(fit, threshold),
        "reported_on": rates(check, threshold),
        "all": rates(rows, threshold),
        "whisper_default": {"threshold": WHISPER_DEFAULT, **rates(rows, WHISPER_DEFAULT)},
        "sets": sorted({r["set"] for r in rows}),
    }


def set_threshold(checkpoint: Path, threshold: float) -> None:
    """Write `threshold` into the checkpoint's config.json (decoding.logprob_threshold)."""
    config = json.loads((checkpoint / "config.json").read_text())
    config["decoding"]["logprob_threshold"] = threshold
    (checkpoint / "config.json").write_text(json.dumps(config, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--write", type=Path, metavar="CHECKPOINT", help="set the threshold in its config.json")
    args = ap.parse_args()
    report = calibration(args.eval_dir)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    if args.write:
        set_threshold(args.write, report["threshold"])
    print(text)


if __name__ == "__main__":
    main()
