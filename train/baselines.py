"""Reference rows for the evaluation: dlib's pretrained 68-point predictor under the same protocol."""
from __future__ import annotations

import numpy as np

from runtime.preprocess import INPUT_SIZE, BOX_SCALE

from .evaluate import Predictor


def dlib_pretrained_predictor() -> Predictor:
    """dlib's shape predictor run on the occluded crop, with the face box found on the clean image.

    In crop coordinates every teacher box is the same centred square of side INPUT_SIZE / BOX_SCALE.
    """
    from .annotate import Teacher

    teacher = Teacher()
    c, half = (INPUT_SIZE - 1) / 2, INPUT_SIZE / BOX_SCALE / 2
    box = (c - half, c - half, c + half, c + half)

    def predict(crops: np.ndarray) -> np.ndarray:
        return np.stack([teacher.landmarks(crop, box) for crop in crops]) / INPUT_SIZE

    return predict
