#!/usr/bin/env bash
# The main job on a fresh machine: set up, run the demo sweep (digits bundled with scikit-learn: no
# download; fair protocol: X, X+ref and X+SAFLEX on the same labelled data) with the local executor,
# and print the comparison: X, X+ref, X+SAFLEX columns, accuracy and AUC side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export WANDB_MODE=${WANDB_MODE:-offline} SAFLEX_RESULTS=${SAFLEX_RESULTS:-results}
saflex-bench sweep sweeps/demo.yaml --executor local --wait
saflex-bench report --sweep demo
