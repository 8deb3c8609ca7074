#!/usr/bin/env bash
# The suite's cost on one GPU in one table (~8 min on an H100): see benchmarks/gpu_check.py.
#   bash scripts/gpu_check.sh --data-root DATA        # on a GPU node
#   bash scripts/gpu_check.sh --dry                   # the same sections, tiny, on the CPU
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE="${WANDB_MODE:-disabled}"
exec python "$here/benchmarks/gpu_check.py" "$@"
