#!/usr/bin/env bash
# Evaluate on an external test set kept as an image folder (one subfolder per class): encode
# it as one more split with `extract --as`, then compare on that split: every quantization gets
# codes for it on the fly (its own assignment rule), nothing is refitted or retrained, and the
# report goes to RUN/report/external/ beside the test split's.
# Usage: examples/external_folder.sh RUN_DIR FOLDER
set -euo pipefail
RUN=${1:?run directory with a trained VAE}
FOLDER=${2:?image folder, e.g. digits/ with 0/ 1/ ... subfolders}
source "$(dirname "$0")/find_geovq.sh"  # sets GEOVQ: .venv/bin/geovq or geovq on PATH

$GEOVQ extract --run-dir "$RUN" --dataset "folder:$FOLDER" --as external
$GEOVQ compare --run-dir "$RUN" --split external
