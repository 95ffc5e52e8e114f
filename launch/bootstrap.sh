#!/usr/bin/env bash
# Create ./.venv and install fftrain with its cpu (faiss-cpu), test and export extras. Safe to rerun: it reinstalls only when
# setup.py changed. torch is pinned first so pip never resolves an unpinned, CUDA-sized torch.
#
#   bash launch/bootstrap.sh            # then .venv/bin/fftrain ..., .venv/bin/python -m pytest
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

cd "$(dirname "$0")/.."
stamp="$VENV/.fftrain-installed"
want="$(sha1sum setup.py | cut -d' ' -f1) torch==$TORCH_VERSION"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
"$VENV/bin/python" -m pip install --quiet -e '.[cpu,test,export]'
echo "$want" > "$stamp"
