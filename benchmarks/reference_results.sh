#!/usr/bin/env bash
# Reference results for CIFAR-10-LT at IR 100, 50 and 10 (ResNet-32), written to results/.
# EPOCHS sets the stage-1 length (the standard recipe is 200; results/README.md states the
# number used). Each run is a plain `lort run` and can be resumed by running this again.
#   EPOCHS=30 benchmarks/reference_results.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-200}
LORT=${LORT:-.venv/bin/lort}
mkdir -p results
for ir in ${IRS:-100 50 10}; do
  out=results/cifar10_lt_ir${ir}_e${EPOCHS}
  start=$(date +%s)
  "$LORT" run "configs/cifar10_lt_ir${ir}.yaml" --epochs "$EPOCHS" --out "$out" \
    > "$out.log" 2> "$out.stderr" || { echo "run $out failed"; exit 1; }
  echo "wall time: $(( $(date +%s) - start )) s" > "$out.time"
done
