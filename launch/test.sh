#!/usr/bin/env bash
# Set up ./.venv if needed and run the test suite (CPU; GPU tests are skipped without CUDA).
#
#   bash launch/test.sh                 # everything
#   bash launch/test.sh -k recordio     # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
