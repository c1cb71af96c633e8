"""The 68-point iBUG landmark schema (0-based indices), shared by every stage."""
from __future__ import annotations

import numpy as np

NUM_LANDMARKS = 68

GROUPS: dict[str, range] = {
    "jaw": range(0, 17),
    "right_eyebrow": range(17, 22),  # subject's right = image left
    "left_eyebrow": range(22, 27),
    "nose_bridge": range(27, 31),
    "nostrils": range(31, 36),
    "right_eye": range(36, 42),
    "left_eye": range(42, 48),
    "outer_lips": range(48, 60),
    "inner_lips": range(60, 68),
}


def _mirror_permutation() -> list[int]:
    """Index map for a horizontal flip: point i of the flipped face is point perm[i] of the original."""
    pairs = [(i, 16 - i) for i in range(8)]  # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]  # eyebrows
    pairs += [(31, 35), (32, 34)]  # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]  # outer lips
    pairs += [(60, 64), (61, 63), (67, 65)]  # inner lips
    perm = list(range(NUM_LANDMARKS))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


MIRROR = _mirror_permutation()


def pupils(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pupil centres (right eye, left eye) as the mean of each eye's six points; works on (..., 68, 2)."""
    pts = np.asarray(landmarks, dtype=np.float64)
    return pts[..., GROUPS["right_eye"], :].mean(-2), pts[..., GROUPS["left_eye"], :].mean(-2)


def describe() -> dict:
    """JSON-friendly description stored in checkpoints and ONNX metadata."""
    return {
        "name": "ibug68",
        "num_landmarks": NUM_LANDMARKS,
        "groups": {k: [v.start, v.stop] for k, v in GROUPS.items()},
        "pupil": "mean of each eye's six points",
        "mirror": MIRROR,
    }
