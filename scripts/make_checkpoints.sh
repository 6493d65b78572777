#!/usr/bin/env bash
# Reproduce the shipped checkpoints in checkpoints/ (see checkpoints/README.md for the cards).
# Same data, seed, budget and detector for every mode; ~20-30 CPU-minutes per run on the
# 2-core development machine. Usage: bash scripts/make_checkpoints.sh [fixed multiscale elastic]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=${DATA:-data/synth}
STEPS=${STEPS:-800}
MODES=${*:-fixed multiscale elastic}
COMMON=(--data "$DATA" --max-steps "$STEPS" --lr-drop 0.8 --freeze-stem --seed 0 --workers 1
        --log-every 20)
[ -f "$DATA/annotations/instances_train.json" ] || \
  $BIN/elastic-lab synth --out "$DATA" --train 2000 --val 300 --test 300 --seed 0
for mode in $MODES; do
  $BIN/elastic-lab train --mode "$mode" --out "runs/$mode" "${COMMON[@]}"
  $BIN/elastic-lab eval --checkpoint "runs/$mode/checkpoint.pt" --data "$DATA" --split val \
    --json "runs/$mode/eval_val.json"
  $BIN/elastic-lab export --checkpoint "runs/$mode/checkpoint.pt" --half \
    --card "runs/$mode/eval_val.json" --out "checkpoints/${mode}_synth.pt"
done
