"""The calibration set: N training images, half clean and half occluded with training masks.

Both INT8 paths (ModelOpt Q/DQ on the CPU, TensorRT's implicit calibrators on
8.5-10.x) read the same set, so their scales come from the same pixels. Its
``key`` names the images, the masks' seed, the preprocessing version and the face
boxes; a calibration cache carries that key and is refused when it does not match.

Framing: the scales should come from crops framed as the engine will see them. The
teacher's boxes frame the images that are labelled (train.annotate); the others (a
fresh machine, where only the test faces get labelled; a user's own images) are framed
by the shipped face detector (runtime.faces: YuNet, corrected to the training framing),
the way LandmarkDetector.detect finds faces; ``whole`` takes each image as the face crop.
"""
from __future__ import annotations

import collections
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
from runtime.faces import detect_faces

# 1024, not 512: INT8 ΔNMSE under 50-60 % occlusion swung from -0.15 to +0.31 between two 512-image draws;
# two 1024-image draws gave -0.21 and +0.03 (docs/deployment.md). Costs ~0.8 GB of float32 while calibrating.
DEFAULT_COUNT = 1024
# where the crops' boxes come from: "auto" is the teacher's box for a labelled image, else the detector's
FRAMINGS = ("auto", "teacher", "detector", "whole")


@dataclass
class CalibrationSet:
    inputs: np.ndarray  # float32 (N, 3, 256, 256), network-ready
    paths: list[str]
    occluded: np.ndarray  # bool (N,)
    key: str  # sha256 of (paths, seed, preprocessing version, boxes)
    framing: str  # how the crops were framed: "teacher boxes", or counts such as "detector boxes 1020, whole image 4"

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


def build_calibration_set(faces_dir: Path, count: int = DEFAULT_COUNT, seed: int = 0,
                          framing: str = "auto") -> CalibrationSet:
    """Preprocess the selected images; every second one is occluded with a training mask.

    ``framing`` (FRAMINGS): the boxes the faces are cropped from (module docstring). "auto" crops each labelled
    image from its teacher box and every other one from the detector's; an image left without a box (not
    labelled, no face found) is taken whole.
    """
    if framing not in FRAMINGS:
        raise ValueError(f"calibration framing {framing!r}: choose from {', '.join(FRAMINGS)}")
    faces_dir = Path(faces_dir)
    paths = select_images(faces_dir, count, seed)
    teacher = {}
    if framing in ("auto", "teacher") and labels_path(faces_dir).exists():
        labels = load_labels(faces_dir, paths)  # the selected images that are labelled
        teacher = dict(zip(labels.paths, labels.boxes))
    if framing == "teacher" and not teacher:
        raise SystemExit(f"{faces_dir}: its calibration images are not labelled, so there are no teacher boxes to "
                         f"calibrate on; run `python -m train.annotate --faces {faces_dir}` or choose another framing")
    rng = np.random.default_rng([seed, 1])
    inputs, used, occluded, crop_boxes, sources = [], [], [], [], []
    for i, rel in enumerate(Progress(paths, desc="calibration set", unit="img")):
        try:
            image = read_image(faces_dir / rel)
        except ImageError as e:
            print(f"skipped: {e}", file=sys.stderr)
            continue
        box, source = teacher.get(rel), "teacher boxes"
        if box is None and framing in ("auto", "detector"):
            found = detect_faces(image)  # largest first
            box, source = (found[0] if found else None), "detector boxes"
        crop, _ = crop_face(image, box)  # no box: the image is the face crop
        mask = None
        while i % 2 and mask is None:  # the occluded half: redraw the training generator's clean cases
            mask = random_training_mask(rng)
        inputs.append(to_input(occlude(crop, mask))[0])
        used.append(rel)
        occluded.append(mask is not None)
        crop_boxes.append(None if box is None else np.round(np.asarray(box, float), 2).tolist())
        sources.append(source if box is not None else "whole image")
    if not inputs:
        raise SystemExit(f"{faces_dir}: none of the calibration images could be read")
    key = calibration_key(used, seed, None if framing == "whole" else crop_boxes)
    counts = collections.Counter(sources)
    label = ", ".join(f"{name} {n}" for name, n in counts.most_common()) if len(counts) > 1 else sources[0]
    return CalibrationSet(np.stack(inputs), used, np.array(occluded), key, label)
