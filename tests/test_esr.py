"""ESR*: dlib's regression-tree cascade trained on occluded training crops."""
import numpy as np
import pytest

from core.metrics import nmse
from core.preprocess import INPUT_SIZE
from tests.conftest import needs_dlib

TINY = ["--limit", "20", "--oversampling", "5", "--cascade-depth", "4", "--trees", "20", "--threads", "2"]


@needs_dlib
def test_trains_predicts_and_beats_the_mean_shape(small_faces, tmp_cache, tmp_path):
    from train import esr

    out = tmp_path / "models" / "esr.dat"
    result = esr.main(["--faces", str(small_faces), "--out", str(out), *TINY])
    assert result["faces"] == 20 and out.is_file()
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, nothing left behind

    crops, points = esr.training_faces(small_faces, 20)  # the same occluded crops it trained on
    assert crops.shape == (20, INPUT_SIZE, INPUT_SIZE, 3) and crops.dtype == np.uint8
    pred = esr.esr_predictor(out)(crops)
    assert pred.shape == (20, 68, 2) and np.isfinite(pred).all()
    assert ((pred > -0.25) & (pred < 1.25)).all()  # normalised crop coordinates
    mean_shape = np.broadcast_to(points.mean(0), points.shape)
    assert nmse(pred * INPUT_SIZE, points) < 0.5 * nmse(mean_shape, points)  # about 2 vs 20


def test_predictor_refuses_missing_or_corrupt_models(tmp_path):
    pytest.importorskip("dlib", reason="ESR* needs dlib (dlib-bin)")
    from train.esr import esr_predictor

    with pytest.raises(FileNotFoundError, match="missing.dat"):
        esr_predictor(tmp_path / "missing.dat")
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a dlib shape predictor"):
        esr_predictor(bad)
