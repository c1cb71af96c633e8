"""LandmarkDetector: the one-line API over any backend, from an image to its faces' landmarks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from core.mirror import mirror_average
from core.preprocess import Box, crop_face, ensure_bgr, output_to_image, read_image, to_input, whole_image_box

from .backends import Backend, landmarks_output, load_backend
from .faces import DETECT_MAX_SIDE, box_from_landmarks, box_overlap, detect_faces, load_detector

if TYPE_CHECKING:  # imported when called: tracking imports this module
    from .tracking import FaceTracker

# detect() with a model that has a face score: YuNet runs at CANDIDATE_SCORE instead of its own threshold, so
# it proposes occluded faces it would drop, and the model keeps the candidates it scores >= FACE_SCORE_MIN,
# before and after refining. Each face is refined REFINE_PASSES times (predicted again from the box its
# landmarks imply): a second pass still lowered the failures under occlusion, by about 0.05.
# Chosen on the val split by train.end_to_end (docs/end_to_end.md).
CANDIDATE_SCORE = 0.15
FACE_SCORE_MIN = 0.8
REFINE_PASSES = 2
VISIBLE = 0.5  # the visibility probability from which a point counts as visible
# Two results whose boxes share this much of the smaller one's area are one face (the better scored, or the
# larger, is kept): under occlusion a face yields offset and nested candidates whose IoU stays low.
DUPLICATE_OVERLAP = 0.5


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
    >>> faces = det.detect("photo.jpg")             # every face of an image, largest first
    >>> tracker = det.tracker()                     # video: faces = tracker.update(frame), with track_id

    ``mirror``: average each crop's outputs with its mirror image's (core.mirror): more accurate, twice the
    network's cost. On by default for still images; the tracker has its own setting, off by default.
    """

    def __init__(self, model: str | Path, backend: str | None = None, batch_size: int = 32, mirror: bool = True,
                 **options):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.backend: Backend = load_backend(model, backend, **options)
        self.batch_size = min(batch_size, self.backend.max_batch or batch_size)
        self.mirror = mirror

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

    def predict_faces(self, images: Sequence[np.ndarray], boxes: Sequence[Box | None] | None = None,
                      mirror: bool | None = None) -> list[FaceLandmarks]:
        """One FaceLandmarks per image (its box, or the whole image as the face crop when None).

        ``mirror``: mirror averaging for this call (None: the detector's setting)."""
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
        mirror = self.mirror if mirror is None else mirror
        out: list[FaceLandmarks] = []
        for start in range(0, len(crops), self.batch_size):
            x = to_input(np.stack(crops[start:start + self.batch_size]))
            res = mirror_average(self._run, x) if mirror else self._run(x)
            pred, vis, score = landmarks_output(res), res.get("visibility"), res.get("face_score")
            for k, m in enumerate(mats[start:start + self.batch_size]):
                out.append(FaceLandmarks(used[start + k], output_to_image(pred[k], m),
                                         None if vis is None else vis[k],
                                         None if score is None else float(score[k])))
        return out

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The backend on x in batches of at most batch_size (a mirrored call doubles the crops)."""
        if len(x) <= self.batch_size:
            return self.backend.run(x)
        parts = [self.backend.run(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def detect(self, image: np.ndarray | str | Path, detector: str = "auto", refine: bool = True,
               candidate_score: Optional[float] = CANDIDATE_SCORE,
               min_face_score: float = FACE_SCORE_MIN, max_side: int = DETECT_MAX_SIDE,
               mirror: bool | None = None) -> list[FaceLandmarks]:
        """Every face of an image (BGR/grey/BGRA array or a file), largest first.

        With a model that has a face score, YuNet proposes faces at ``candidate_score`` (below its own
        threshold) and the model keeps those it scores >= ``min_face_score``: this finds faces under
        occlusion that the detector alone drops (None: YuNet's own threshold, nothing dropped).
        ``refine``: predict again (REFINE_PASSES times) from the box the landmarks imply, the framing the
        model was trained on, instead of the detector's box.
        ``max_side``: larger images are shrunk to this longest side for the face detector only.
        ``mirror``: mirror averaging on every landmark pass (None: the detector's setting).
        """
        image = read_image(image) if isinstance(image, (str, Path)) else ensure_bgr(image)
        detector = load_detector(detector)
        confirm = self.has_heads and detector == "yunet" and candidate_score is not None
        boxes = detect_faces(image, detector, candidate_score if confirm else None, max_side)
        faces = self.predict_faces([image] * len(boxes), boxes, mirror)
        for _ in range(REFINE_PASSES if refine else 0):
            if confirm:
                faces = [f for f in faces if f.score >= min_face_score]
            faces = self.refine(image, faces, mirror)
        if confirm:
            faces = [f for f in faces if f.score >= min_face_score]
        return distinct(faces)

    def refine(self, image: np.ndarray, faces: Sequence[FaceLandmarks],
               mirror: bool | None = None) -> list[FaceLandmarks]:
        """Each face predicted again from the box its landmarks imply (runtime.faces.box_from_landmarks)."""
        return self.predict_faces([image] * len(faces), [box_from_landmarks(f.landmarks) for f in faces], mirror)

    def tracker(self, **options) -> "FaceTracker":
        """A stateful video tracker over this model: ``tracker.update(frame)`` -> faces with a ``track_id``.

        Options: see runtime.tracking.FaceTracker (detector, detect_every, lost_score, smoothing, ...).
        """
        from .tracking import FaceTracker

        return FaceTracker(self, **options)


def box_area(box: Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def distinct(faces: Sequence[FaceLandmarks]) -> list[FaceLandmarks]:
    """One result per face, largest first: of results overlapping by DUPLICATE_OVERLAP the better scored is
    kept (the larger without scores)."""
    rank = sorted(faces, key=lambda f: (f.score if f.score is not None else 0.0, box_area(f.box)), reverse=True)
    kept: list[FaceLandmarks] = []
    for face in rank:
        if all(box_overlap(face.box, k.box) < DUPLICATE_OVERLAP for k in kept):
            kept.append(face)
    return sorted(kept, key=lambda f: box_area(f.box), reverse=True)
