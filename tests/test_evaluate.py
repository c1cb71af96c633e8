import json

import numpy as np
import pytest

from tests.conftest import CHECKPOINT, FACES, MASKS, needs_data, needs_dlib, needs_masks

KEYS = {"clean", "10-20", "30-40", "40-50", "50-60", "center25"}


@pytest.fixture
def checkpoint_path(tmp_path):
    """The committed model when present, else a freshly initialised one (the schema is the same)."""
    if CHECKPOINT.exists():
        return CHECKPOINT
    from train import checkpoint
    from train.model import MobileNetL

    path = tmp_path / "init.pt"
    checkpoint.save(path, MobileNetL())
    return path


@needs_data
@needs_masks
@needs_dlib
def test_evaluation_json_schema_on_a_subset(tmp_path, checkpoint_path):
    from train.evaluate import main

    out = tmp_path / "eval.json"
    result = main(["--checkpoint", str(checkpoint_path), "--faces", str(FACES), "--masks", str(MASKS),
                   "--split", "test", "--limit", "12", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert doc == json.loads(json.dumps(result))
    assert set(doc) == {"n_faces", "nmse", "ms_per_face"}
    assert set(doc["n_faces"]) == {"all", "frontal", "side"}
    assert doc["n_faces"]["all"] == 12 == doc["n_faces"]["frontal"] + doc["n_faces"]["side"]
    for group in ("all", "frontal", "side"):
        assert set(doc["nmse"][group]) == KEYS
    assert all(v > 0 for v in doc["nmse"]["all"].values())
    assert doc["ms_per_face"] > 0


@needs_data
@needs_masks
@needs_dlib
def test_protocol_is_reproducible_and_uses_teacher_labels():
    from runtime.preprocess import image_to_target
    from train.evaluate import evaluate, load_faces
    from runtime.preprocess import crop_matrix

    faces = load_faces(FACES, "test", limit=6)
    truth = {f.path: image_to_target(f.landmarks, crop_matrix(f.box)) for f in faces}
    order = iter([f.path for f in faces for _ in range(6)])

    def oracle(crops):  # predicts the teacher's landmarks exactly: NMSE must be zero everywhere
        return np.stack([truth[next(order)] for _ in crops])

    summary, per_face = evaluate(oracle, FACES, MASKS, "test", limit=6, batch=4)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in summary["nmse"]["all"].values())

    def centre_predictor(crops):  # a constant guess: worse than zero, identical under every occlusion
        return np.full((len(crops), 68, 2), 0.5, np.float32)

    a, _ = evaluate(centre_predictor, FACES, MASKS, "test", limit=6)
    b, _ = evaluate(centre_predictor, FACES, MASKS, "test", limit=6)
    assert a == b and len(set(a["nmse"]["all"].values())) == 1 and a["nmse"]["all"]["clean"] > 10
