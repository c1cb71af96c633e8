"""Mirror averaging at test time: the network's outputs on a crop averaged with those on its mirror image.

The network is trained on mirrored faces as often as on plain ones (train.dataset), so its errors on the two
are partly independent; their average is more accurate (val, all faces: NMSE 3.6-7.9 % lower in every
condition, README) at twice the network's cost. The runtime does it for still images and leaves it
off in the video tracker, where the per-frame budget is tight and the smoothing averages over frames instead.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from .preprocess import INPUT_SIZE
from .schema import MIRROR

Outputs = Dict[str, np.ndarray]  # typing.Dict: the runtime supports Python 3.8 (JetPack 5)
# A crop pixel's centre column c is column (INPUT_SIZE - 1 - c) of the mirror image (crop_matrix(flip=True)),
# so a normalised x (pixels / INPUT_SIZE) maps to FLIP_X - x.
FLIP_X = (INPUT_SIZE - 1) / INPUT_SIZE


def mirror_input(x: np.ndarray) -> np.ndarray:
    """Network input (N, 3, H, W) mirrored left to right."""
    return np.ascontiguousarray(x[..., ::-1])


def unmirror(outputs: Outputs) -> Outputs:
    """Outputs on mirrored crops mapped back onto the crops: x flipped and points renamed (left eye <-> right
    eye, ...); per-point outputs renamed, per-crop ones as they are."""
    points = "landmarks" if "landmarks" in outputs else next(iter(outputs))  # an older model's one output
    out = {}
    for name, v in outputs.items():
        if v.ndim >= 2 and v.shape[1] == len(MIRROR):
            v = v[:, MIRROR]
        if name == points:
            v = v.copy()
            v[..., 0] = FLIP_X - v[..., 0]
        out[name] = v
    return out


def mirror_average(run: Callable[[np.ndarray], Outputs], x: np.ndarray) -> Outputs:
    """``run(x)`` averaged with ``run`` on the mirrored x mapped back; one call of 2N crops."""
    both = run(np.concatenate([x, mirror_input(x)]))
    n = len(x)
    back = unmirror({k: v[n:] for k, v in both.items()})
    return {k: ((v[:n] + back[k]) / 2).astype(v.dtype) for k, v in both.items()}
