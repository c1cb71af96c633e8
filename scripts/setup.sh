#!/usr/bin/env bash
# Create .venv and install the project for development: the runtime plus the train, export, dev and serve extras
# (CPU torch from this machine's wheel first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# Ask for the exact CPU build first: any looser torch request would pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q -e ".[train,export,dev,serve]"
