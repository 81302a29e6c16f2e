"""Benchmark: `avsr evaluate` throughput in 1 process vs 2 torchrun ranks (gloo) on this machine.

The same 24 TTS clips (~2 s each), the built-in avsr-tiny-en model, whole process wall time (imports, model
load, decoding, the merge), median of `--rounds` interleaved rounds:
  1 process, all cores          avsr evaluate DATA --report-dir R
  1 process, 1 thread           the same with --threads 1 (what each rank gets below)
  2 ranks, 1 thread each        torchrun --standalone --nproc-per-node 2 -m avsr_cli evaluate ...
Both summaries must agree (the ranks' shards merged give the unsharded WER).

    python -m bench.bench_distributed [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_longform import SENTENCES  # the six TTS sentences the benchmarks share


def make_data(folder: Path) -> Path:
    from tests.support.speech import available_voices, synthesize

    folder.mkdir()
    voices = available_voices()[:4]
    for v, voice in enumerate(voices):
        for i, text in enumerate(SENTENCES):
            synthesize(text, folder / f"v{v}_{i}.wav", voice)
            (folder / f"v{v}_{i}.txt").write_text(text + "\n")
    return folder


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from avsr_cli.runtime import physical_cores

    cores = physical_cores()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "AVSR_THREADS")}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = make_data(tmp / "data")
        clips = len(list(data.glob("*.wav")))
        avsr = [sys.executable, "-m", "avsr_cli", "evaluate", str(data), "-c", "avsr-tiny-en", "-q", "--json"]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        engines = {
            f"1 process, {cores} threads": lambda r: [*avsr, "--report-dir", str(r)],
            "1 process, 1 thread": lambda r: [*avsr, "--threads", "1", "--report-dir", str(r)],
            "2 ranks, 1 thread each": lambda r: [
                *torchrun,
                "-m",
                "avsr_cli",
                *avsr[3:],
                "--report-dir",
                str(r),
            ],
        }
        times: dict[str, list[float]] = {name: [] for name in engines}
        for k in range(args.rounds):
            for e, (name, command) in enumerate(engines.items()):
                times[name].append(timed(command(tmp / f"r{k}-{e}"), env))
        summaries = [json.loads((tmp / f"r0-{e}" / "summary.json").read_text()) for e in range(len(engines))]
        wers = [s["conditions"][0]["scores"]["wer"] for s in summaries]

    out = {
        "clips": clips,
        "cores": cores,
        "engines": {
            name: {
                "median_s": statistics.median(t),
                "min_s": min(t),
                "clips_per_s": clips / statistics.median(t),
            }
            for name, t in times.items()
        },
        "wer": dict(zip(engines, wers, strict=True)),
    }
    base = out["engines"][f"1 process, {cores} threads"]["median_s"]
    print(f"evaluate, {clips} clips, avsr-tiny-en, whole process (median of {args.rounds}):")
    for name, row in out["engines"].items():
        print(
            f"  {name:<24} {row['median_s']:6.1f} s  {row['clips_per_s']:.2f} clips/s  "
            f"speed-up {base / row['median_s']:.2f}x  WER {100 * out['wer'][name]:.1f}%"
        )
    if len(set(wers)) != 1:
        raise SystemExit("the sharded run's WER differs from the single run's")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
