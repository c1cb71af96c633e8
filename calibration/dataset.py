"""The calibration set: N training images, half clean and half occluded with training masks.

Both INT8 paths (ModelOpt Q/DQ on the CPU, TensorRT's implicit calibrators on
8.5-10.x) read the same set, so their scales come from the same pixels. Its
``key`` names the images, the masks' seed and the preprocessing version; a
calibration cache carries that key and is refused when it does not match.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data import labels_path, load_labels, read_split
from core.occlusion import random_training_mask
from core.preprocess import PREPROCESS_VERSION, ImageError, crop_face, occlude, read_image, to_input
from core.progress import Progress

# 1024, not 512: INT8 ΔNMSE under 50-60 % occlusion swung from -0.15 to +0.31 between two 512-image draws;
# two 1024-image draws gave -0.21 and +0.03 (docs/deployment.md). Costs ~0.8 GB of float32 while calibrating.
DEFAULT_COUNT = 1024


@dataclass
class CalibrationSet:
    inputs: np.ndarray  # float32 (N, 3, 256, 256), network-ready
    paths: list[str]
    occluded: np.ndarray  # bool (N,)
    key: str  # sha256 of (paths, seed, preprocessing version)
    framing: str  # "teacher boxes" or "whole image"

    def batches(self, batch: int):
        for i in range(0, len(self.inputs), batch):
            yield self.inputs[i:i + batch]


def calibration_key(paths: list[str], seed: int, boxes: list | None = None) -> str:
    """What the calibration inputs depend on, the face boxes they were cropped from included (None: whole
    images): a cache calibrated before the faces were labelled, or on other labels, is stale."""
    doc = json.dumps({"paths": paths, "seed": seed, "preprocess": PREPROCESS_VERSION, "occluded": "every 2nd",
                      "boxes": boxes})
    return hashlib.sha256(doc.encode()).hexdigest()


def select_images(faces_dir: Path, count: int = DEFAULT_COUNT, seed: int = 0) -> list[str]:
    """``count`` images of the training split (all images if there is no splits.csv), chosen by seed."""
    paths = read_split(faces_dir, "train") or read_split(faces_dir, "all")
    if not paths:
        raise SystemExit(f"{faces_dir}: no images to calibrate on")
    if count > len(paths):
        print(f"note: only {len(paths)} calibration images in {faces_dir} (asked for {count})", file=sys.stderr)
        count = len(paths)
    rng = np.random.default_rng(seed)
    return sorted(paths[i] for i in rng.choice(len(paths), size=count, replace=False))


def build_calibration_set(faces_dir: Path, count: int = DEFAULT_COUNT, seed: int = 0) -> CalibrationSet:
    """Preprocess the selected images; every second one is occluded with a training mask.

    Faces are cropped from their teacher boxes when the folder has been labelled
    (``train.annotate``); otherwise each image is taken whole, as an aligned crop.
    """
    faces_dir = Path(faces_dir)
    paths = select_images(faces_dir, count, seed)
    boxes = {}
    if labels_path(faces_dir).exists():
        labels = load_labels(faces_dir, paths)
        boxes = dict(zip(labels.paths, labels.boxes))
    rng = np.random.default_rng([seed, 1])
    inputs, used, occluded, crop_boxes = [], [], [], []
    for i, rel in enumerate(Progress(paths, desc="calibration set", unit="img")):
        try:
            image = read_image(faces_dir / rel)
        except ImageError as e:
            print(f"skipped: {e}", file=sys.stderr)
            continue
        box = boxes.get(rel)
        crop, _ = crop_face(image, box)  # no teacher box: the image is the face crop
        mask = None
        while i % 2 and mask is None:  # the occluded half: redraw the training generator's clean cases
            mask = random_training_mask(rng)
        inputs.append(to_input(occlude(crop, mask))[0])
        used.append(rel)
        occluded.append(mask is not None)
        crop_boxes.append(None if box is None else np.round(np.asarray(box, float), 2).tolist())
    if not inputs:
        raise SystemExit(f"{faces_dir}: none of the calibration images could be read")
    key = calibration_key(used, seed, crop_boxes if boxes else None)
    return CalibrationSet(np.stack(inputs), used, np.array(occluded), key,
                          "teacher boxes" if boxes else "whole image")
