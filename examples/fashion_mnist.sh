#!/usr/bin/env bash
# Fashion-MNIST from a local copy: DATA_DIR must hold FashionMNIST/raw/*-ubyte (torchvision's
# layout); add --download on a machine with internet access to fetch it there.
# Usage: DATA_DIR=/data examples/fashion_mnist.sh [RUN_DIR]
set -euo pipefail
RUN=${1:-runs/fashion}
DATA_DIR=${DATA_DIR:-data}
source "$(dirname "$0")/find_geovq.sh"  # sets GEOVQ: .venv/bin/geovq or geovq on PATH

$GEOVQ train-vae --run-dir "$RUN" --dataset fashion-mnist --data-dir "$DATA_DIR"
$GEOVQ extract --run-dir "$RUN"
$GEOVQ quantize --run-dir "$RUN" --metric w2
$GEOVQ quantize --run-dir "$RUN" --metric geodesic
$GEOVQ train-vqvae --run-dir "$RUN" --grid 2x4
$GEOVQ compare --run-dir "$RUN"
