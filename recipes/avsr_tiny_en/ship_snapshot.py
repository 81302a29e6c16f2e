"""Turn a running `avsr train`'s resumable state into the shipped default model (models/avsr-tiny-en).

    python -m recipes.avsr_tiny_en.ship_snapshot [RUN_DIR] [--out models/avsr-tiny-en] [--data CLIPS.jsonl]
        [--command "avsr train ..."] [--parent MODEL_DIR]

Writes config.json (the run's, named avsr-tiny-en, greedy), adapter.safetensors (the state's adapter in
float32), training.json (step, options, validations, loss) and training-clips.txt.gz (the ids of the clips the
run trained on, from --data; recipes/avsr_tiny_en/manifest.py turns them back into a manifest). --parent: the
shipped model a fine-tune started from (`avsr train --checkpoint`): its training.json is kept under "parent"
and its training-clips.txt.gz (the first stage's clips) is left as it is; training.json counts this stage's.
The state is our own file: loaded with weights_only=True, never unpickled as objects.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
# The pilot run's command (the corpus: ~/.cache/avsr/corpus/v2; warm-cache.jsonl: the training clips whose
# encoder features were cached first, 16,173 of 31,531).
COMMAND = (
    "avsr train --data warm-cache.jsonl --val-data val --val-limit 40 --val-every 0 -o v2-pilot "
    "--base whisper-base-smollm2 --encoder-window trimmed --ctc-epochs 1 --epochs 3 --lr 2e-3 "
    "--warmup-steps 100 --batch-seconds 30 --save-every 50 --select best --threads 1"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, nargs="?", default=Path.home() / ".cache/avsr/runs/v2-pilot")
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "avsr-tiny-en")
    ap.add_argument("--data", type=Path, default=Path.home() / ".cache/avsr/corpus/v2/warm-cache.jsonl")
    ap.add_argument("--command", default=COMMAND, help="the run's command line, for the record")
    ap.add_argument("--parent", type=Path, help="the model directory the run fine-tuned")
    args = ap.parse_args()
    parent = None
    if args.parent:  # read before --out (often the same folder) is overwritten
        parent = json.loads((args.parent / "training.json").read_text())
    state = torch.load(args.run / "train_state.pt", weights_only=True, map_location="cpu")
    config = json.loads((args.run / "train_config.json").read_text())
    step = int(state["step"])
    config["name"] = "avsr-tiny-en"
    config["decoding"]["num_beams"] = 1  # greedy (README: the default model)
    stage = f"step {step}" + (f", fine-tuned from step {parent['step']}" if parent else "")
    config["notes"] = f"trained by avsr train (see models/avsr-tiny-en.toml); adapter: {stage}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    save_file(
        {k: v.float().contiguous() for k, v in state["adapter"].items()},
        str(args.out / "adapter.safetensors"),
    )
    losses = state["losses"].tolist()
    validations = json.loads(state["validations"])
    summary_path = args.run / "training.json"  # a finished run's summary has the final validation too
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if summary.get("steps") == step:
        validations = summary["validations"]
    log = [json.loads(line) for line in (args.run / "train_log.jsonl").read_text().splitlines()]
    total = next((row["total"] for row in reversed(log) if "total" in row), None)
    training = {
        "step": step,
        "epoch": int(state["epoch"]),
        "steps_planned": total,
        "lr_at_step": next(
            (row["lr"] for row in reversed(log) if row.get("step") == step and "lr" in row), None
        ),
        "loss_mean_last_100_steps": sum(losses[-100:]) / len(losses[-100:]) if losses else None,
        "validations": validations,
        "command": args.command,
    }
    ids = sorted(json.loads(line)["id"] for line in args.data.read_text().splitlines())
    training["clips"] = len(ids)
    if parent is not None:
        training["parent"] = parent
    else:  # mtime=0: the same ids give the same bytes
        with gzip.GzipFile(args.out / "training-clips.txt.gz", "wb", mtime=0) as f:
            f.write("".join(i + "\n" for i in ids).encode())
    (args.out / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    print(f"step {step}: {args.out}")


if __name__ == "__main__":
    main()
