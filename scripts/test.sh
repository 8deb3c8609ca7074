#!/usr/bin/env bash
# Set up and run the whole test suite. SLURM tests need a cluster (`sbatch` on PATH; CI starts one
# with .ci/slurm_up.sh) and skip with a reason otherwise; MedMNIST tests need ../shared/data (or
# $SAFLEX_SHARED_DATA) and skip otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export WANDB_MODE=offline HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m pytest -q -rs "$@"
