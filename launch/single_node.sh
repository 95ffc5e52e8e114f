#!/usr/bin/env bash
# One node, N GPUs (NCCL). Set the variables, then: bash launch/single_node.sh [--set key=value ...]
set -euo pipefail

NGPU=${NGPU:-8}                                   # GPUs on this node
CONFIG=${CONFIG:-configs/six_datasets_r50.yaml}
MANIFEST=${MANIFEST:-/data/train/manifest.json}   # from recordio_tools build
OUTPUT_DIR=${OUTPUT_DIR:-runs/six_datasets_r50}
LOG_RANK=${LOG_RANK:-0}                           # which rank's stdout torchrun shows
PYTHON_BIN=${PYTHON_BIN:-python}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec "$PYTHON_BIN" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" \
  --local-ranks-filter "$LOG_RANK" --max-restarts "${MAX_RESTARTS:-3}" \
  fftrain/train.py --config "$CONFIG" --set data.manifest="$MANIFEST" --set output_dir="$OUTPUT_DIR" "$@"
