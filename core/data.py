"""Face folders, the fixed split, and the teacher-label file that training, evaluation and calibration share."""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# ../shared/data beside the checkout unless FACES_DATA says otherwise
DEFAULT_DATA = Path(os.environ.get("FACES_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_FACES = DEFAULT_DATA / "faces"
DEFAULT_MASKS = DEFAULT_DATA / "masks" / "nvidia_irregular_test"
CACHE_ROOT = Path(os.environ.get("LANDMARK_CACHE", Path(__file__).resolve().parents[1] / "cache"))


def list_images(faces_dir: Path) -> list[str]:
    """Relative paths (posix) of every image below faces_dir, sorted."""
    faces_dir = Path(faces_dir)
    if not faces_dir.is_dir():
        raise FileNotFoundError(f"{faces_dir}: faces folder not found")
    return sorted(
        p.relative_to(faces_dir).as_posix()
        for p in faces_dir.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def read_split(faces_dir: Path, split: str | None) -> list[str]:
    """Images of one split from faces_dir/splits.csv; a folder without splits.csv is all 'test'."""
    images = list_images(faces_dir)
    if split is None or split == "all":
        return images
    split_file = Path(faces_dir) / "splits.csv"
    if not split_file.exists():
        return images if split == "test" else []
    with open(split_file, newline="") as f:
        rows = {r["path"]: r["split"] for r in csv.DictReader(f)}
    unknown = {split} - {"train", "val", "test"}
    if unknown:
        raise ValueError(f"unknown split {split!r}: use train, val, test or all")
    return [p for p in images if rows.get(p) == split]


def cache_dir(faces_dir: Path) -> Path:
    """Per-folder cache location (labels, decoded crops): name plus a hash of the absolute path."""
    faces_dir = Path(faces_dir).resolve()
    digest = hashlib.sha1(str(faces_dir).encode()).hexdigest()[:8]
    return CACHE_ROOT / f"{faces_dir.name}-{digest}"


def labels_path(faces_dir: Path) -> Path:
    return cache_dir(faces_dir) / "labels.json"


@dataclass
class Labels:
    """Teacher landmarks and boxes for the images of one folder."""

    paths: list[str]
    boxes: np.ndarray  # (N, 4) float32 x0, y0, x1, y1
    landmarks: np.ndarray  # (N, 68, 2) float32 image pixels
    mirrored: np.ndarray  # (N, 68, 2) the teacher on the flipped image, mapped back (train.annotate)
    sizes: np.ndarray  # (N, 2) image width, height

    def index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}

    def subset(self, paths: list[str]) -> "Labels":
        idx = self.index()
        keep = [idx[p] for p in paths if p in idx]
        return Labels([self.paths[i] for i in keep], self.boxes[keep], self.landmarks[keep], self.mirrored[keep],
                      self.sizes[keep])


def load_labels(faces_dir: Path, paths: list[str] | None = None, labels_file: Path | None = None) -> Labels:
    """Load teacher labels (optionally only ``paths``); images the teacher could not label are absent."""
    labels_file = Path(labels_file) if labels_file else labels_path(faces_dir)
    if not labels_file.exists():
        raise FileNotFoundError(
            f"{labels_file}: no teacher labels; run `python -m train.annotate --faces {faces_dir}`"
        )
    doc = json.loads(labels_file.read_text())
    entries = doc["entries"]
    names = [p for p in (paths if paths is not None else sorted(entries)) if p in entries]
    found = [entries[p] for p in names]
    return Labels(
        names,
        np.array([e["box"] for e in found], dtype=np.float32).reshape(-1, 4),
        np.array([e["landmarks"] for e in found], dtype=np.float32).reshape(-1, 68, 2),
        np.array([e.get("mirrored", e["landmarks"]) for e in found], dtype=np.float32).reshape(-1, 68, 2),
        np.array([e["size"] for e in found], dtype=np.float32).reshape(-1, 2),
    )
