"""Occlusion masks: random ones for training, the Liu et al. test masks and the centre square for evaluation.

Masks are float32 HxW arrays with 1 = kept pixel and 0 = hole; occlusion is the
Hadamard product ``I * M`` applied to the 256x256 network crop, as in the paper.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .preprocess import INPUT_SIZE

# Liu et al. test masks come in bins of 2,000 files by hole ratio, in file order.
LIU_BINS: dict[str, tuple[float, float, int]] = {  # name: (low, high, first file index)
    "10-20": (0.10, 0.20, 2000),
    "30-40": (0.30, 0.40, 6000),
    "40-50": (0.40, 0.50, 8000),
    "50-60": (0.50, 0.60, 10000),
}
LIU_BIN_FILES = 2000
CONDITIONS = ("clean", "10-20", "30-40", "40-50", "50-60", "center25")  # the paper's protocol
PAPER_CONDITIONS = CONDITIONS[1:]  # the columns of the paper's Tables 3 and 4 (no clean column)
# Beyond the paper: the 30-40 % Liu masks (the same mask per face as "30-40") filled with texture instead of
# black, as real occluders are (core.augment.texture: a patch of another test face, noise or a flat colour).
TEXTURED = "textured"
TEXTURED_BIN = "30-40"
EVAL_CONDITIONS = (*CONDITIONS, TEXTURED)


def coverage(mask: np.ndarray) -> float:
    """Fraction of hole pixels."""
    return float(1.0 - mask.mean())


def center_mask(size: int = INPUT_SIZE) -> np.ndarray:
    """The paper's centre mask: a centred square of half the side (25% of the area)."""
    m = np.ones((size, size), np.float32)
    q = size // 4
    m[q:size - q, q:size - q] = 0
    return m


@lru_cache(maxsize=4096)
def load_liu_mask(path: str, size: int = INPUT_SIZE) -> np.ndarray:
    """A Liu et al. mask (255 = hole) resized to size x size, as 1 = kept / 0 = hole."""
    raw = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if raw is None:
        raise FileNotFoundError(f"{path}: mask missing or unreadable")
    raw = cv2.resize(raw, (size, size), interpolation=cv2.INTER_NEAREST)
    return (raw < 128).astype(np.float32)


def bin_of(cov: float) -> str | None:
    """The Liu et al. bin (of those evaluated) a hole coverage falls in, or None."""
    for name, (lo, hi, _) in LIU_BINS.items():
        if lo <= cov < hi:
            return name
    return None


def pick_liu_mask(masks_dir: Path, bin_name: str, key: str, seed: int = 0, tries: int = 50) -> tuple[str, np.ndarray]:
    """Deterministically choose a mask for (face key, bin) whose coverage at 256 px lies in the bin.

    The choice depends only on the seed, the bin and the face key, so every run
    (and every model) sees the same occlusion for the same face.
    """
    first = LIU_BINS[bin_name][2]
    rng = np.random.default_rng([seed, first, *key.encode()])
    for _ in range(tries):
        name = f"{first + int(rng.integers(LIU_BIN_FILES)):05d}.png"
        mask = load_liu_mask(str(Path(masks_dir) / name))
        if bin_of(coverage(mask)) == bin_name:
            return name, mask
    raise RuntimeError(f"no mask with coverage in {bin_name} after {tries} draws in {masks_dir}")


def eval_mask(condition: str, masks_dir: Path | None, key: str, seed: int = 0) -> tuple[str, np.ndarray | None]:
    """(mask id, mask) for one evaluation condition of one face."""
    if condition == "clean":
        return "", None
    if condition == "center25":
        return "center25", center_mask()
    if masks_dir is None:
        raise ValueError(f"condition {condition} needs the Liu et al. masks folder")
    return pick_liu_mask(masks_dir, TEXTURED_BIN if condition == TEXTURED else condition, key, seed)


# Smooth noise at these (cell size in px, weight) scales, thresholded, makes fragment masks: coarse blobs with
# fine ragged edges, holes and islands, the texture of the Liu et al. masks that thick strokes lack.
FRAGMENT_SCALES = ((32, 1.0), (8, 0.6), (4, 0.3))


def fragment_mask(rng: np.random.Generator, size: int = INPUT_SIZE) -> np.ndarray:
    """Fragmented holes (5-60 % of the crop): thresholded multi-scale noise. 1 = kept, 0 = hole."""
    noise = sum(w * cv2.resize(rng.random((size // cell, size // cell)).astype(np.float32), (size, size),
                               interpolation=cv2.INTER_CUBIC) for cell, w in FRAGMENT_SCALES)
    holes = noise > np.quantile(noise, 1 - rng.uniform(0.05, 0.6))
    return 1.0 - holes.astype(np.float32)


def random_training_mask(rng: np.random.Generator, size: int = INPUT_SIZE,
                         fragments: float = 0.0, heavy: float = 0.0) -> np.ndarray | None:
    """Synthetic occlusion: free-form strokes and blobs (0-60%), rectangles, the centre square, or none;
    with probability ``fragments`` a fragment mask instead, with probability ``heavy`` heavy occlusion
    instead: the centre square (3 in 10) or free-form holes over 40-70 % (no random draw when 0, so old
    runs replay)."""
    if heavy and rng.random() < heavy:
        return center_mask(size) if rng.random() < 0.3 else freeform_mask(rng, size, rng.uniform(0.4, 0.7))
    if fragments and rng.random() < fragments:
        return fragment_mask(rng, size)
    kind = rng.choice(["clean", "freeform", "rectangle", "center"], p=[0.15, 0.6, 0.17, 0.08])
    if kind == "clean":
        return None
    if kind == "center":
        return center_mask(size)
    if kind == "rectangle":
        holes = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            w, h = rng.integers(size // 6, size * 2 // 3, 2)
            x, y = rng.integers(0, size - w), rng.integers(0, size - h)
            holes[y:y + h, x:x + w] = 1
        return 1.0 - holes.astype(np.float32)
    return freeform_mask(rng, size, rng.uniform(0.0, 0.6))


def freeform_mask(rng: np.random.Generator, size: int, target: float) -> np.ndarray:
    """Brush strokes and blobs until at least ``target`` of the crop is covered. 1 = kept, 0 = hole."""
    holes = np.zeros((size, size), np.uint8)
    while holes.mean() < target:
        if rng.random() < 0.7:  # a brush stroke: random walk with thick lines
            x, y = rng.integers(0, size, 2)
            width = int(rng.integers(8, 30))
            for _ in range(int(rng.integers(3, 10))):
                angle, length = rng.uniform(0, 2 * np.pi), rng.integers(15, 70)
                nx = int(np.clip(x + length * np.cos(angle), 0, size - 1))
                ny = int(np.clip(y + length * np.sin(angle), 0, size - 1))
                cv2.line(holes, (int(x), int(y)), (nx, ny), 1, width)
                x, y = nx, ny
        else:  # a blob
            centre = tuple(int(v) for v in rng.integers(0, size, 2))
            axes = tuple(int(v) for v in rng.integers(10, size // 4, 2))
            cv2.ellipse(holes, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return 1.0 - holes.astype(np.float32)
