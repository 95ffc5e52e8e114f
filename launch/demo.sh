#!/usr/bin/env bash
# The embedded demo, end to end on CPU: set up ./.venv if needed, generate the synthetic
# six-dataset set if missing, train (dataset-aware phase, fusion at T2, agnostic phase) and
# report verification accuracy; then `fftrain demo-report` prints the classes after fusion, the merge
# precision and recall against the planted overlaps, and the accuracy. About 8 minutes on 2 cores shared with other work (2026-12-05).
#
#   bash launch/demo.sh                          # defaults below
#   NPROC=1 bash launch/demo.sh --set optim.total_steps=200 --set optim.lr_milestones=[150,180]
set -euo pipefail

NPROC=${NPROC:-2}                 # processes (gloo ranks on CPU)
OUTPUT_DIR=${OUTPUT_DIR:-runs/demo}

cd "$(dirname "$0")/.."
bash launch/bootstrap.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/python -m fftrain train --nproc-per-node "$NPROC" --set output_dir="$OUTPUT_DIR" "$@"
.venv/bin/python -m fftrain demo-report "$OUTPUT_DIR"
