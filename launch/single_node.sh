#!/usr/bin/env bash
# One node, N GPUs (NCCL). Set the variables, then: bash launch/single_node.sh [--set key=value ...]
# `fftrain train --nproc-per-node` checks the config, the data and the resume point before it starts the
# workers (through torchrun's elastic agent), and restarts them from the newest checkpoint on a failure.
set -euo pipefail

NGPU=${NGPU:-8}                                   # GPUs on this node
CONFIG=${CONFIG:-six_datasets_r50}                # a packaged config's name or a YAML path
MANIFEST=${MANIFEST:-/data/train/manifest.json}   # from recordio_tools build
OUTPUT_DIR=${OUTPUT_DIR:-runs/six_datasets_r50}
LOG_RANK=${LOG_RANK:-0}                           # which local rank's output is shown
MAX_RESTARTS=${MAX_RESTARTS:-3}                   # restart the group from the last checkpoint on a failure
PYTHON_BIN=${PYTHON_BIN:-python}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec "$PYTHON_BIN" -m fftrain train --nproc-per-node "$NGPU" --local-ranks-filter "$LOG_RANK" \
  --max-restarts "$MAX_RESTARTS" \
  --config "$CONFIG" --set data.manifest="$MANIFEST" --set output_dir="$OUTPUT_DIR" "$@"
