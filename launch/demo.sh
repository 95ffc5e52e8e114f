#!/usr/bin/env bash
# The embedded demo, end to end on CPU: set up ./.venv if needed, generate the synthetic
# six-dataset set if missing, train (dataset-aware phase, fusion at T2, agnostic phase) and
# report verification accuracy. About ten minutes on 2 cores.
#
#   bash launch/demo.sh                          # defaults below
#   NPROC=1 bash launch/demo.sh --set optim.total_steps=200 --set optim.lr_milestones=[150,180]
set -euo pipefail

NPROC=${NPROC:-2}                 # processes (gloo ranks on CPU)
OUTPUT_DIR=${OUTPUT_DIR:-runs/demo}

cd "$(dirname "$0")/.."
bash launch/bootstrap.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/torchrun --standalone --nproc_per_node="$NPROC" fftrain/train.py \
  --set output_dir="$OUTPUT_DIR" "$@"
