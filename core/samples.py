"""The sample recipe of evaluation, calibration and the golden set: a labelled face, cropped from its
box, occluded by a condition's mask (black or textured), and what is visible of it afterwards.

The network input itself is core.preprocess (crop_face -> occlude -> to_input); this module adds the
evaluation protocol's faces, conditions and negatives, so every stage builds them the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import augment
from .augment import texture
from .occlusion import TEXTURED, eval_mask
from .preprocess import INPUT_SIZE, crop_face, image_to_target, invert_matrix, occlude, read_image


@dataclass
class Face:
    path: str
    box: np.ndarray
    landmarks: np.ndarray
    yaw: float
    size: tuple[int, int] = (0, 0)  # image width, height


def visible_points(target: np.ndarray, mask: np.ndarray | None, inside: np.ndarray) -> np.ndarray:
    """1.0 where a point is seen: inside the crop, inside the source image and not under a hole of the mask.

    ``target``: (68, 2) normalised crop coordinates; ``mask``: HxW, 1 = kept (None = no occlusion).
    """
    px = np.floor(np.asarray(target) * INPUT_SIZE).astype(int)
    in_crop = ((px >= 0) & (px < INPUT_SIZE)).all(-1)
    seen = in_crop & np.asarray(inside, bool)
    if mask is not None:
        xy = np.clip(px, 0, INPUT_SIZE - 1)
        seen &= mask[xy[:, 1], xy[:, 0]] > 0.5
    return seen.astype(np.float32)


def occluded_crops(faces_dir: Path, face: Face, masks_dir: Path | None, conditions, seed: int,
                   texture_source: np.ndarray | None = None):
    """(crop matrix, {condition: (mask id, mask or None, occluded uint8 crop)}) for one face.

    ``texture_source``: the image whose patches may fill the textured condition's holes (another face).
    """
    crop, m = crop_face(read_image(Path(faces_dir) / face.path), face.box)
    out = {}
    for cond in conditions:
        mask_id, mask, fill = occluder(face, cond, masks_dir, seed, texture_source)
        out[cond] = (mask_id, mask, occlude(crop, mask, fill))
    return m, out


def occluder(face: Face, condition: str, masks_dir: Path | None, seed: int,
             texture_source: np.ndarray | None = None) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """(mask id, 256x256 mask or None, texture fill or None = black) of one condition for one face."""
    mask_id, mask = eval_mask(condition, masks_dir, face.path, seed)
    fill = None
    if condition == TEXTURED:
        fill = texture(np.random.default_rng([seed, 7, *face.path.encode()]), INPUT_SIZE, texture_source)
    return mask_id, mask, fill


def occluded_image(image: np.ndarray, matrix: np.ndarray, mask: np.ndarray | None,
                   fill: np.ndarray | None = None) -> np.ndarray:
    """The whole image occluded as its crop (``matrix``) is by ``mask`` / ``fill``: the crop's occluder laid
    back onto the image, for pipelines that must find the face themselves (train.end_to_end, video)."""
    if mask is None:
        return image
    size = (image.shape[1], image.shape[0])
    back = invert_matrix(matrix)
    kept = cv2.warpAffine(mask, back, size, flags=cv2.INTER_NEAREST, borderValue=1.0)
    if fill is None:
        fill_img = np.zeros_like(image)
    else:
        fill_img = cv2.warpAffine(fill, back, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return np.where(kept[:, :, None] > 0.5, image, fill_img).astype(image.dtype)


def negative_crop(faces_dir: Path, face: Face, seed: int, texture_source: np.ndarray | None = None) -> np.ndarray:
    """A face_score negative made from a test face as training makes them (core.augment.negative_crop)."""
    rng = np.random.default_rng([seed, 99, *face.path.encode()])
    return augment.negative_crop(read_image(Path(faces_dir) / face.path), face.box, rng, INPUT_SIZE,
                                 lambda: texture_source)


def inside_image(landmarks: np.ndarray, size) -> np.ndarray:
    """(..., 68) True where a point (image pixels) lies inside an image of ``size`` (width, height), (..., 2)."""
    return ((landmarks >= 0) & (landmarks <= np.asarray(size) - 1)).all(-1)


def visibility_truth(face: Face, matrix: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """(68,) 1 = the teacher's point is seen: in the crop, in the image and not under the mask."""
    return visible_points(image_to_target(face.landmarks, matrix), mask, inside_image(face.landmarks, face.size))


