#!/usr/bin/env bash
# Reproduce the shipped checkpoints in checkpoints/ (see checkpoints/README.md for the cards).
# Same data, seed, budget and detector for every mode: the recipe of `make train-20min`
# (2,650 steps, lr 5e-4, 60 queries, horizontal flips, bfloat16 autocast), ~20-30 CPU-minutes
# per run on the 2-core development machine. --amp pays off only on CPUs with bf16 units
# (AMX / AVX-512 BF16); drop it elsewhere (AMP= bash ...).
# Usage: bash scripts/make_checkpoints.sh [fixed multiscale elastic]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=${DATA:-data/synth}
STEPS=${STEPS:-2650}
AMP=${AMP---amp}
MODES=${*:-fixed multiscale elastic}
COMMON=(--data "$DATA" --max-steps "$STEPS" --epochs 100 --lr 5e-4 --lr-drop 0.8 --freeze-stem
        --num-queries 60 --hflip 0.5 --seed 0 --workers 1 --log-every 50 $AMP)
[ -f "$DATA/annotations/instances_train.json" ] || \
  $BIN/elastic-lab synth --out "$DATA" --train 2000 --val 300 --test 300 --seed 0
for mode in $MODES; do
  $BIN/elastic-lab train --mode "$mode" --out "runs/$mode" "${COMMON[@]}"
  $BIN/elastic-lab eval --checkpoint "runs/$mode/checkpoint.pt" --data "$DATA" --split val \
    --json "runs/$mode/eval_val.json"
  $BIN/elastic-lab export --checkpoint "runs/$mode/checkpoint.pt" --half \
    --card "runs/$mode/eval_val.json" --out "checkpoints/${mode}_synth.pt"
done
