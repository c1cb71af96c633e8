"""Reference rows for the evaluation: dlib's pretrained 68-point predictor under the same protocol."""
from __future__ import annotations

import numpy as np

from core.preprocess import INPUT_SIZE, box_in_crop

from .evaluate import Predictor


def dlib_pretrained_predictor() -> Predictor:
    """dlib's shape predictor run on the occluded crop, with the face box found on the clean image.

    In crop coordinates every teacher box is the same centred square (box_in_crop).
    """
    from .annotate import Teacher

    teacher = Teacher()
    box = box_in_crop()

    def predict(crops: np.ndarray) -> np.ndarray:
        return np.stack([teacher.landmarks(crop, box) for crop in crops]) / INPUT_SIZE

    return predict
