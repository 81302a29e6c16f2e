#!/bin/sh
# usage: scripts/corpus_v2/snapshot_eval.sh [RUN_DIR]   (default ~/.cache/avsr/runs/v2-pilot)
# Snapshot the pilot's resumable state into a checkpoint and score it on the first 100 held-out-source clips
# (LRS normaliser, 4 beams): the same clips as the v1 baseline (74.1 %) and Whisper base (3.67 %).
set -e
RUN=${1:-$HOME/.cache/avsr/runs/v2-pilot}
SNAP=$RUN-snapshot
mkdir -p $SNAP
cp $RUN/train_config.json $SNAP/config.json
RUN=$RUN SNAP=$SNAP python - <<'PY'
import os, torch
from safetensors.torch import save_file
state = torch.load(f"{os.environ['RUN']}/train_state.pt", weights_only=True, map_location="cpu")  # our own file
adapter = {k: v.float().contiguous() for k, v in state["adapter"].items()}
save_file(adapter, f"{os.environ['SNAP']}/adapter.safetensors")
print("step", state["step"])
PY
rm -rf $SNAP-eval
avsr evaluate $HOME/.cache/avsr/corpus/v2/test-heldout-source -c $SNAP --limit 100 --num-beams 4 --threads 1 \
  --report-dir $SNAP-eval -q
