"""The peer engines of bench_engines.py, one process per call (so load time and peak memory are their own).

    python -m bench.peers faster-whisper int8|float32 MODEL_DIR [--srt OUT] [--beams 4] FILE...
    python -m bench.peers transformers WHISPER_DIR [--srt OUT] [--beams 4] FILE...

Every engine: --beams beams (default 4), English, 2 threads unless OMP/--threads say otherwise, text to
stdout; --srt writes the segments of the (single) FILE as SRT, as `avsr export-subtitles` does.
"""

from __future__ import annotations

import argparse
import os
import sys


def srt_time(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def write_srt(segments: list[tuple[float, float, str]], path: str) -> None:
    with open(path, "w") as f:
        for i, (start, end, text) in enumerate(segments, 1):
            f.write(f"{i}\n{srt_time(start)} --> {srt_time(end)}\n{text.strip()}\n\n")


def faster_whisper(
    compute_type: str, model_dir: str, files: list[str], srt: str | None, threads: int, beams: int
) -> None:
    from faster_whisper import WhisperModel

    model = WhisperModel(model_dir, device="cpu", compute_type=compute_type, cpu_threads=threads)
    for path in files:
        segments, _ = model.transcribe(path, beam_size=beams, language="en")
        segments = [(s.start, s.end, s.text) for s in segments]
        print(" ".join(s[2].strip() for s in segments))
        if srt:
            write_srt(segments, srt)


def transformers_whisper(model_dir: str, files: list[str], srt: str | None, threads: int, beams: int) -> None:
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    from avsr_cli.frontends.media import load_audio

    torch.set_num_threads(threads)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    fe, tok = (
        WhisperFeatureExtractor.from_pretrained(model_dir),
        WhisperTokenizerFast.from_pretrained(model_dir),
    )
    for path in files:
        audio = load_audio(path)
        long = len(audio) > 30 * 16000
        feats = fe(
            audio,
            sampling_rate=16000,
            return_tensors="pt",
            truncation=not long,
            padding="longest" if long else "max_length",
            return_attention_mask=long,
        )
        with torch.inference_mode():
            out = model.generate(
                feats.input_features,
                attention_mask=feats.get("attention_mask"),
                num_beams=beams,
                language="en",
                task="transcribe",
                return_timestamps=long or bool(srt),
                return_segments=bool(srt),
            )
        if srt:
            segs = out["segments"][0]
            segments = [
                (float(s["start"]), float(s["end"]), tok.decode(s["tokens"], skip_special_tokens=True))
                for s in segs
            ]
            write_srt(segments, srt)
            print(" ".join(s[2].strip() for s in segments))
        else:
            print(tok.batch_decode(out, skip_special_tokens=True)[0].strip())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine", choices=["faster-whisper", "transformers"])
    ap.add_argument("args", nargs="+")
    ap.add_argument("--srt")
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("AVSR_THREADS", "2")))
    a = ap.parse_args()
    if a.engine == "faster-whisper":
        faster_whisper(a.args[0], a.args[1], a.args[2:], a.srt, a.threads, a.beams)
    else:
        transformers_whisper(a.args[0], a.args[1:], a.srt, a.threads, a.beams)


if __name__ == "__main__":
    sys.exit(main())
