#!/usr/bin/env bash
# Train the shipped checkpoints in checkpoints/ (cards: checkpoints/README.md) from the recipe of
# elastic_lab/recipes.py (one definition, shared with `make bench` and the notebooks): the runs
# fixed_1.00, multiscale and elastic at seed 0, same data, detector and budget. They train in the
# benchmark's cell folders (benchmarks/runs/<run>_s0), so one training serves both: a finished
# run there is kept, a stopped one resumed (experiments.train_run).
# Models trained at many scales (multiscale, elastic) then get per-scale batch-norm statistics
# (elastic-lab calibrate, beside the run as calibrated.pt), as the benchmark's cells do.
# Each model is evaluated on the val split; the evaluation files are committed in
# checkpoints/evals/ (the numbers of checkpoints/README.md and of the README come from them,
# tests/test_docs.py checks it) and stored as the model card of the exported file.
# AMP=--amp for mixed precision (CUDA, or CPUs with bf16 units: AMX / AVX-512 BF16);
# DEVICE=cuda for a GPU.
# Usage: bash scripts/make_checkpoints.sh [fixed multiscale elastic]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=${DATA:-data/synth}
AMP=${AMP:-}
DEVICE=${DEVICE:-auto}
RUNS=${RUNS:-benchmarks/runs}
EVALS=checkpoints/evals
MODES=${*:-fixed multiscale elastic}
declare -A CELL=([fixed]=fixed_1.00_s0 [multiscale]=multiscale_s0 [elastic]=elastic_s0)
[ -f "$DATA/annotations/instances_train.json" ] || \
  $BIN/elastic-lab synth --out "$DATA" --train 2000 --val 300 --test 300 --seed 0
mkdir -p "$EVALS"
for mode in $MODES; do
  run="$RUNS/${CELL[$mode]}"
  $BIN/elastic-lab recipe "$mode" --seed 0 --data "$DATA" --out "$run" --device "$DEVICE" $AMP
  ckpt="$run/checkpoint.pt"
  if [ "$mode" != fixed ]; then
    $BIN/elastic-lab calibrate --checkpoint "$ckpt" --data "$DATA" --out "$run/calibrated.pt" \
      --device "$DEVICE"
    ckpt="$run/calibrated.pt"
  fi
  # float32 evaluation, at phi = 1 (fixed, multiscale) or the predicted phi (elastic)
  $BIN/elastic-lab eval --checkpoint "$ckpt" --data "$DATA" --split val \
    --device "$DEVICE" --json "$EVALS/${mode}_val.json"
  if [ "$mode" = multiscale ]; then
    for phi in 0.75 1.25; do
      $BIN/elastic-lab eval --checkpoint "$ckpt" --data "$DATA" --split val \
        --scale "$phi" --device "$DEVICE" --json "$EVALS/${mode}_val_phi${phi}.json"
    done
  fi
  $BIN/elastic-lab export --checkpoint "$ckpt" --half \
    --card "$EVALS/${mode}_val.json" --out "checkpoints/${mode}_synth.pt"
done
