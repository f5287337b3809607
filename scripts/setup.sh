#!/usr/bin/env bash
# Create .venv with the CPU build of PyTorch and imagegpt (editable) plus its test extras.
# Installing torch==2.13.0 first matters: a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, imagegpt; print('imagegpt', imagegpt.__version__, '| torch', torch.__version__)"
