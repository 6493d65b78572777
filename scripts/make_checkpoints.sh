#!/usr/bin/env bash
# Train the shipped checkpoints in checkpoints/ (cards: checkpoints/README.md) from the recipe of
# elastic_lab/recipes.py (one definition, shared with `make bench` and the notebooks): the runs
# fixed_1.00, multiscale and elastic at seed 0, same data, detector and budget. A finished run
# in runs/MODE is kept, a stopped one resumed (experiments.train_run).
# AMP=--amp for mixed precision (CUDA, or CPUs with bf16 units: AMX / AVX-512 BF16);
# DEVICE=cuda for a GPU.
# Usage: bash scripts/make_checkpoints.sh [fixed multiscale elastic]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=${DATA:-data/synth}
AMP=${AMP:-}
DEVICE=${DEVICE:-auto}
MODES=${*:-fixed multiscale elastic}
[ -f "$DATA/annotations/instances_train.json" ] || \
  $BIN/elastic-lab synth --out "$DATA" --train 2000 --val 300 --test 300 --seed 0
for mode in $MODES; do
  $BIN/elastic-lab recipe "$mode" --seed 0 --data "$DATA" --out "runs/$mode" --device "$DEVICE" $AMP
  $BIN/elastic-lab eval --checkpoint "runs/$mode/checkpoint.pt" --data "$DATA" --split val \
    --device "$DEVICE" --json "runs/$mode/eval_val.json"
  $BIN/elastic-lab export --checkpoint "runs/$mode/checkpoint.pt" --half \
    --card "runs/$mode/eval_val.json" --out "checkpoints/${mode}_synth.pt"
done
