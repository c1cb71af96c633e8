"""LandmarkDetector: the one-line API over any backend."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from core.preprocess import Box, crop_face, ensure_bgr, output_to_image, to_input, whole_image_box

from .backends import Backend, landmarks_output, load_backend


@dataclass
class FaceLandmarks:
    """One face: its box, 68 points in image pixels and, for models with heads, what they add."""

    box: Box
    landmarks: np.ndarray  # (68, 2) float32 image pixels
    visibility: Optional[np.ndarray] = None  # (68,) probability that each point is visible
    score: Optional[float] = None  # probability that the box frames a face the way training boxes do


class LandmarkDetector:
    """68 facial landmarks from a face image or a face box in a larger image.

    >>> det = LandmarkDetector("model.onnx")        # or "model.engine"
    >>> pts = det.predict(image_bgr)                # whole image is the face crop -> (68, 2) image pixels
    >>> pts = det.predict(image_bgr, box=(x0, y0, x1, y1))
    >>> face = det.predict_face(image_bgr, box)     # FaceLandmarks: + visibility and score with heads
    """

    def __init__(self, model: str | Path, backend: str | None = None, batch_size: int = 32, **options):
        self.backend: Backend = load_backend(model, backend, **options)
        self.batch_size = min(batch_size, self.backend.max_batch or batch_size)

    @property
    def has_heads(self) -> bool:
        """Whether the model reports visibility and a face score."""
        return "visibility" in self.backend.outputs

    def predict(self, image: np.ndarray, box: Box | None = None) -> np.ndarray:
        return self.predict_batch([image], None if box is None else [box])[0]

    def predict_batch(self, images: Sequence[np.ndarray], boxes: Sequence[Box | None] | None = None) -> list[np.ndarray]:
        return [f.landmarks for f in self.predict_faces(images, boxes)]

    def predict_face(self, image: np.ndarray, box: Box | None = None) -> FaceLandmarks:
        return self.predict_faces([image], None if box is None else [box])[0]

    def predict_faces(self, images: Sequence[np.ndarray],
                      boxes: Sequence[Box | None] | None = None) -> list[FaceLandmarks]:
        """One FaceLandmarks per image (its box, or the whole image as the face crop when None)."""
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
        crops, mats, used = [], [], []
        for i, image in enumerate(images):
            image = ensure_bgr(image, f"image {i}")
            box = boxes[i] if boxes is not None and boxes[i] is not None else whole_image_box(*image.shape[:2])
            crop, m = crop_face(image, box)
            crops.append(crop)
            mats.append(m)
            used.append(tuple(float(v) for v in box))
        out: list[FaceLandmarks] = []
        for start in range(0, len(crops), self.batch_size):
            res = self.backend.run(to_input(np.stack(crops[start:start + self.batch_size])))
            pred, vis, score = landmarks_output(res), res.get("visibility"), res.get("face_score")
            for k, m in enumerate(mats[start:start + self.batch_size]):
                out.append(FaceLandmarks(used[start + k], output_to_image(pred[k], m),
                                         None if vis is None else vis[k],
                                         None if score is None else float(score[k])))
        return out
