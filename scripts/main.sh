#!/usr/bin/env bash
# Set everything up, then run the main job (the whole pipeline) on the committed model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/pipeline.py "$@"
