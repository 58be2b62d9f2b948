#!/usr/bin/env bash
# The whole study by hand on the embedded mnist5k digits: a VAE, three post-hoc codebooks,
# a decoder refit, the bit-rate-matched VQ-VAE, priors, samples and the comparison.
# Usage: examples/mnist5k_pipeline.sh [RUN_DIR]      (K=64 examples/... for another K)
set -euo pipefail
RUN=${1:-runs/by-hand}
K=${K:-256}
source "$(dirname "$0")/find_geovq.sh"  # sets GEOVQ: .venv/bin/geovq or geovq on PATH

$GEOVQ train-vae --run-dir "$RUN"
$GEOVQ extract --run-dir "$RUN"
for metric in euclidean w2 geodesic; do
  $GEOVQ quantize --run-dir "$RUN" --metric "$metric" --k "$K"
done
$GEOVQ refit-decoder --run-dir "$RUN" --source "quant/w2-k$K"
$GEOVQ train-vqvae --run-dir "$RUN" --grid 2x4 --k "$K"
for source in "quant/w2-k$K" "quant/geodesic-k$K" "vqvae/vqvae-2x4-k$K"; do
  $GEOVQ train-prior --run-dir "$RUN" --source "$source"
  $GEOVQ sample --run-dir "$RUN" --source "$source" --n 64
done
$GEOVQ sample --run-dir "$RUN" --source "quant/w2-k$K" --mode random
$GEOVQ compare --run-dir "$RUN"
$GEOVQ info --run-dir "$RUN"
