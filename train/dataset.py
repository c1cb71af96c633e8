"""Training/validation samples: crops decoded once into a cache, then jittered and occluded on the fly."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from runtime.files import atomic_write_bytes
from runtime.preprocess import (
    INPUT_SIZE, PREPROCESS_VERSION, ImageError, box_in_crop, crop_matrix, image_to_target, occlude, read_image,
    to_input, warp,
)
from runtime.schema import MIRROR

from .data import Labels, cache_dir
from .occlusion import random_training_mask

# The cache holds each face at the canonical framing plus a margin for jitter, at 1.25x the input size.
CACHE_MARGIN = 1.25
CACHE_SIZE = int(INPUT_SIZE * CACHE_MARGIN)
# In cache coordinates every face box is the same: centred, BOX_SCALE * side = INPUT_SIZE.
CACHE_BOX = box_in_crop(CACHE_SIZE, CACHE_MARGIN)


class CropCache:
    """uint8 BGR crops (N, CACHE_SIZE, CACHE_SIZE, 3) in a memory-mapped .npy plus landmarks in cache pixels."""

    def __init__(self, faces_dir: Path, labels: Labels, tag: str):
        key = hashlib.sha1(json.dumps(
            [PREPROCESS_VERSION, CACHE_SIZE, labels.paths, labels.boxes.round(2).tolist()]).encode()).hexdigest()[:12]
        base = cache_dir(faces_dir) / f"crops-{tag}-{key}"
        self.npy, self.meta = base.with_suffix(".npy"), base.with_suffix(".json")
        if not (self.npy.exists() and self.meta.exists()):
            self._build(Path(faces_dir), labels)
        meta = json.loads(self.meta.read_text())
        self.paths: list[str] = meta["paths"]
        self.landmarks = np.array(meta["landmarks"], dtype=np.float32)
        self.images = np.load(self.npy, mmap_mode="r")

    def _build(self, faces_dir: Path, labels: Labels) -> None:
        tmp = self.npy.with_name(f".{self.npy.name}.{os.getpid()}.tmp")
        self.npy.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(labels.paths), CACHE_SIZE, CACHE_SIZE, 3))
        landmarks = []
        for i, rel in enumerate(tqdm(labels.paths, desc=f"caching {self.npy.stem}", unit="img")):
            try:
                image = read_image(faces_dir / rel)
            except ImageError as e:
                tmp.unlink(missing_ok=True)
                raise ImageError(f"{e} (it was labelled before: re-run train.annotate)") from e
            m = crop_matrix(labels.boxes[i], size=CACHE_SIZE, scale=CACHE_MARGIN)
            out[i] = warp(image, m, CACHE_SIZE)
            landmarks.append(image_to_target(labels.landmarks[i], m) * INPUT_SIZE)
        out.flush()
        del out
        os.replace(tmp, self.npy)
        atomic_write_bytes(self.meta, json.dumps(
            {"paths": labels.paths, "landmarks": np.round(np.array(landmarks).reshape(-1, 68, 2), 3).tolist()}).encode())

    def __len__(self) -> int:
        return len(self.paths)


def sample(cache: CropCache, i: int, rng: np.random.Generator | None, augment: bool,
           mask: np.ndarray | None | str = "random") -> tuple[np.ndarray, np.ndarray]:
    """One (uint8 256x256 crop, normalised target) from the cache; jitter and mask when asked."""
    if augment:
        m = crop_matrix(CACHE_BOX, INPUT_SIZE, scale=float(np.exp(rng.uniform(-0.2, 0.2))),
                        rotation_deg=float(rng.uniform(-15, 15)),
                        shift=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.06, 0.06))),
                        flip=bool(rng.random() < 0.5))
    else:
        m = crop_matrix(CACHE_BOX, INPUT_SIZE)
    crop = warp(np.asarray(cache.images[i]), m, INPUT_SIZE)
    target = image_to_target(cache.landmarks[i], m)
    if m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0] < 0:  # mirrored: left and right points swap names
        target = target[MIRROR]
    if isinstance(mask, str):
        mask = random_training_mask(rng) if rng is not None else None
    return occlude(crop, mask), target


class TrainSet(torch.utils.data.Dataset):
    """Jittered, randomly occluded samples; the random stream depends on (seed, epoch, index) only."""

    def __init__(self, cache: CropCache, seed: int):
        self.cache, self.seed, self.epoch = cache, seed, 0

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        crop, target = sample(self.cache, i, rng, augment=True)
        return torch.from_numpy(to_input(crop)[0]), torch.from_numpy(target)


def validation_batches(cache: CropCache, seed: int = 1234) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fixed validation inputs: each face clean, under the centre square and under two seeded synthetic masks.

    The Liu et al. masks are kept for the final evaluation, so model selection never sees them.
    """
    from .occlusion import center_mask

    xs, ys, kinds = [], [], []
    for i in range(len(cache)):
        rng = np.random.default_rng([seed, i])
        for kind, mask in (("clean", None), ("center25", center_mask()),
                           ("synthetic", random_training_mask(rng)), ("synthetic", random_training_mask(rng))):
            crop, target = sample(cache, i, None, augment=False, mask=mask)
            xs.append(to_input(crop)[0])
            ys.append(target)
            kinds.append(kind)
    return np.stack(xs), np.stack(ys), kinds
