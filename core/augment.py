"""Training-time appearance changes: photometric degradation, textured occluders, face-score negatives.

Real inputs are greyscale, blurred, JPEG-compressed, small or badly lit, and real occluders (hands,
masks, cups, hair) are textured, not black. Each function takes a numpy Generator, so a sample's
augmentation depends only on its seed.
"""
from __future__ import annotations

from typing import Callable, Optional

import cv2
import numpy as np

from .preprocess import crop_matrix, warp


def photometric(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uint8 BGR crop degraded the ways cameras and pipelines degrade faces (each step by chance)."""
    img = crop
    if rng.random() < 0.5:  # brightness and contrast
        img = np.clip(img.astype(np.float32) * rng.uniform(0.6, 1.4) + rng.uniform(-40, 40), 0, 255).astype(np.uint8)
    if rng.random() < 0.3:  # colour: saturation and hue
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-8, 8)) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
        img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    if rng.random() < 0.1:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if rng.random() < 0.15:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0))
    if rng.random() < 0.15:  # low resolution: down, then back up
        size = img.shape[0]
        small = max(16, int(size / rng.uniform(2, 5)))
        img = cv2.resize(cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA), (size, size),
                         interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.1:
        img = np.clip(img + rng.normal(0, rng.uniform(2, 8), img.shape), 0, 255).astype(np.uint8)
    if rng.random() < 0.2:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 70))])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return img


def texture(rng: np.random.Generator, size: int, source: np.ndarray | None = None) -> np.ndarray:
    """A uint8 BGR size x size occluder texture: a patch of ``source`` (another image), noise or a flat colour."""
    kind = rng.choice(["patch", "noise", "flat"], p=[0.5, 0.25, 0.25]) if source is not None else \
        rng.choice(["noise", "flat"])
    if kind == "patch":
        h, w = source.shape[:2]
        side = rng.uniform(0.2, 0.6) * min(h, w)
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
        m = crop_matrix((x0, y0, x0 + side, y0 + side), size, scale=0.5, rotation_deg=float(rng.uniform(-90, 90)),
                        flip=bool(rng.random() < 0.5))
        return warp(np.asarray(source), m, size)
    colour = rng.integers(0, 256, 3)
    if kind == "flat":
        return np.broadcast_to(colour.astype(np.uint8), (size, size, 3)).copy()
    cells = int(rng.integers(2, 32))
    coarse = cv2.resize(rng.normal(0, rng.uniform(10, 60), (cells, cells, 3)).astype(np.float32), (size, size),
                        interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, rng.uniform(0, 15), (size, size, 3))
    return np.clip(colour + coarse + fine, 0, 255).astype(np.uint8)


def negative_matrix(box, rng: np.random.Generator, size: int) -> np.ndarray:
    """A crop matrix that frames ``box``'s face far from the way training boxes do (a face_score negative).

    Training positives are jittered by scale e^±0.2 and shift ±6 % of the crop; negatives are shifted by
    30-60 % of the crop (the face at or past the border), zoomed in e^0.9-e^1.5 (a part of the face) or
    out e^0.9-e^1.4 (a small face among its surroundings).
    """
    kind = rng.choice(["shift", "zoom-in", "zoom-out"], p=[0.5, 0.3, 0.2])
    scale, shift = 1.0, (0.0, 0.0)
    if kind == "shift":
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.6)
        shift = (float(dist * np.cos(angle)), float(dist * np.sin(angle)))
    elif kind == "zoom-in":
        scale = float(np.exp(-rng.uniform(0.9, 1.5)))
        shift = tuple(float(v) for v in rng.uniform(-0.3, 0.3, 2))
    else:
        scale = float(np.exp(rng.uniform(0.9, 1.4)))
    return crop_matrix(box, size, scale=scale, rotation_deg=float(rng.uniform(-30, 30)), shift=shift,
                       flip=bool(rng.random() < 0.5))


BACKGROUND_NEGATIVES = 0.2  # share of face_score negatives that are background textures, not a face framed off


def negative_crop(image: np.ndarray, box, rng: np.random.Generator, size: int,
                  texture_source: Callable[[], Optional[np.ndarray]]) -> np.ndarray:
    """A face_score negative of the face at ``box`` in ``image``: framed far off it (negative_matrix), or, one
    time in five, a background texture (patches of ``texture_source()``, another image, or noise)."""
    if rng.random() < BACKGROUND_NEGATIVES:
        return texture(rng, size, texture_source())
    return warp(image, negative_matrix(box, rng, size), size)
