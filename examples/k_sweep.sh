#!/usr/bin/env bash
# Rate-distortion on one VAE: post-hoc W2 codebooks at several K, then compare's sweep and
# figure (report/test/rate_distortion.png). Needs a run with a trained VAE and latents.
# Usage: examples/k_sweep.sh [RUN_DIR]
set -euo pipefail
RUN=${1:-runs/by-hand}
source "$(dirname "$0")/find_geovq.sh"  # sets GEOVQ: .venv/bin/geovq or geovq on PATH

for k in 16 64 256 1024; do
  $GEOVQ quantize --run-dir "$RUN" --metric w2 --k "$k" --force
done
$GEOVQ compare --run-dir "$RUN" --sweep-k 16,64,256,1024,4096
