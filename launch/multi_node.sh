#!/usr/bin/env bash
# Several nodes through torchrun's c10d rendezvous. Run the same command on every node:
#   HEAD_NODE=node01 NNODES=2 bash launch/multi_node.sh
# The output dir must be on a filesystem every node sees (checkpoints are written by all ranks).
set -euo pipefail

NNODES=${NNODES:-2}
NGPU=${NGPU:-8}                                   # GPUs per node
HEAD_NODE=${HEAD_NODE:?set HEAD_NODE to the rendezvous host}
RDZV_PORT=${RDZV_PORT:-29500}
RDZV_ID=${RDZV_ID:-fftrain}
CONFIG=${CONFIG:-six_datasets_r50}                # a packaged config's name or a YAML path
MANIFEST=${MANIFEST:-/data/train/manifest.json}
OUTPUT_DIR=${OUTPUT_DIR:-runs/six_datasets_r50}
MAX_RESTARTS=${MAX_RESTARTS:-3}                   # restart the group from the last checkpoint on a failure
PYTHON_BIN=${PYTHON_BIN:-python}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec "$PYTHON_BIN" -m fftrain train --nnodes "$NNODES" --nproc-per-node "$NGPU" \
  --rdzv-backend c10d --rdzv-endpoint "$HEAD_NODE:$RDZV_PORT" --rdzv-id "$RDZV_ID" \
  --max-restarts "$MAX_RESTARTS" --local-ranks-filter 0 \
  --config "$CONFIG" --set data.manifest="$MANIFEST" --set output_dir="$OUTPUT_DIR" "$@"
