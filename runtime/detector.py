"""LandmarkDetector: the one-line API over any backend."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .backends import Backend, load_backend
from .preprocess import crop_matrix, ensure_bgr, output_to_image, to_input, warp, whole_image_box

Box = tuple[float, float, float, float]


class LandmarkDetector:
    """68 facial landmarks from a face image or a face box in a larger image.

    >>> det = LandmarkDetector("model.onnx")        # or "model.engine"
    >>> pts = det.predict(image_bgr)                # whole image is the face crop -> (68, 2) image pixels
    >>> pts = det.predict(image_bgr, box=(x0, y0, x1, y1))
    """

    def __init__(self, model: str | Path, backend: str | None = None, batch_size: int = 32, **options):
        self.backend: Backend = load_backend(model, backend, **options)
        self.batch_size = min(batch_size, self.backend.max_batch or batch_size)

    def predict(self, image: np.ndarray, box: Box | None = None) -> np.ndarray:
        return self.predict_batch([image], None if box is None else [box])[0]

    def predict_batch(self, images: Sequence[np.ndarray], boxes: Sequence[Box | None] | None = None) -> list[np.ndarray]:
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
        crops, mats = [], []
        for i, image in enumerate(images):
            image = ensure_bgr(image, f"image {i}")
            box = boxes[i] if boxes is not None and boxes[i] is not None else whole_image_box(*image.shape[:2])
            m = crop_matrix(box)
            crops.append(warp(image, m))
            mats.append(m)
        out: list[np.ndarray] = []
        for start in range(0, len(crops), self.batch_size):
            pred = self.backend.run(to_input(np.stack(crops[start:start + self.batch_size])))
            out += [output_to_image(p, m) for p, m in zip(pred, mats[start:start + self.batch_size])]
        return out
