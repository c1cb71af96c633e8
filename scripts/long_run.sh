#!/usr/bin/env bash
# The long training run of the shipped model (MobileNet-L with heads, the default recipe). It is finished:
# 60 epochs, and its best epoch (56) is the shipped landmark network (README, "Long run"). This script trains
# it again in runs/long, warm-started as the original was from the previous model (weights/mobilenet_l.pt of
# commit 137c2c9, taken from git history), or carries an unfinished runs/long on. Runs in the foreground; use
# nohup for the background. Extra arguments go to train.train (e.g. --threads 2; --init PATH starts from
# another checkpoint).
# Afterwards, as for the shipped model: python -m train.train --heads-only --init runs/long/best.pt --epochs 3
# --out runs/heads, then scripts/results_report.py --reuse --candidate NAME=runs/heads/best.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=runs/long
# The original run began before the visibility head read maps at the points, so it trained pooled-only heads
# (--vis-points with no blocks); the heads-only step above re-trains them reading the points.
SCHEDULE=(--epochs 60 --patience 10 --lr 5e-4 --vis-points)
if [ -f "$RUN/last.pt" ]; then
    exec .venv/bin/python -m train.train --out "$RUN" "${SCHEDULE[@]}" --resume "$@"
fi
if [[ " $* " == *" --init "* ]]; then
    exec .venv/bin/python -m train.train --out "$RUN" "${SCHEDULE[@]}" "$@"
fi
INIT=runs/long_init.pt
if [ ! -f "$INIT" ]; then
    mkdir -p runs
    git show 137c2c9:weights/mobilenet_l.pt > "$INIT.tmp" \
        || { echo "long_run.sh: the warm start is weights/mobilenet_l.pt of commit 137c2c9, and this checkout has no such commit; pass --init PATH" >&2; rm -f "$INIT.tmp"; exit 1; }
    mv "$INIT.tmp" "$INIT"
fi
exec .venv/bin/python -m train.train --out "$RUN" "${SCHEDULE[@]}" --init "$INIT" "$@"
