"""Benchmark: the built-in model's LLM on avsr's own Llama decoder against transformers' LlamaForCausalLM.

Each system runs in its own subprocess, in turn, `--repeats` times; the best time of each is kept (other
processes share the machine: the best run is the one they disturbed least):
  load:       load_checkpoint(built-in, merge_lora=True), as Transcriber.from_checkpoint loads it, with
              native_llm True (avsr) or False (transformers), from a fresh process (imports included);
  ms/token:   greedy_decode forced to decode `--tokens` tokens (no end token) after a prompt of the
              built-in model's length for a short clip, at batch 1 and 16; prefill excluded (a 1-token run
              is subtracted). `avsr` keeps its matrices as loaded (the layers' packed, the output layer
              plain); `avsr-packed` packs the output layer too, as a process does once it has decoded 64
              steps (LlamaDecoder.pack_after).

    python -m bench.bench_llm [--tokens 32] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = 90  # positions of a ~4 s clip: BOS, <audio>, 50 frames, </audio>, the instruction...
BATCHES = (1, 16)
SYSTEMS = ("transformers", "avsr", "avsr-packed")


def child(system: str, tokens: int) -> dict:
    t0 = time.perf_counter()
    import torch

    from avsr_cli.checkpoints.loading import default_checkpoint, load_checkpoint
    from avsr_cli.modeling.greedy import greedy_decode
    from avsr_cli.modeling.llama_layers import can_pack

    native = system != "transformers"
    model = load_checkpoint(default_checkpoint(), device="cpu", merge_lora=True, native_llm=native)
    out = {"load": time.perf_counter() - t0, "llm": type(model.llm).__name__}
    if native:
        model.llm.steps_before_packing = None  # no packing in the middle of a measurement
        if system == "avsr-packed" and can_pack(model.llm.get_input_embeddings().weight.dtype):
            model.llm.pack()
    g = torch.Generator().manual_seed(0)
    weight = model.llm.get_input_embeddings().weight
    for batch in BATCHES:
        ids = torch.randint(0, weight.shape[0] - 10, (batch, PROMPT), generator=g)
        embeds = weight[ids]
        mask = torch.ones(batch, PROMPT, dtype=torch.long)
        mask[batch // 2 :, : PROMPT // 4] = 0  # half the rows left-padded, as clips of unequal length

        def run(n: int, embeds=embeds, mask=mask) -> float:
            start = time.perf_counter()
            greedy_decode(model.llm, embeds, mask, eos=-1, pad=model.ids.pad, max_new_tokens=n)
            return time.perf_counter() - start

        run(2)  # warm-up
        out[f"ms_per_token_b{batch}"] = 1000 * (run(tokens + 1) - run(1)) / tokens
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tokens)))
        return
    runs: dict[str, list[dict]] = {s: [] for s in SYSTEMS}
    for _ in range(args.repeats):
        for system in runs:
            cmd = [sys.executable, "-m", "bench.bench_llm", "--child", system, "--tokens", str(args.tokens)]
            p = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            runs[system].append(json.loads(p.stdout.strip().splitlines()[-1]))
    keys = ["load", *(f"ms_per_token_b{b}" for b in BATCHES)]
    best = {s: {k: min(r[k] for r in rs) for k in keys} for s, rs in runs.items()}
    print(f"best of {args.repeats}; {args.tokens} forced tokens after a {PROMPT}-position prompt")
    print(f"{'':<18}{'transformers':>14}{'avsr':>10}{'avsr-packed':>13}{'avsr/transformers':>20}")
    for key in keys:
        t, a, p = (best[s][key] for s in SYSTEMS)
        unit = "s" if key == "load" else "ms"
        print(f"{key + ' (' + unit + ')':<18}{t:>14.3f}{a:>10.3f}{p:>13.3f}{a / t:>20.2f}")
    if args.json:
        args.json.write_text(json.dumps({"best": best, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
