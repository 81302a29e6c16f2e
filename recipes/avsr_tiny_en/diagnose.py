"""Diagnostics of a v2 checkpoint (default the shipped avsr-tiny-en) on a built slice of the corpus.

    python -m recipes.avsr_tiny_en.diagnose prior    [--sentences 200]   # 5: text prior, with/without LoRA
    python -m recipes.avsr_tiny_en.diagnose census   [--clips 600]       # 4: Whisper base on training clips
    python -m recipes.avsr_tiny_en.diagnose grid     [--per-cell 40]     # 1: voice x text, avsr vs Whisper
    python -m recipes.avsr_tiny_en.diagnose features --split train --window trimmed [--limit N]
    python -m recipes.avsr_tiny_en.diagnose probe    --variant mlp4 [--window trimmed] [--epochs 8]  # 2, 3
    python -m recipes.avsr_tiny_en.diagnose drift    [--clips 30]        # 3: window -> frames moved
    python -m recipes.avsr_tiny_en.diagnose report   [--md docs/model-diagnostics.md]

Every step writes `<step>.json` under --work (default ~/.cache/avsr/corpus/v2/diagnostics); `report` gathers
them into one JSON beside a Markdown table. The corpus slice comes from build.py (splits `train`, `val`,
`test-heldout-source`); `grid` builds its own clean clips with build.py's clip writer.

- prior: mean NLL per token (transcript tokens + EOS) of held-out and training sentences under the
  checkpoint's LLM, with the LoRA on and off; "prompted" is the sequence avsr trains on with an empty audio
  block (BOS, <audio></audio>, the prompt, the text), "plain" is BOS + text.
- census: Whisper base (--beams, default 4 as ship_eval.py) per training clip, by voice family, noise SNR
  band, codec and reverb; the share of clips it gets more than half wrong.
- grid: {training voice, held-out voice} x {held-out sentences of the training sources (val), held-out
  source (fortunes)}, clean clips, the checkpoint (its decoding defaults, greedy) beside Whisper base.
- features/probe: a character CTC probe (a-z, space, apostrophe, blank) on the frozen Whisper encoder's
  frames, no LLM. Windows: `trimmed` (as avsr-tiny-en: the clip's own frames), `padded-30s` (Whisper's
  window, cut to the clip's frames after the encoder), `padded-10s`. Variants: `mlp4` (stack 4 -> 1024 ->
  576, the shipped projector's shape, then a linear read-out of 4 character slots per token), `mlp2` (the
  same at stack 2, 2 slots), `tf2` (stack 2 -> 256, 2 transformer encoder layers, 2 slots). Trained on
  `train`, the epoch with the best `val` WER kept, scored (greedy CTC) on `test-heldout-source`.
  `--match-window W` trains only on the training clips whose features window W has (a matched comparison of
  windows when W was cached for a subset). drift: mean cosine similarity of the kept frames under the trimmed
  and 10 s windows to the same frames under Whisper's 30 s window.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np

from avsr_cli.modeling.ctc_head import CHARS, AlignerConfig, CharCTCHead

from . import build as B
from . import ship_eval as SE

ROOT = Path(__file__).resolve().parents[2]

CORPUS = B.CACHE


def save(work: Path, name: str, data) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data)[:2000], flush=True)


def split_rows(corpus: Path, split: str) -> list[dict]:
    folder = corpus / split
    rows = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    for r in rows:
        r["path"] = str(folder / r["media"])
    return rows


def wer_of(pairs: list[tuple[str, str]]) -> float:
    from avsr_cli.tasks.scoring import score

    return round(100 * score(pairs).wer, 1) if pairs else float("nan")


def cer_of(pairs: list[tuple[str, str]]) -> float:
    from avsr_cli.tasks.scoring import score

    return round(100 * score(pairs).cer, 1) if pairs else float("nan")


def sentences(corpus: Path) -> list[dict]:
    return B.read_sentences(corpus / "text" / "sentences.tsv")


def ordered(rows: list[dict], tag: str, seed: int = 0) -> list[dict]:
    """build.py's seeded order of sentences."""
    return sorted(rows, key=lambda r: B.stable(seed, tag, r["id"]))


# ---------------------------------------------------------------- 5: text prior


def cmd_prior(args) -> None:
    import torch

    from avsr_cli.checkpoints.loading import load_checkpoint

    model = load_checkpoint(args.checkpoint, device="cpu", dtype="float32")
    model._activate("asr")
    rows = sentences(args.corpus)
    sets = {
        "fortunes (held-out source)": ordered([r for r in rows if r["split"] == "test"], "test"),
        "val (held-out sentences, training sources)": ordered(
            [r for r in rows if r["split"] == "val"], "val"
        ),
        "train (training sentences)": ordered([r for r in rows if r["split"] == "train"], "prior"),
    }
    ids = model.ids
    prompted_prefix = [ids.bos, ids.audio_start, ids.audio_end, *model.prompt_ids("asr")]
    plain_prefix = [ids.bos]
    out = []
    t0 = time.time()
    for name, picked in sets.items():
        picked = picked[: args.sentences]
        for lora in (True, False):
            for fmt, prefix in (("prompted", prompted_prefix), ("plain", plain_prefix)):
                total, tokens, by_source = 0.0, 0, {}
                for r in picked:
                    target = model.target_ids(r["text"])
                    seq = torch.tensor([prefix + target])
                    labels = torch.tensor([[-100] * len(prefix) + target])
                    with torch.no_grad():
                        if lora:
                            logits = model.llm(input_ids=seq).logits
                        else:
                            with model.llm.disable_adapter():
                                logits = model.llm(input_ids=seq).logits
                    nll = torch.nn.functional.cross_entropy(
                        logits[0, :-1].float(), labels[0, 1:], ignore_index=-100, reduction="sum"
                    ).item()
                    total += nll
                    tokens += len(target)
                    s = by_source.setdefault(r["source"], [0.0, 0, 0])
                    s[0] += nll
                    s[1] += len(target)
                    s[2] += 1
                out.append(
                    {
                        "set": name,
                        "sentences": len(picked),
                        "tokens": tokens,
                        "lora": lora,
                        "format": fmt,
                        "nll_per_token": round(total / tokens, 3),
                        "by_source": {
                            k: {"sentences": v[2], "tokens": v[1], "nll_per_token": round(v[0] / v[1], 3)}
                            for k, v in sorted(by_source.items())
                        },
                    }
                )
                print(json.dumps({k: v for k, v in out[-1].items() if k != "by_source"}), flush=True)
    save(
        args.work,
        "prior",
        {"checkpoint": str(args.checkpoint), "rows": out, "seconds": round(time.time() - t0)},
    )


# ---------------------------------------------------------------- 4: label-noise census


def voice_family(voice: str) -> str:
    engine, _, name = voice.partition(":")
    if engine == "espeak":
        return "espeak-ng (" + name.split("+")[0] + ")"
    return voice


def snr_band(aug: dict) -> str:
    if "snr_db" not in aug:
        return "no noise"
    s = aug["snr_db"]
    for lo in (20, 10, 5, 0):
        if s >= lo:
            return f"{lo}-{ {20: 30, 10: 20, 5: 10, 0: 5}[lo] } dB"
    return "< 0 dB"


def cmd_census(args) -> None:
    from avsr_cli.tasks.scoring import score

    rows = split_rows(args.corpus, "train")
    rng = random.Random(args.seed)
    picked = sorted(rng.sample(rows, min(args.clips, len(rows))), key=lambda r: r["id"])
    work = args.work / "census"
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / f"train-{len(picked)}.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"path": r["path"], "transcript": r["text"], "id": r["id"]}) + "\n" for r in picked
        )
    )
    t0 = time.time()
    name = f"census-{len(picked)}-beams{args.beams}"
    beams = None if args.beams == 4 else args.beams  # 4: ship_eval.py's setting, and its cache
    results = {r["id"]: r for r in SE.whisper(manifest, work, name, None, beams)}
    seconds = time.time() - t0
    clips = []
    for r in picked:
        res = results[r["id"]]
        aug = r.get("augment", {})
        one = score([(res["reference"], res["hypothesis"])])
        clips.append(
            {
                "id": r["id"],
                "ref": res["reference"],
                "hyp": res["hypothesis"],
                "wer": 100 * one.wer,
                "family": voice_family(r["voice"]),
                "engine": r["voice"].split(":")[0],
                "snr": snr_band(aug),
                "noise": aug.get("noise", "none"),
                "codec": aug.get("codec", "none"),
                "reverb": "reverb" if "reverb" in aug else "none",
                "seconds": r["seconds"],
            }
        )

    def group(key: str) -> list[dict]:
        out = []
        for value in sorted({c[key] for c in clips}):
            cs = [c for c in clips if c[key] == value]
            out.append(
                {
                    key: value,
                    "clips": len(cs),
                    "whisper_wer": wer_of([(c["ref"], c["hyp"]) for c in cs]),
                    "over_50": round(100 * sum(c["wer"] > 50 for c in cs) / len(cs), 1),
                }
            )
        return out

    data = {
        "clips": len(clips),
        "whisper_beams": args.beams,
        "whisper_wer": wer_of([(c["ref"], c["hyp"]) for c in clips]),
        "over_50": round(100 * sum(c["wer"] > 50 for c in clips) / len(clips), 1),
        "over_100": round(100 * sum(c["wer"] >= 100 for c in clips) / len(clips), 1),
        "exact": round(100 * sum(c["wer"] == 0 for c in clips) / len(clips), 1),
        "by": {k: group(k) for k in ("engine", "family", "snr", "noise", "codec", "reverb")},
        "seconds": round(seconds),
        "worst": sorted(clips, key=lambda c: -c["wer"])[:10],
    }
    (work / "clips.jsonl").write_text("".join(json.dumps(c) + "\n" for c in clips))
    save(args.work, "census", data)


# ---------------------------------------------------------------- 1: voice x text grid


def grid_jobs(args) -> dict[str, list[dict]]:
    """Four cells of clean clips; both voice conditions of a text set read the same sentences."""
    rows = sentences(args.corpus)
    texts = {
        "val": ordered([r for r in rows if r["split"] == "val"], "val")[: args.per_cell],
        # the sentences of the first test-heldout-source clips (build.py's test order)
        "fortunes": ordered([r for r in rows if r["split"] == "test"], "test")[: args.per_cell],
    }
    pool = B.TRAIN_VOICES
    cells = {}
    for text_name, picked in texts.items():
        for voice_kind in ("trained", "heldout"):
            cell = f"{voice_kind}-voice-{text_name}"
            jobs = []
            for r in picked:
                if voice_kind == "heldout":
                    voice = B.TEST_VOICES[
                        B.rng_for(args.seed, "testvoice", r["id"]).integers(len(B.TEST_VOICES))
                    ]
                else:
                    rng = B.rng_for(args.seed, "gridvoice", r["id"])
                    voice, _ = B.resolve(B.draw_voice(rng, pool), rng)
                jobs.append(
                    {
                        "folder": str(args.work / "grid" / cell),
                        "id": f"{r['id']}-{B.slug(voice)}",
                        "split": cell,
                        "sentence_id": r["id"],
                        "source": r["source"],
                        "text": r["text"],
                        "voice": voice,
                        "tts": {"speed": 1.0},
                        "kind": "clean",
                        "seed": args.seed,
                    }
                )
            cells[cell] = jobs
    return cells


def cmd_grid(args) -> None:
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    cells = grid_jobs(args)
    t0 = time.time()
    for jobs in cells.values():
        for j in jobs:
            B.write_clip(j)
    build_seconds = time.time() - t0
    out = args.work / "grid"
    table = []
    ev = Namespace(threads=1, limit=None, dtype="float32")
    for cell, jobs in cells.items():
        folder = Path(jobs[0]["folder"])
        t1 = time.time()
        ours = SE.avsr(folder, str(args.checkpoint), out, cell, ev)
        t2 = time.time()
        theirs = SE.whisper(folder, out, cell, None)
        t3 = time.time()
        voices = {j["id"]: j["voice"] for j in jobs}
        row = {
            "cell": cell,
            "clips": len(ours),
            "avsr": wer_of([(r["reference"], r["hypothesis"]) for r in ours]),
            "whisper": wer_of([(r["reference"], r["hypothesis"]) for r in theirs]),
            "by_voice": {},
            "avsr_seconds": round(t2 - t1),
            "whisper_seconds": round(t3 - t2),
        }
        if cell.startswith("heldout"):
            for v in B.TEST_VOICES:
                a = [(r["reference"], r["hypothesis"]) for r in ours if voices[r["id"]] == v]
                w = [(r["reference"], r["hypothesis"]) for r in theirs if voices[r["id"]] == v]
                row["by_voice"][v] = {"clips": len(a), "avsr": wer_of(a), "whisper": wer_of(w)}
        table.append(row)
        print(json.dumps(row), flush=True)
    save(
        args.work,
        "grid",
        {"checkpoint": str(args.checkpoint), "rows": table, "build_seconds": round(build_seconds)},
    )


# ---------------------------------------------------------------- 2, 3: CTC probe


def encoder(checkpoint: Path):
    from transformers import WhisperFeatureExtractor

    from avsr_cli.checkpoints.locate import find_checkpoint
    from avsr_cli.checkpoints.sources import resolve_source
    from avsr_cli.modeling.config import ModelConfig
    from avsr_cli.modeling.encoders import WhisperAudioEncoder

    ckpt = find_checkpoint(str(checkpoint))
    cfg = ModelConfig.load(ckpt / "config.json").audio_encoder
    enc_dir = resolve_source(cfg.source, ckpt, cfg.revision, weights=True)
    return WhisperAudioEncoder.from_dir(enc_dir).eval(), WhisperFeatureExtractor.from_pretrained(enc_dir)


def feature_dir(args, split: str, window: str) -> Path:
    return args.work / "features" / f"{split}-{window}"


def cmd_features(args) -> None:
    """Encoder frames of a split's clips, float16, one array + an index (cut to the clip's frames as avsr)."""
    import torch

    from avsr_cli.frontends.features import WhisperFrontEnd

    torch.set_num_threads(1)
    enc, extractor = encoder(args.checkpoint)
    rows = split_rows(args.corpus, args.split)
    if args.limit:
        rows = sorted(
            random.Random(args.seed).sample(rows, min(args.limit, len(rows))), key=lambda r: r["id"]
        )
    window = args.window
    frontend = WhisperFrontEnd(extractor, "padded-30s" if window == "padded-30s" else "trimmed", 4)
    pad_to = {"padded-10s": 500}.get(window)
    out = feature_dir(args, args.split, window)
    out.mkdir(parents=True, exist_ok=True)
    arrays, index = [], []
    t0, offset = time.time(), 0
    for k, r in enumerate(rows):
        wave = B.read(Path(r["path"]))
        feats = frontend([wave])
        n = feats.n_frames[0]
        x = feats.input_features
        if pad_to is not None:  # the trimmed front end with a window of at least pad_to encoder frames
            from avsr_cli.frontends.features import normalize_waveform

            frames = max(-(-n // 4) * 4, pad_to)
            x = [
                extractor(
                    normalize_waveform(wave),
                    sampling_rate=16000,
                    return_tensors="pt",
                    padding="max_length",
                    max_length=2 * frames * 160,
                ).input_features[0]
            ]
        hidden = enc(x, [n])[0]
        arrays.append(hidden.to(torch.float16).numpy())
        index.append({"id": r["id"], "text": r["text"], "voice": r["voice"], "offset": offset, "frames": n})
        offset += n
        if k % 200 == 0:
            print(f"{args.split} {window}: {k}/{len(rows)} {time.time() - t0:.0f}s", flush=True)
    np.save(out / "frames.npy", np.concatenate(arrays))
    seconds = time.time() - t0
    (out / "index.json").write_text(
        json.dumps({"split": args.split, "window": window, "seconds": round(seconds, 1), "clips": index})
    )
    print(f"{args.split} {window}: {len(rows)} clips in {seconds:.0f}s -> {out}", flush=True)


def text_to_labels(text: str) -> list[int]:
    from avsr_cli.tasks.scoring import lrs_normalize

    t = " ".join(lrs_normalize(text).split())
    return [CHARS.index(c) + 1 for c in t if c in CHARS]


def load_features(args, split: str, window: str):
    d = feature_dir(args, split, window)
    index = json.loads((d / "index.json").read_text())
    frames = np.load(d / "frames.npy", mmap_mode="r")
    return index, [np.asarray(frames[c["offset"] : c["offset"] + c["frames"]]) for c in index["clips"]]


def probe_model(variant: str):
    import torch
    from torch import nn

    class Probe(nn.Module):
        def __init__(self, rate: int, body: nn.Module, width: int) -> None:
            super().__init__()
            self.rate, self.body = rate, body
            self.readout = nn.Linear(width, rate * (len(CHARS) + 1))  # `rate` character slots per token

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
            b, t, d = x.shape
            n = t // self.rate
            x = x[:, : n * self.rate].reshape(b, n, d * self.rate)
            h = self.body(x) if mask is None else self.body(x, mask[:, : n * self.rate : self.rate])
            return self.readout(h).reshape(b, n * self.rate, len(CHARS) + 1)

    class Temporal(nn.Module):
        def __init__(self, d_in: int, d: int = 256, layers: int = 2) -> None:
            super().__init__()
            self.inp = nn.Linear(d_in, d)
            layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.1, batch_first=True, norm_first=True)
            self.enc = nn.TransformerEncoder(layer, layers)
            self.norm = nn.LayerNorm(d)

        def forward(self, x, valid=None):
            h = self.inp(x)
            pos = torch.arange(h.shape[1], device=h.device)[:, None]
            div = torch.exp(
                torch.arange(0, h.shape[2], 2, device=h.device) * (-math.log(10000.0) / h.shape[2])
            )
            pe = torch.zeros(h.shape[1], h.shape[2], device=h.device)
            pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
            h = self.enc(h + pe, src_key_padding_mask=None if valid is None else ~valid)
            return self.norm(h)

    if variant in ("mlp2", "mlp4"):  # the library's aligner head: Linear, ReLU, Linear, `rate` slots a token
        return CharCTCHead(AlignerConfig(rate=int(variant[3:])))
    if variant == "tf2":
        return Probe(2, Temporal(1024), 256)
    raise SystemExit(f"unknown variant {variant}")


def greedy_ctc(logits) -> str:
    best = logits.argmax(-1).tolist()
    out, prev = [], 0
    for k in best:
        if k != prev and k != 0:
            out.append(CHARS[k - 1])
        prev = k
    return " ".join("".join(out).split())


def cmd_probe(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    _, train = load_features(args, "train", args.window)
    train_index = json.loads((feature_dir(args, "train", args.window) / "index.json").read_text())["clips"]
    if args.match_window:  # only the training clips the other window has (a matched comparison)
        other = json.loads((feature_dir(args, "train", args.match_window) / "index.json").read_text())
        keep = {c["id"] for c in other["clips"]}
        picked = [i for i, c in enumerate(train_index) if c["id"] in keep]
        train, train_index = [train[i] for i in picked], [train_index[i] for i in picked]
    labels = [text_to_labels(c["text"]) for c in train_index]
    evals = {}
    for split in ("val", "test-heldout-source"):
        idx, feats = load_features(args, split, args.window)
        evals[split] = (idx["clips"], feats)
    model = probe_model(args.variant)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(train) / args.batch)
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=total, pct_start=0.1)
    ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)
    rng = random.Random(args.seed)

    def batch_of(feats, ids):
        t = max(feats[i].shape[0] for i in ids)
        x = torch.zeros(len(ids), t, feats[ids[0]].shape[1])
        valid = torch.zeros(len(ids), t, dtype=torch.bool)
        for row, i in enumerate(ids):
            x[row, : feats[i].shape[0]] = torch.from_numpy(feats[i].astype(np.float32))
            valid[row, : feats[i].shape[0]] = True
        return x, valid

    def evaluate(split):
        clips, feats = evals[split]
        model.eval()
        pairs, per_voice = [], {}
        with torch.no_grad():
            for i, c in enumerate(clips):
                x = torch.from_numpy(feats[i].astype(np.float32))[None]
                hyp = greedy_ctc(model(x)[0])
                pairs.append((c["text"], hyp))
                per_voice.setdefault(c["voice"], []).append((c["text"], hyp))
        model.train()
        return (
            wer_of(pairs),
            {v: {"clips": len(p), "wer": wer_of(p), "cer": cer_of(p)} for v, p in sorted(per_voice.items())},
            pairs,
        )

    # batches of similar length (fewer padded frames)
    order = sorted(range(len(train)), key=lambda i: train[i].shape[0])
    batches = [order[k : k + args.batch] for k in range(0, len(order), args.batch)]
    history, best = [], None
    t0 = time.time()
    model.train()
    for epoch in range(args.epochs):
        rng.shuffle(batches)
        losses = []
        for ids in batches:
            x, valid = batch_of(train, ids)
            logits = model(x) if isinstance(model, CharCTCHead) else model(x, valid)
            rate = model.config.rate if isinstance(model, CharCTCHead) else model.rate
            n_out = torch.tensor([(train[i].shape[0] // rate) * rate for i in ids])
            targets = [torch.tensor(labels[i]) for i in ids]
            loss = ctc(
                logits.log_softmax(-1).transpose(0, 1),
                torch.cat(targets),
                n_out,
                torch.tensor([len(t) for t in targets]),
            )
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
        val_wer, _, _ = evaluate("val")
        history.append(
            {
                "epoch": epoch + 1,
                "loss": round(float(np.mean(losses)), 3),
                "val_wer": val_wer,
                "seconds": round(time.time() - t0),
            }
        )
        print(json.dumps(history[-1]), flush=True)
        if best is None or val_wer <= best[0]:
            best = (val_wer, {k: v.clone() for k, v in model.state_dict().items()}, epoch + 1)
    model.load_state_dict(best[1])
    if args.export:  # the best head as a checkpoint's aligner (word timestamps)
        model.save(args.export)
    test_wer, by_voice, pairs = evaluate("test-heldout-source")
    name = f"probe-{args.variant}-{args.window}" + (f"-as-{args.match_window}" if args.match_window else "")
    data = {
        "variant": args.variant,
        "window": args.window,
        "matched_to": args.match_window,
        "train_clips": len(train),
        "val_clips": len(evals["val"][0]),
        "test_clips": len(evals["test-heldout-source"][0]),
        "params": sum(p.numel() for p in model.parameters()),
        "best_epoch": best[2],
        "val_wer": best[0],
        "test_wer": test_wer,
        "test_cer": cer_of(pairs),
        "test_by_voice": by_voice,
        "history": history,
        "seconds": round(time.time() - t0),
        "examples": pairs[:5],
    }
    clips = evals["test-heldout-source"][0]
    (args.work / f"{name}.hyps.jsonl").write_text(
        "".join(
            json.dumps({"id": c["id"], "ref": r, "hyp": h}) + "\n"
            for c, (r, h) in zip(clips, pairs, strict=True)
        )
    )
    save(args.work, name, data)


def cmd_drift(args) -> None:
    """How far the trimmed and 10 s windows move the encoder's frames from Whisper's 30 s window: per clip,
    the mean cosine similarity of each kept frame to the same frame under padded-30s."""
    import torch

    from avsr_cli.frontends.features import WhisperFrontEnd, normalize_waveform

    torch.set_num_threads(1)
    enc, extractor = encoder(args.checkpoint)
    rows = split_rows(args.corpus, "test-heldout-source")[: args.clips]
    trimmed = WhisperFrontEnd(extractor, "trimmed", 4)
    padded = WhisperFrontEnd(extractor, "padded-30s", 4)
    sims: dict[str, list[float]] = {"trimmed": [], "padded-10s": []}
    t0 = time.time()
    for r in rows:
        wave = B.read(Path(r["path"]))
        ref = padded([wave])
        n = ref.n_frames[0]
        full = enc(ref.input_features, [n])[0]
        t = trimmed([wave])
        frames10 = max(-(-n // 4) * 4, 500)
        x10 = extractor(
            normalize_waveform(wave),
            sampling_rate=16000,
            return_tensors="pt",
            padding="max_length",
            max_length=2 * frames10 * 160,
        ).input_features[0]
        for name, x in (("trimmed", t.input_features), ("padded-10s", [x10])):
            h = enc(x, [n])[0]
            sims[name].append(float(torch.nn.functional.cosine_similarity(h, full, dim=-1).mean()))
    data = {
        "clips": len(rows),
        "reference": "padded-30s",
        "mean_cosine": {k: round(float(np.mean(v)), 4) for k, v in sims.items()},
        "min_cosine": {k: round(float(np.min(v)), 4) for k, v in sims.items()},
        "seconds": round(time.time() - t0),
    }
    save(args.work, "drift", data)


# ---------------------------------------------------------------- report


def grid_cer(folder: Path, cell: str) -> dict:
    """CER of a grid cell's results (the avsr report and Whisper's cached lines)."""
    ours = [json.loads(x) for x in (folder / f"avsr-{cell}" / "results.jsonl").read_text().splitlines()]
    theirs = [json.loads(x) for x in (folder / f"whisper-{cell}.jsonl").read_text().splitlines()]
    return {
        "avsr_cer": cer_of([(r["ref"], r["hyp"]) for r in ours]),
        "whisper_cer": cer_of([(r["reference"], r["hypothesis"]) for r in theirs]),
    }


def cmd_report(args) -> None:
    w = args.work
    load = lambda n: json.loads((w / f"{n}.json").read_text()) if (w / f"{n}.json").exists() else None  # noqa: E731
    data = {n: load(n) for n in ("prior", "census", "grid", "drift")}
    data["probes"] = [json.loads(p.read_text()) for p in sorted(w.glob("probe-*.json"))]
    md = [args.header.read_text().rstrip() + "\n"] if args.header and args.header.exists() else []
    if data["grid"]:
        md += [
            "## Voice x text (clean clips, WER %)\n",
            "| voice | text | clips | avsr-tiny-en | Whisper base | avsr-tiny-en CER | Whisper base CER |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in data["grid"]["rows"]:
            voice, _, text = r["cell"].partition("-voice-")
            r.update(grid_cer(w / "grid", r["cell"]))
            md.append(
                f"| {voice} | {text} | {r['clips']} | {r['avsr']} | {r['whisper']} "
                f"| {r['avsr_cer']} | {r['whisper_cer']} |"
            )
            for v, s in r["by_voice"].items():
                md.append(f"| {voice}: {v} | {text} | {s['clips']} | {s['avsr']} | {s['whisper']} | | |")
        md.append("")
    if data["probes"]:
        md += [
            "## CTC probe on the frozen encoder (no LLM; WER %)\n",
            "| variant | window | params | train clips | best epoch | val WER (clips) "
            "| held-out WER (clips) | held-out CER | hibari heart | slt hts |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in data["probes"]:
            bv = p["test_by_voice"]
            h = bv.get("hibari:heart", {}).get("wer", "")
            s = bv.get("festival:cmu_us_slt_arctic_hts", {}).get("wer", "")
            cells = [
                p["variant"],
                p["window"],
                f"{p['params'] / 1e6:.2f} M",
                p["train_clips"],
                f"{p['best_epoch']}/{len(p['history'])}",
                f"{p['val_wer']} ({p['val_clips']})",
                f"{p['test_wer']} ({p['test_clips']})",
                p.get("test_cer", ""),
                h,
                s,
            ]
            md.append("| " + " | ".join(map(str, cells)) + " |")
        md.append("")
    if data.get("drift"):
        d = data["drift"]
        md += [
            f"## Encoder frames by window ({d['clips']} held-out clips)\n",
            "| window | mean cosine to padded-30s frames | lowest clip |",
            "|---|---|---|",
        ]
        md += [f"| {k} | {v} | {d['min_cosine'][k]} |" for k, v in d["mean_cosine"].items()]
        md.append("")
    if data["census"]:
        c = data["census"]
        md += [
            "## Whisper base on training clips (label-noise census)\n",
            f"{c['clips']} training clips, Whisper base with {c['whisper_beams']} beam(s): WER "
            f"{c['whisper_wer']} %, {c['over_50']} % of clips above 50 % WER, "
            f"{c['over_100']} % at 100 % or more, {c['exact']} % exact.\n",
        ]
        for key in ("engine", "family", "snr", "noise", "codec", "reverb"):
            md += [f"| {key} | clips | Whisper WER % | clips > 50 % WER (%) |", "|---|---|---|---|"]
            md += [f"| {g[key]} | {g['clips']} | {g['whisper_wer']} | {g['over_50']} |" for g in c["by"][key]]
            md.append("")
    if data["prior"]:
        md += [
            "## Text prior (mean NLL per token, transcript + EOS)\n",
            "| sentences | count | tokens | format | SmolLM2 | SmolLM2 + LoRA |",
            "|---|---|---|---|---|---|",
        ]
        rows = data["prior"]["rows"]
        for r in rows:
            if not r["lora"]:
                continue
            base = next(
                x for x in rows if x["set"] == r["set"] and x["format"] == r["format"] and not x["lora"]
            )
            cells = [r["set"], r["sentences"], r["tokens"], r["format"], base["nll_per_token"]]
            md.append("| " + " | ".join(map(str, [*cells, r["nll_per_token"]])) + " |")
        md.append("")
    args.json.write_text(json.dumps(data, indent=1) + "\n")
    if args.footer and args.footer.exists():
        md.append(args.footer.read_text().rstrip() + "\n")
    args.md.write_text("\n".join(md))
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["prior", "census", "grid", "features", "probe", "drift", "report"])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--work", type=Path, default=CORPUS / "diagnostics")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "avsr-tiny-en")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sentences", type=int, default=200, help="prior: sentences per set")
    ap.add_argument("--clips", type=int, default=600, help="census: training clips drawn; drift: test clips")
    ap.add_argument("--beams", type=int, default=4, help="census: Whisper base's beams (ship_eval.py: 4)")
    ap.add_argument("--per-cell", type=int, default=40, help="grid: clips per cell")
    ap.add_argument("--split", default="train", help="features: the split")
    ap.add_argument("--window", default="trimmed", choices=["trimmed", "padded-30s", "padded-10s"])
    ap.add_argument("--limit", type=int, help="features: this many clips of the split, drawn with --seed")
    ap.add_argument("--match-window", help="probe: train only on the clips this window's features have")
    ap.add_argument("--variant", default="mlp4", choices=["mlp4", "mlp2", "tf2"])
    ap.add_argument("--export", type=Path, help="probe: save the best mlp head as this checkpoint's aligner")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--md", type=Path, default=ROOT / "docs" / "model-diagnostics.md")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "model-diagnostics.json")
    ap.add_argument("--header", type=Path, help="report: Markdown put before the tables")
    ap.add_argument("--footer", type=Path, help="report: Markdown put after the tables")
    args = ap.parse_args()
    {
        "prior": cmd_prior,
        "census": cmd_census,
        "grid": cmd_grid,
        "features": cmd_features,
        "probe": cmd_probe,
        "drift": cmd_drift,
        "report": cmd_report,
    }[args.step](args)


if __name__ == "__main__":
    main()
