#!/usr/bin/env bash
# The foundation target run: `elastic-lab train --mode fixed` for 20 CPU-minutes on the synthetic
# set at base size 256, then val AP50 (README "Measured numbers"). --amp (bfloat16 autocast) pays
# off only on CPUs with bf16 units (AMX / AVX-512 BF16); drop it elsewhere (AMP= bash ...).
# Usage: bash scripts/train_20min.sh [OUT]   (default runs/fixed_20min)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=${DATA:-data/synth}
OUT=${1:-runs/fixed_20min}
AMP=${AMP---amp}
[ -f "$DATA/annotations/instances_train.json" ] || \
  $BIN/elastic-lab synth --out "$DATA" --train 2000 --val 300 --test 300 --seed 0
$BIN/elastic-lab train --mode fixed --data "$DATA" --out "$OUT" --max-minutes 20 \
  --max-steps 2650 --epochs 100 --lr 5e-4 --lr-drop 0.8 --freeze-stem --num-queries 60 \
  --hflip 0.5 --workers 1 --seed 0 --log-every 50 $AMP
$BIN/elastic-lab eval --checkpoint "$OUT/checkpoint.pt" --data "$DATA" --split val \
  --json "$OUT/eval_val.json" > /dev/null
$BIN/python -c "import json, sys; m = json.load(open(sys.argv[1])); \
print(' '.join(f'{k} {m[k]:.3f}' for k in ('AP', 'AP50', 'APs', 'APm', 'APl')))" "$OUT/eval_val.json"
