"""Shared fixtures: the real data in ../shared (tests that need it skip with a reason when absent)."""
from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACES_DATA", ROOT.parent / "shared" / "data"))
FACES = DATA / "faces"
MASKS = DATA / "masks" / "nvidia_irregular_test"
CHECKPOINT = ROOT / "weights" / "mobilenet_l.pt"

needs_data = pytest.mark.skipif(not (FACES / "splits.csv").exists(), reason=f"real face data not found at {FACES}")
needs_masks = pytest.mark.skipif(not MASKS.is_dir(), reason=f"Liu et al. masks not found at {MASKS}")
needs_dlib = pytest.mark.skipif(
    importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models") is None,
    reason="teacher extra (dlib-bin, face-recognition-models) not installed",
)


def split_rows() -> list[dict]:
    with open(FACES / "splits.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Point the label/crop cache at a temporary folder."""
    import core.data

    cache = tmp_path / "cache"
    monkeypatch.setattr(core.data, "CACHE_ROOT", cache)
    monkeypatch.setenv("LANDMARK_CACHE", str(cache))
    return cache


@pytest.fixture
def small_faces(tmp_path) -> Path:
    """A small CelebA-style folder of real faces (symlinks into ../shared) with its own splits.csv.

    48 train images (CACD and UTKFace), 8 val and 8 test images (CACD and Taiwanese).
    """
    if not (FACES / "splits.csv").exists():
        pytest.skip(f"real face data not found at {FACES}")
    rows = split_rows()
    pick = {"train": 48, "val": 8, "test": 8}
    chosen: list[tuple[str, str]] = []
    for split, n in pick.items():
        in_split = [r["path"] for r in rows if r["split"] == split]
        step = max(1, len(in_split) // n)
        chosen += [(p, split) for p in in_split[::step][:n]]
    root = tmp_path / "faces"
    for rel, _ in chosen:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(FACES / rel)
    with open(root / "splits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "split"])
        w.writerows(chosen)
    return root


@pytest.fixture(scope="session")
def reference_model():
    """The committed checkpoint's network, or a seeded random MobileNet-L whose output depends on the input."""
    torch = pytest.importorskip("torch")
    from train.checkpoint import load_model
    from train.model import MobileNetL

    if CHECKPOINT.exists():
        return load_model(CHECKPOINT)
    torch.manual_seed(0)
    model = MobileNetL().eval()
    torch.nn.init.normal_(model.fc.weight, std=0.05)
    return model


@pytest.fixture(scope="session")
def onnx_model(reference_model, tmp_path_factory) -> Path:
    """``reference_model`` exported to ONNX (shared by the test modules)."""
    from export.export_onnx import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "landmarks.onnx"
    export_onnx(reference_model, path)
    return path
