#!/usr/bin/env bash
# Loss ablation: the same compact_s4 network, data, steps and seed for each loss,
# then spot F1 by SNR bin on held-out frames (benchmarks/validate_dl.py).
#
#   LOSSES="mse mse+dice bce+dice" benchmarks/loss_ablation.sh CACHE_DIR OUT_DIR [STEPS]
#
# CACHE_DIR: a projection cache from `labdct-live synth ... --out DIR` (DIR/projections).
# LOSSES defaults to the three segmentation-oriented losses; add "paper" (MSE + VGG16
# feature and Gram terms) where a GPU makes its VGG16 forward passes affordable.
set -euo pipefail
cache=$1; out=$2; steps=${3:-1200}
bin=$(dirname "$0")/../.venv/bin
for loss in ${LOSSES:-mse mse+dice bce+dice}; do
  name=${loss//+/_}
  [ -f "$out/$name/model.pt" ] && continue
  "$bin/labdct-live" train --data on-the-fly --cache "$cache" --steps "$steps" --batch-size 8 \
      --val-every 400 --val-batches 8 --loss "$loss" --seed 3 --threads 2 --no-progress \
      --out "$out/$name"
done
models=$(ls "$out"/*/model.pt | paste -sd, -)
"$bin/python" "$(dirname "$0")/validate_dl.py" --models "$models" --scans D35:2 \
    --eval-every 12 --out "$out/validation"
