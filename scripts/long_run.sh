#!/usr/bin/env bash
# The long training run of the shipped model (MobileNet-L with heads, the default recipe), warm-started from
# the previous model: starts it, or carries it on from runs/long/last.pt, or, on a fresh machine, from the
# committed checkpoint of the unfinished run in weights/resume/. Runs in the foreground; use nohup for
# the background. Extra arguments go to train.train (e.g. --threads 2).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=runs/long
# the run's schedule: resume with the same one. It began before the visibility head read maps at the points,
# so it trains pooled-only heads (--vis-points with no blocks); re-train them with --heads-only on its landmarks
# (which read the points) when it is done.
SCHEDULE=(--epochs 60 --patience 10 --lr 5e-4 --vis-points)
if [ ! -f "$RUN/last.pt" ] && [ -f weights/resume/last.pt ]; then
    mkdir -p "$RUN"
    cp weights/resume/last.pt weights/resume/best.pt weights/resume/history.json "$RUN/"
    echo "carrying on the committed run from weights/resume/ in $RUN"
fi
if [ -f "$RUN/last.pt" ]; then
    exec .venv/bin/python -m train.train --out "$RUN" "${SCHEDULE[@]}" --resume "$@"
fi
exec .venv/bin/python -m train.train --out "$RUN" "${SCHEDULE[@]}" --init weights/mobilenet_l.pt "$@"
