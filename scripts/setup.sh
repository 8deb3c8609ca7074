#!/usr/bin/env bash
# Create ./.venv (if needed) and install saflex-bench into it with its test extras.
# torch/torchvision are pinned only when the venv has none: keep your own CUDA build if you have one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
if ! python -c "import torch, torchvision" >/dev/null 2>&1; then
  python -m pip install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
fi
python -m pip install -q -e ".[test]"
