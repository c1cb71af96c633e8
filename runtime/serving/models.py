"""The serve command's two models: their tensors (the contract clients code against) and what they compute,
as plain callables over numpy arrays; Triton is not imported here.

``landmarks``: preprocessed crops in, the network's outputs out; Triton batches requests together.

    input       FP32  [N, 3, 256, 256]  core.preprocess.to_input of crop_face crops
    landmarks   FP32  [N, 68, 2]        normalised crop coordinates (x right, y down; x 256 = crop pixels)
    visibility  FP32  [N, 68]           models with heads: probability that each point is visible
    face_score  FP32  [N, 1]            models with heads (Triton gives every sample at least one dimension)

``faces``: one encoded image per request in, its faces out; decoding, detection and cropping on the server.

    image       BYTES [1]               JPEG, PNG or any other format OpenCV decodes
    boxes       FP32  [K, 4]  optional  face boxes x0, y0, x1, y1 in image pixels; without them: detected
    boxes       FP32  [F, 4]            out: one row per face, largest first
    landmarks   FP32  [F, 68, 2]        image pixels
    visibility  FP32  [F, 68]           models with heads
    face_score  FP32  [F]               models with heads
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from core.preprocess import Box, decode_image

from ..backends import INPUT_CHW, INPUT_NAME, OUTPUTS, Backend, landmarks_output
from ..detector import FaceLandmarks, LandmarkDetector

LANDMARKS_MODEL = "landmarks"
FACES_MODEL = "faces"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: type  # np.float32, or bytes for BYTES
    shape: tuple  # landmarks: per sample (Triton adds the batch axis); faces: per request; -1: any size
    optional: bool = False


def landmarks_tensors(outputs: Sequence[str]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of the ``landmarks`` model for a backend with these outputs."""
    shapes = {**OUTPUTS, "face_score": (1,)}
    return ([TensorSpec(INPUT_NAME, np.float32, INPUT_CHW)],
            [TensorSpec(name, np.float32, shapes[name]) for name in output_names(outputs)])


def faces_tensors(outputs: Sequence[str]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of the ``faces`` model for a backend with these outputs."""
    shapes = {"boxes": (-1, 4), "landmarks": (-1, 68, 2), "visibility": (-1, 68), "face_score": (-1,)}
    return ([TensorSpec("image", bytes, (1,)), TensorSpec("boxes", np.float32, (-1, 4), optional=True)],
            [TensorSpec(name, np.float32, shapes[name]) for name in ("boxes", *output_names(outputs))])


def output_names(outputs: Sequence[str]) -> tuple[str, ...]:
    """The served names: an older model's one output of another name is served as ``landmarks``."""
    return tuple(n for n in OUTPUTS if n in outputs) or ("landmarks",)


class LandmarksModel:
    """Crops (N, 3, 256, 256) float32 -> the network's outputs, as the ``landmarks`` model serves them."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        out = self.backend.run(x)
        served = {"landmarks": landmarks_output(out)}
        if "visibility" in out:
            served["visibility"] = out["visibility"]
        if "face_score" in out:
            served["face_score"] = out["face_score"].reshape(-1, 1)
        return served


class FacesModel:
    """One encoded image (+ optional face boxes) -> its faces, as the ``faces`` model serves them."""

    def __init__(self, detector: LandmarkDetector):
        self.detector = detector

    def __call__(self, image: bytes, boxes: np.ndarray | None = None) -> dict[str, np.ndarray]:
        decoded = decode_image(image)
        if boxes is None:
            faces = self.detector.detect(decoded)
        else:
            chosen = check_boxes(boxes, *decoded.shape[:2])
            faces = self.detector.predict_faces([decoded] * len(chosen), chosen)
        return faces_arrays(faces, self.detector.has_heads)


def faces_arrays(faces: Sequence[FaceLandmarks], has_heads: bool) -> dict[str, np.ndarray]:
    """The ``faces`` model's outputs for one image's faces (zero rows when it has none)."""
    out = {"boxes": np.array([f.box for f in faces], np.float32).reshape(-1, 4),
           "landmarks": np.array([f.landmarks for f in faces], np.float32).reshape(-1, 68, 2)}
    if has_heads:
        out["visibility"] = np.array([f.visibility for f in faces], np.float32).reshape(-1, 68)
        out["face_score"] = np.array([f.score for f in faces], np.float32).reshape(-1)
    return out


def check_boxes(boxes: np.ndarray, height: int, width: int) -> list[Box]:
    """Face boxes (K, 4) as tuples, or ValueError naming the first box that is not finite, is empty, or lies
    entirely outside the width x height image (a box partly outside is a face at the border: it is padded)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        box = f"face box {i} ({x0:g}, {y0:g}, {x1:g}, {y1:g})"
        if not np.isfinite([x0, y0, x1, y1]).all() or not (x1 > x0 and y1 > y0):
            raise ValueError(f"{box}: need finite x0 < x1 and y0 < y1 (x0, y0, x1, y1 in image pixels)")
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise ValueError(f"{box} lies outside the {width}x{height} image")
    return [tuple(float(v) for v in b) for b in boxes]
