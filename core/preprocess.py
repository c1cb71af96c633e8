"""The one preprocessing of the project: face box -> 256x256 network input, and back.

Training, evaluation, calibration, export checks and the runtime all call these
functions, so what the network sees cannot drift between stages.

Framing: the crop is a square centred on the face box with side
``BOX_SCALE * max(box width, box height)``. Boxes are dlib-style (brows to
chin, about the width of the cheeks); training jitters scale, shift and
rotation so boxes from other detectors work too. An image passed without a box
is taken to be such a crop already (CelebA-HQ / CACD framing): the face centred
and its box about half the image side. Non-square images are padded to a square.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import cv2
import numpy as np

Box = Tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels (typing.Tuple: Python 3.8)
INPUT_SIZE = 256
BOX_SCALE = 2.0
PREPROCESS_VERSION = "crop-v1"
MIN_IMAGE_SIDE = 16  # px: smaller images hold no face worth landmarking
# Face boxes beyond this (in pixels) are nonsense from a detector, not a face: refused before OpenCV sees them.
MAX_BOX_COORD = 1e6


class ImageError(ValueError):
    """An image that cannot be used, with the reason (and the file when known)."""


def describe() -> dict:
    """JSON-friendly preprocessing spec stored in checkpoints and ONNX metadata."""
    return {
        "version": PREPROCESS_VERSION,
        "input_size": INPUT_SIZE,
        "box_scale": BOX_SCALE,
        "crop": "square centred on the face box, side = box_scale * max(w, h), zero padding",
        "colour": "RGB",
        "layout": "NCHW float32",
        "normalise": "x / 127.5 - 1",
        "output": "landmarks (N, 68, 2) in crop coordinates divided by input_size (x right, y down)",
    }


def ensure_bgr(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return a 3-channel uint8 BGR view of a BGR, grayscale or BGRA image, or raise ImageError."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"{name}: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: unsupported image shape {image.shape}")
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:  # whatever the channels: one rule for every image
        raise ImageError(f"{name}: image of {image.shape[1]}x{image.shape[0]} px is too small "
                         f"(at least {MIN_IMAGE_SIDE} px a side)")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8; grayscale and alpha are converted, anything unreadable raises ImageError."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    return decode_image(np.fromfile(path, dtype=np.uint8), str(path))


def decode_image(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, anything OpenCV decodes) -> BGR uint8: 16-bit shifted to 8 bits, grey and
    alpha converted; anything unreadable raises ImageError naming ``name``."""
    buffer = np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray) else data
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if image is None:
        raise ImageError(f"{name}: not a readable image ({buffer.size} bytes: corrupt, empty or a format OpenCV "
                         "does not decode)")
    if image.dtype == np.uint16:  # 16-bit PNG/TIFF
        image = (image >> 8).astype(np.uint8)
    return ensure_bgr(image, name)


def whole_image_box(height: int, width: int) -> tuple[float, float, float, float]:
    """The face box that makes the crop exactly the (square-padded) whole image."""
    side = max(height, width) / BOX_SCALE
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0  # pixel centres
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def crop_matrix(
    box: tuple[float, float, float, float] | np.ndarray,
    size: int = INPUT_SIZE,
    scale: float = 1.0,
    rotation_deg: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
    flip: bool = False,
) -> np.ndarray:
    """2x3 affine matrix from image pixels to crop pixels for a face box (x0, y0, x1, y1).

    ``scale``, ``rotation_deg``, ``shift`` (fractions of the crop side) and ``flip`` are
    training-time jitter; the defaults give the canonical crop.
    """
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"invalid face box {box!r}: need four numbers x0, y0, x1, y1") from None
    if not all(abs(v) <= MAX_BOX_COORD for v in (x0, y0, x1, y1)):  # also false for NaN and inf
        raise ValueError(f"invalid face box {(x0, y0, x1, y1)}: coordinates must be finite and within "
                         f"+-{MAX_BOX_COORD:g} px")
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"invalid face box {(x0, y0, x1, y1)}: need x1 > x0 and y1 > y0")
    side = BOX_SCALE * max(x1 - x0, y1 - y0) * scale
    cx = (x0 + x1) / 2 + shift[0] * side
    cy = (y0 + y1) / 2 + shift[1] * side
    # pixel centres: image pixel (cx, cy) lands on the crop centre (size - 1) / 2 after resampling
    m = cv2.getRotationMatrix2D((cx, cy), rotation_deg, size / side)
    m[:, 2] += (size - 1) / 2 - np.array([cx, cy])
    if flip:
        m = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0, 0, 1]])
    return m


def box_in_crop(size: int = INPUT_SIZE, scale: float = 1.0) -> tuple[float, float, float, float]:
    """The face box as it lies in a canonical crop of ``size`` px (``scale``: the crop_matrix scale used)."""
    c, half = (size - 1) / 2, size / (BOX_SCALE * scale) / 2
    return (c - half, c - half, c + half, c + half)


def warp(image_bgr: np.ndarray, matrix: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Apply a crop matrix: uint8 BGR crop of size x size, zeros outside the image."""
    zoom = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if zoom < 0.5:  # large downscale: pre-shrink with area averaging to avoid aliasing
        f = max(2.0 * zoom, 1.0 / min(image_bgr.shape[:2]))  # never below 1 px, even for a box 1000x the image
        small = cv2.resize(image_bgr, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        fx = small.shape[1] / image_bgr.shape[1]
        fy = small.shape[0] / image_bgr.shape[0]
        matrix = matrix @ np.diag([1 / fx, 1 / fy, 1.0])
        image_bgr = small
    return cv2.warpAffine(
        image_bgr, matrix, (size, size), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
    )


def to_input(crops_bgr: np.ndarray) -> np.ndarray:
    """uint8 BGR crops (H, W, 3) or (N, H, W, 3) -> float32 NCHW RGB in [-1, 1]."""
    crops = np.asarray(crops_bgr)
    if crops.ndim == 3:
        crops = crops[None]
    # One cast-copy straight into the NCHW float buffer, then in-place scaling: ~7x faster than the
    # obvious astype/divide chain at batch 1, with identical values.
    x = np.empty(crops.shape[:1] + (3,) + crops.shape[1:3], np.float32)
    x[:] = crops[..., ::-1].transpose(0, 3, 1, 2)
    x /= np.float32(127.5)
    x -= np.float32(1.0)
    return x


def occlude(crop: np.ndarray, mask: np.ndarray | None, fill: np.ndarray | None = None) -> np.ndarray:
    """Occlusion as in the paper: Hadamard product of a uint8 HxWx3 crop and an HxW {0,1} mask (1 = kept).

    ``fill`` (uint8 HxWx3) puts a textured occluder into the holes instead of black.
    """
    if mask is None:
        return crop
    kept = mask[:, :, None]
    if fill is None:
        return (crop * kept).astype(crop.dtype)
    return np.where(kept > 0.5, crop, fill).astype(crop.dtype)


def crop_face(image: np.ndarray, box=None) -> tuple[np.ndarray, np.ndarray]:
    """The canonical crop of a face: (uint8 256x256 BGR crop, 2x3 crop matrix).

    ``image``: BGR, grayscale or BGRA; ``box``: the face box, or None when the image is the face crop.
    Every stage that feeds the network (runtime, evaluation, golden set, calibration, benchmark) crops here.
    """
    image = ensure_bgr(image)
    if box is None:
        box = whole_image_box(*image.shape[:2])
    m = crop_matrix(box)
    return warp(image, m), m


def preprocess(image: np.ndarray, box=None) -> tuple[np.ndarray, np.ndarray]:
    """Image (+ optional face box) -> (1x3x256x256 float32 input, 2x3 crop matrix)."""
    crop, m = crop_face(image, box)
    return to_input(crop), m


def apply_matrix(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (..., 2) points through a 2x3 affine matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def invert_matrix(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def output_to_image(output: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Network output (68, 2) in normalised crop coordinates -> image pixels (float32)."""
    crop_px = np.asarray(output, dtype=np.float64) * INPUT_SIZE
    return apply_matrix(crop_px, invert_matrix(matrix)).astype(np.float32)


def image_to_target(landmarks: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Landmarks in image pixels -> normalised crop coordinates (the training target)."""
    return (apply_matrix(landmarks, matrix) / INPUT_SIZE).astype(np.float32)
