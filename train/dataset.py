"""Training/validation samples: crops decoded once into a cache, then jittered and occluded on the fly.

A sample is a dict: ``x`` (network input), ``landmarks`` (target), ``weight`` (per-landmark loss
weight), ``visibility`` (1 = the point's pixel is seen) and ``face`` (1 = a face framed as in training,
0 = a face_score negative). What a training run does to its samples is its Recipe.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from core.augment import negative_crop, photometric, texture
from core.data import Labels, cache_dir
from core.files import atomic_write_bytes
from core.metrics import nmse_per_face
from core.occlusion import center_mask, random_training_mask
from core.preprocess import (INPUT_SIZE, PREPROCESS_VERSION, ImageError, box_in_crop, crop_matrix, image_to_target,
                             occlude, read_image, to_input, warp)
from core.progress import Progress
from core.samples import inside_image, visible_points
from core.schema import MIRROR

# The cache holds each face at the canonical framing plus a margin for jitter, at 1.25x the input size.
CACHE_MARGIN = 1.25
CACHE_SIZE = int(INPUT_SIZE * CACHE_MARGIN)
CACHE_VERSION = 2  # 2: mirrored teacher points and per-point "inside the image" flags
# In cache coordinates every face box is the same: centred, BOX_SCALE * side = INPUT_SIZE.
CACHE_BOX = box_in_crop(CACHE_SIZE, CACHE_MARGIN)

LABEL_MODES = ("raw", "average", "down", "drop")
# Teacher self-disagreement (NMSE % between its points on the image and on the mirrored image) above
# which a label counts as doubtful (about the worst 4 % of training faces; "down" halves its weight at this
# value, "drop" drops it).
DOUBTFUL_LABEL_NMSE = 4.0
OUTSIDE_WEIGHT = 0.25  # "down": weight of points the teacher placed outside the image (cut-off jaws)
MAX_OUTSIDE_POINTS = 6  # "drop": faces with more points outside the image than this are dropped


@dataclass(frozen=True)
class Recipe:
    """What training does to its samples; stored in checkpoints. Defaults are the shipped recipe."""

    # share of samples degraded (core.augment.photometric); off: at the A/B budget it cost 0.34 validation NMSE,
    # beyond the seed noise, and did not even help on degraded samples (docs/recipe.md)
    photometric: float = 0.0
    textured: float = 0.5  # share of occluded samples whose holes are filled with texture instead of black
    labels: str = "average"  # one of LABEL_MODES: what to do with doubtful teacher labels
    negatives: float = 0.15  # face_score negatives per face (only for models with heads)
    # True: the negatives come on top of the faces (an epoch sees every face, plus the negatives); False: each
    # sample is a negative by chance instead of its face. Replacing cost the landmarks as much as dropping the
    # heads did (the A/B's no-negatives arm), so they are added now; the A/B control replaced them.
    negatives_extra: bool = True
    head_weight: float = 1.0  # weight of each head's cross-entropy beside the landmark loss
    head_noise: float = 0.2  # noise on the heads' inputs (MobileNetL.head_noise): they must survive INT8
    fragments: float = 0.0  # share of training masks that are fragment masks (core.occlusion.fragment_mask)
    heavy: float = 0.0  # share of training masks drawn heavy: the centre square or 40-70 % free-form holes

    def to_dict(self) -> dict:
        return asdict(self)


# What training did before the recipe existed (checkpoints without one were trained like this).
LEGACY_RECIPE = Recipe(photometric=0.0, textured=0.0, labels="raw", negatives=0.0, head_noise=0.0)


def label_disagreement(landmarks: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """Per face, NMSE (%) between the teacher's direct and mirrored-back points."""
    return nmse_per_face(mirrored, landmarks)


class CropCache:
    """uint8 BGR crops (N, CACHE_SIZE, CACHE_SIZE, 3) in a memory-mapped .npy plus landmarks in cache pixels.

    Also per face: the teacher's mirrored-back points (cache pixels) and which points lie inside the image.
    """

    def __init__(self, faces_dir: Path, labels: Labels, tag: str):
        key = hashlib.sha1(json.dumps(
            [PREPROCESS_VERSION, CACHE_VERSION, CACHE_SIZE, labels.paths, labels.boxes.round(2).tolist(),
             float(labels.mirrored.sum())]).encode()).hexdigest()[:12]
        base = cache_dir(faces_dir) / f"crops-{tag}-{key}"
        self.npy, self.meta = base.with_suffix(".npy"), base.with_suffix(".json")
        if not (self.npy.exists() and self.meta.exists()):
            self._build(Path(faces_dir), labels)
        meta = json.loads(self.meta.read_text())
        self.paths: list[str] = meta["paths"]
        self.landmarks = np.array(meta["landmarks"], dtype=np.float32)
        self.mirrored = np.array(meta["mirrored"], dtype=np.float32)
        self.inside = np.array(meta["inside"], dtype=bool)
        self.images = np.load(self.npy, mmap_mode="r")

    def _build(self, faces_dir: Path, labels: Labels) -> None:
        tmp = self.npy.with_name(f".{self.npy.name}.{os.getpid()}.tmp")
        self.npy.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(labels.paths), CACHE_SIZE, CACHE_SIZE, 3))
        landmarks, mirrored = [], []
        for i, rel in enumerate(Progress(labels.paths, desc=f"caching {self.npy.stem}", unit="img")):
            try:
                image = read_image(faces_dir / rel)
            except ImageError as e:
                tmp.unlink(missing_ok=True)
                raise ImageError(f"{e} (it was labelled before: re-run train.annotate)") from e
            m = crop_matrix(labels.boxes[i], size=CACHE_SIZE, scale=CACHE_MARGIN)
            out[i] = warp(image, m, CACHE_SIZE)
            landmarks.append(image_to_target(labels.landmarks[i], m) * INPUT_SIZE)
            mirrored.append(image_to_target(labels.mirrored[i], m) * INPUT_SIZE)
        out.flush()
        del out
        os.replace(tmp, self.npy)
        inside = inside_image(labels.landmarks, labels.sizes[:, None, :])
        atomic_write_bytes(self.meta, json.dumps(
            {"paths": labels.paths, "landmarks": np.round(np.array(landmarks).reshape(-1, 68, 2), 3).tolist(),
             "mirrored": np.round(np.array(mirrored).reshape(-1, 68, 2), 3).tolist(),
             "inside": inside.astype(int).tolist()}).encode())

    def __len__(self) -> int:
        return len(self.paths)


def label_target(cache: CropCache, i: int, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """(landmarks in cache pixels, per-point weight) of face i under a label mode of LABEL_MODES."""
    direct, weight = cache.landmarks[i], np.ones(68, np.float32)
    if labels == "raw":
        return direct, weight
    if labels == "average":
        return (direct + cache.mirrored[i]) / 2, weight
    doubt = float(label_disagreement(direct, cache.mirrored[i]))
    outside = ~cache.inside[i]
    if labels == "down":
        weight = np.where(outside, OUTSIDE_WEIGHT, 1.0).astype(np.float32) / (1 + (doubt / DOUBTFUL_LABEL_NMSE) ** 2)
        return direct, weight
    if labels == "drop":
        keep = doubt <= DOUBTFUL_LABEL_NMSE and outside.sum() <= MAX_OUTSIDE_POINTS
        return direct, weight * float(keep)
    raise ValueError(f"unknown label mode {labels!r}: use one of {', '.join(LABEL_MODES)}")


def sample(cache: CropCache, i: int, rng: np.random.Generator | None, augment: bool,
           mask: np.ndarray | None | str = "random", recipe: Recipe = LEGACY_RECIPE, fill: np.ndarray | None = None):
    """One face of the cache as a dict (see the module doc) with a uint8 ``crop`` instead of ``x``.

    ``mask="random"`` draws a training mask (none without ``rng``); ``fill`` is the texture for the holes.
    """
    if augment:
        m = crop_matrix(CACHE_BOX, INPUT_SIZE, scale=float(np.exp(rng.uniform(-0.2, 0.2))),
                        rotation_deg=float(rng.uniform(-15, 15)),
                        shift=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.06, 0.06))),
                        flip=bool(rng.random() < 0.5))
    else:
        m = crop_matrix(CACHE_BOX, INPUT_SIZE)
    crop = warp(np.asarray(cache.images[i]), m, INPUT_SIZE)
    points, weight = label_target(cache, i, recipe.labels)
    target, inside = image_to_target(points, m), cache.inside[i]
    if m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0] < 0:  # mirrored: left and right points swap names
        target, weight, inside = target[MIRROR], weight[MIRROR], inside[MIRROR]
    if isinstance(mask, str):
        mask = random_training_mask(rng, fragments=recipe.fragments, heavy=recipe.heavy) if rng is not None else None
    if augment and recipe.photometric and rng.random() < recipe.photometric:
        crop = photometric(crop, rng)
    if augment and mask is not None and fill is None and rng.random() < recipe.textured:
        fill = texture(rng, INPUT_SIZE, other_image(cache, rng))
    return {"crop": occlude(crop, mask, fill), "landmarks": target, "weight": weight,
            "visibility": visible_points(target, mask, inside), "face": np.float32(1.0)}


def other_image(cache: CropCache, rng: np.random.Generator) -> np.ndarray:
    """A random cache image: the source of textured occluders and background negatives."""
    return np.asarray(cache.images[int(rng.integers(len(cache)))])


def negative_sample(cache: CropCache, i: int, rng: np.random.Generator, recipe: Recipe) -> dict:
    """A face_score negative from face i (core.augment.negative_crop)."""
    crop = negative_crop(np.asarray(cache.images[i]), CACHE_BOX, rng, INPUT_SIZE, lambda: other_image(cache, rng))
    if recipe.photometric and rng.random() < recipe.photometric:
        crop = photometric(crop, rng)
    zeros = np.zeros(68, np.float32)
    return {"crop": crop, "landmarks": np.full((68, 2), 0.5, np.float32), "weight": zeros, "visibility": zeros,
            "face": np.float32(0.0)}


def _tensors(s: dict) -> dict:
    crop = s.pop("crop")
    return {"x": torch.from_numpy(to_input(crop)[0]), **{k: torch.as_tensor(v) for k, v in s.items()}}


class TrainSet(torch.utils.data.Dataset):
    """Jittered, randomly occluded samples; the random stream depends on (seed, epoch, index) only.

    ``negatives``: whether to mix in face_score negatives (the recipe's share), for models with heads. With
    ``recipe.negatives_extra`` indices past the faces are the negatives (of face ``i mod faces``).
    """

    def __init__(self, cache: CropCache, seed: int, recipe: Recipe = Recipe(), negatives: bool = True):
        self.cache, self.seed, self.epoch, self.recipe, self.negatives = cache, seed, 0, recipe, negatives
        self.faces = len(cache)
        extra = negatives and recipe.negatives_extra
        self.extra = int(round(self.faces * recipe.negatives)) if extra else 0

    def __len__(self) -> int:
        return self.faces + self.extra

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if i >= self.faces:
            return _tensors(negative_sample(self.cache, i % self.faces, rng, self.recipe))
        if self.negatives and not self.recipe.negatives_extra and rng.random() < self.recipe.negatives:
            return _tensors(negative_sample(self.cache, i, rng, self.recipe))
        return _tensors(sample(self.cache, i, rng, augment=True, recipe=self.recipe))


VALIDATION_KINDS = ("clean", "center25", "synthetic", "textured", "degraded")


def validation_batches(cache: CropCache, seed: int = 1234) -> dict[str, np.ndarray]:
    """Fixed validation samples, stacked: each face clean, under the centre square, under two seeded
    synthetic masks (black), one textured mask and photometrically degraded; plus one negative per face.

    The Liu et al. masks are kept for the final evaluation, so model selection never sees them.
    Returns arrays ``x``, ``landmarks``, ``visibility``, ``face`` and ``kind`` (one of VALIDATION_KINDS,
    or "negative").
    """
    out: dict[str, list] = {k: [] for k in ("x", "landmarks", "visibility", "face", "kind")}

    def add(s: dict, kind: str) -> None:
        out["x"].append(to_input(s["crop"])[0])
        for k in ("landmarks", "visibility", "face"):
            out[k].append(s[k])
        out["kind"].append(kind)

    for i in range(len(cache)):
        rng = np.random.default_rng([seed, i])
        add(sample(cache, i, None, augment=False, mask=None), "clean")
        add(sample(cache, i, None, augment=False, mask=center_mask()), "center25")
        for _ in range(2):
            add(sample(cache, i, None, augment=False, mask=random_training_mask(rng)), "synthetic")
        mask = random_training_mask(rng)
        other = np.asarray(cache.images[int(rng.integers(len(cache)))])
        add(sample(cache, i, None, augment=False, mask=mask, fill=texture(rng, INPUT_SIZE, other)), "textured")
        s = sample(cache, i, None, augment=False, mask=None)
        s["crop"] = photometric(s["crop"], rng)
        add(s, "degraded")
        add(negative_sample(cache, i, rng, LEGACY_RECIPE), "negative")
    return {k: np.stack(v) if k != "kind" else np.array(v) for k, v in out.items()}
