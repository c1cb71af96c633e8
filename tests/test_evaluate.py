import json

import numpy as np
import pytest

from tests.conftest import CHECKPOINT, FACES, MASKS, needs_data, needs_dlib, needs_masks

KEYS = {"clean", "10-20", "30-40", "40-50", "50-60", "center25", "textured"}


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
    heads = {"visibility", "face_score_auc", "n_negatives"}
    assert set(doc) in ({"n_faces", "nmse", "ms_per_face"}, {"n_faces", "nmse", "ms_per_face"} | heads)
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
    from core.occlusion import EVAL_CONDITIONS
    from core.preprocess import crop_matrix, image_to_target
    from train.evaluate import evaluate, load_faces

    faces = load_faces(FACES, "test", limit=6)
    truth = {f.path: image_to_target(f.landmarks, crop_matrix(f.box)) for f in faces}
    samples = len(EVAL_CONDITIONS) + 1  # every condition, then one negative per face at the end of a batch
    order = iter(faces)

    def oracle(crops):  # predicts the teacher's landmarks exactly: NMSE must be zero everywhere
        chunk = [next(order) for _ in range(len(crops) // samples)]
        faces_part = [truth[f.path] for f in chunk for _ in EVAL_CONDITIONS]
        return np.stack(faces_part + [np.full((68, 2), 0.5, np.float32)] * len(chunk))

    summary, per_face = evaluate(oracle, FACES, MASKS, "test", limit=6, batch=4)
    assert set(summary["nmse"]["all"]) == set(EVAL_CONDITIONS)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in summary["nmse"]["all"].values())
    assert "visibility" not in summary  # a landmarks-only predictor has no heads to score

    def centre_predictor(crops):  # a constant guess: worse than zero, identical under every occlusion
        return np.full((len(crops), 68, 2), 0.5, np.float32)

    a, _ = evaluate(centre_predictor, FACES, MASKS, "test", limit=6)
    b, _ = evaluate(centre_predictor, FACES, MASKS, "test", limit=6)
    assert a == b and len(set(a["nmse"]["all"].values())) == 1 and a["nmse"]["all"]["clean"] > 10


@needs_data
@needs_masks
@needs_dlib
def test_heads_quality_scores_from_the_crops():
    """Visibility judged against the mask at the teacher's points; face score against negatives."""
    from core.occlusion import EVAL_CONDITIONS
    from train.evaluate import evaluate

    samples = len(EVAL_CONDITIONS) + 1

    def constant_visibility(crops):  # scores faces 1 and negatives 0; calls every point 70 % visible
        n = len(crops) // samples
        return {"landmarks": np.full((len(crops), 68, 2), 0.5, np.float32),
                "visibility": np.full((len(crops), 68), 0.7, np.float32),
                "face_score": np.r_[np.ones(n * len(EVAL_CONDITIONS)), np.zeros(n)].astype(np.float32)}

    summary, _ = evaluate(constant_visibility, FACES, MASKS, "test", limit=6)
    assert summary["n_negatives"] == 6
    assert all(v == 1.0 for v in summary["face_score_auc"].values())  # faces 1, negatives 0: perfect
    vis = summary["visibility"]
    assert set(vis) == set(EVAL_CONDITIONS)
    assert vis["clean"]["hidden_share"] < vis["30-40"]["hidden_share"] < vis["50-60"]["hidden_share"]
    assert vis["textured"]["hidden_share"] == vis["30-40"]["hidden_share"]  # the same masks, filled
    assert vis["center25"]["auc"] == 0.5  # a constant visibility: chance, whatever is hidden
    # at 0.5 every point is called visible: accuracy is the visible share
    assert all(v["accuracy"] == pytest.approx(1 - v["hidden_share"]) for v in vis.values())
