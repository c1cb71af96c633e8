"""ESR*: dlib's regression-tree cascade (Kazemi & Sullivan 2014, the successor of Cao et al.'s ESR), trained
on the training split with MobileNet-L's training occlusion.

    python -m train.esr --faces ../shared/data/faces --out runs/esr/esr.dat [--limit 2000]

Each face is the canonical 256x256 crop MobileNet-L sees (train.train's crop cache of the whole split,
built first if absent) under one random training mask (core.occlusion.random_training_mask, seeded by
--seed and the face), so the cascade learns to cope with holes as the network does. dlib gets the face
box in crop coordinates (box_in_crop) and the 68 teacher points in crop pixels; --limit faces are taken
evenly spread over the split, so all three photo sets are in it.

Defaults: dlib's (which follow Kazemi & Sullivan) except 200 trees per cascade level instead of 500, so
that 2,000 faces train in about 3 minutes on 2 busy cores (dlib's 500: about 7). That is 20 initial
shapes per face (oversampling), cascade depth 10, tree depth 4, shrinkage nu 0.1 and a feature pool of
400 pixels. Training time is about linear in faces x oversampling x cascade depth x trees.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from core.data import DEFAULT_FACES, labels_path, load_labels, read_split
from core.metrics import nmse
from core.preprocess import INPUT_SIZE, box_in_crop

from .annotate import annotate
from .dataset import CropCache, sample
from .evaluate import Predictor


def training_faces(faces_dir: Path, limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 BGR occluded crops (N, 256, 256, 3), teacher points in crop pixels (N, 68, 2)) of the train split."""
    paths = read_split(faces_dir, "train")
    if not paths:
        raise SystemExit(f"{faces_dir}: needs splits.csv with train images")
    if not labels_path(faces_dir).exists():
        annotate(faces_dir, None)
    labels = load_labels(faces_dir, paths)
    cache = CropCache(faces_dir, labels, f"train-n{len(labels.paths)}")  # the same cache as train.train
    n = len(cache) if limit is None else min(limit, len(cache))
    crops, points = [], []
    for i in np.linspace(0, len(cache) - 1, n).astype(int):  # distinct indices, since n <= len(cache)
        # augment=False: the canonical crop (dlib gets the box, so no jitter) plus a random training mask
        s = sample(cache, int(i), np.random.default_rng([seed, int(i)]), augment=False)
        crops.append(s["crop"])
        points.append(s["landmarks"] * INPUT_SIZE)
    return np.stack(crops), np.stack(points)


def _dlib_image(crop_bgr: np.ndarray) -> np.ndarray:
    # dlib's trees compare pixel intensities; grey crops use a third of the memory and train and predict alike
    return cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2GRAY)


def _dlib_box():
    import dlib

    return dlib.rectangle(*(int(round(v)) for v in box_in_crop()))  # rounded as the teacher rounds boxes


def training_options(oversampling: int = 20, cascade_depth: int = 10, tree_depth: int = 4, trees: int = 200,
                     threads: int = 2, seed: int = 0, verbose: bool = True):
    """dlib.shape_predictor_training_options with this module's defaults (see the module docstring)."""
    import dlib

    options = dlib.shape_predictor_training_options()
    options.oversampling_amount = oversampling
    options.cascade_depth = cascade_depth
    options.tree_depth = tree_depth
    options.num_trees_per_cascade_level = trees
    options.nu = 0.1
    options.feature_pool_size = 400
    options.num_threads = threads
    options.random_seed = str(seed)
    options.be_verbose = verbose
    return options


def train(crops: np.ndarray, points: np.ndarray, options):
    """Train a dlib.shape_predictor on uint8 BGR crops with points (N, 68, 2) in crop pixels."""
    import dlib

    box = _dlib_box()
    images = [_dlib_image(c) for c in crops]
    objects = [[dlib.full_object_detection(box, dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in p]))]
               for p in points]
    return dlib.train_shape_predictor(images, objects, options)


def esr_predictor(path: Path) -> Predictor:
    """Predictor over a trained ESR* model: crops (N, 256, 256, 3) uint8 BGR -> normalised landmarks (N, 68, 2)."""
    try:
        import dlib
    except ImportError as e:
        raise RuntimeError("ESR* needs dlib: `pip install dlib-bin`") from e
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ESR* model not found; train it with `python -m train.esr --out {path}`")
    try:
        predictor = dlib.shape_predictor(str(path))
    except RuntimeError as e:
        raise ValueError(f"{path}: not a dlib shape predictor ({e})") from e
    box = _dlib_box()
    parts = predictor(np.zeros((INPUT_SIZE, INPUT_SIZE), np.uint8), box).num_parts  # not exposed otherwise
    if parts != 68:
        raise ValueError(f"{path}: predicts {parts} points, not 68")

    def predict(crops: np.ndarray) -> np.ndarray:
        shapes = [predictor(_dlib_image(c), box) for c in crops]
        return np.array([[(p.x, p.y) for p in s.parts()] for s in shapes], np.float32) / INPUT_SIZE

    return predict


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="face folder with splits.csv (default: %(default)s)")
    ap.add_argument("--out", type=Path, required=True, help="the trained model, a dlib .dat file")
    ap.add_argument("--limit", type=int, default=2000, help="training faces, spread over the split (default: %(default)s)")
    ap.add_argument("--oversampling", type=int, default=20, help="initial shapes per face (default: %(default)s)")
    ap.add_argument("--cascade-depth", type=int, default=10, help="cascade levels (default: %(default)s)")
    ap.add_argument("--tree-depth", type=int, default=4, help="depth of each regression tree (default: %(default)s)")
    ap.add_argument("--trees", type=int, default=200, help="trees per cascade level (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="dlib threads (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="occlusion masks and dlib's sampling (default: %(default)s)")
    args = ap.parse_args(argv)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)

    crops, points = training_faces(args.faces, args.limit, args.seed)
    options = training_options(args.oversampling, args.cascade_depth, args.tree_depth, args.trees, args.threads,
                               args.seed)
    log(f"training ESR* on {len(crops)} occluded training faces: {options}")
    t0 = time.time()
    predictor = train(crops, points, options)
    seconds = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")  # same folder, so os.replace is atomic
    try:
        predictor.save(str(tmp))
        os.replace(tmp, args.out)
    finally:
        tmp.unlink(missing_ok=True)
    train_nmse = nmse(esr_predictor(args.out)(crops) * INPUT_SIZE, points)
    log(f"trained in {seconds:.0f} s; NMSE on its own (occluded) training faces {train_nmse:.2f}; wrote {args.out}")
    return {"faces": len(crops), "seconds": seconds, "train_nmse": train_nmse}


if __name__ == "__main__":
    main()
