#!/usr/bin/env bash
# The main job on a fresh machine: set up, run the demo sweep (digits bundled with scikit-learn: no
# download) with the local executor, and print the comparison table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export WANDB_MODE=${WANDB_MODE:-offline} SAFLEX_RESULTS=${SAFLEX_RESULTS:-results}
saflex-bench sweep sweeps/demo.yaml --executor local --wait
saflex-bench report --sweep demo
