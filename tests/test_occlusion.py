import numpy as np
import pytest

from core.occlusion import LIU_BINS, bin_of, center_mask, coverage, eval_mask, pick_liu_mask, random_training_mask
from core.preprocess import occlude
from tests.conftest import MASKS, needs_masks


def test_center_mask_is_a_quarter():
    m = center_mask(256)
    assert coverage(m) == pytest.approx(0.25)
    assert m[128, 128] == 0 and m[0, 0] == 1 and m[64, 64] == 0 and m[63, 63] == 1


def test_occlude_is_hadamard_product():
    crop = np.full((256, 256, 3), 200, np.uint8)
    out = occlude(crop, center_mask())
    assert out[128, 128].tolist() == [0, 0, 0] and out[0, 0].tolist() == [200, 200, 200]
    assert occlude(crop, None) is crop


@pytest.mark.parametrize("holes,expected", [(0.15, "10-20"), (0.35, "30-40"), (0.45, "40-50"),
                                            (0.55, "50-60"), (0.25, None), (0.05, None), (0.65, None)])
def test_coverage_binning(holes, expected):
    m = np.ones(10000, np.float32)
    m[: int(holes * 10000)] = 0
    assert bin_of(coverage(m.reshape(100, 100))) == expected


def test_training_masks_cover_the_intended_range():
    rng = np.random.default_rng(0)
    covs, clean = [], 0
    for _ in range(300):
        m = random_training_mask(rng)
        if m is None:
            clean += 1
            continue
        assert m.shape == (256, 256) and set(np.unique(m)) <= {0.0, 1.0}
        covs.append(coverage(m))
    assert 20 < clean < 80  # some clean images
    covs = np.array(covs)
    assert covs.min() < 0.1 and 0.5 < covs.max() < 0.9 and 0.15 < np.median(covs) < 0.45


@needs_masks
def test_liu_masks_are_chosen_deterministically_and_in_bin():
    for name, (lo, hi, first) in LIU_BINS.items():
        a_id, a = pick_liu_mask(MASKS, name, "cacd/0001_0.jpg", seed=0)
        b_id, b = pick_liu_mask(MASKS, name, "cacd/0001_0.jpg", seed=0)
        assert a_id == b_id and lo <= coverage(a) < hi
        assert first <= int(a_id[:5]) < first + 2000
    ids = {pick_liu_mask(MASKS, "30-40", f"face{i}", seed=0)[0] for i in range(20)}
    assert len(ids) > 10  # different faces get different masks
    assert eval_mask("clean", MASKS, "x")[1] is None
    assert eval_mask("center25", None, "x")[0] == "center25"


def test_fragment_masks_are_fragmented_and_off_by_default():
    import cv2

    from core.occlusion import fragment_mask, random_training_mask

    rng = np.random.default_rng(0)
    masks = [fragment_mask(rng) for _ in range(20)]
    assert all(0.04 <= coverage(m) <= 0.61 for m in masks)
    pieces = [cv2.connectedComponents((m == 0).astype(np.uint8))[0] - 1 for m in masks]
    assert np.median(pieces) > 5  # many separate holes, not one stroke
    # fragments=0 draws nothing extra: the masks of earlier runs are replayed exactly
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(10):
        x, y = random_training_mask(a), random_training_mask(b, fragments=0.0)
        assert (x is None and y is None) or np.array_equal(x, y)
    rng = np.random.default_rng(4)
    assert sum(random_training_mask(rng, fragments=1.0) is not None for _ in range(10)) == 10


def test_heavy_masks_are_heavy_and_off_by_default():
    from core.occlusion import random_training_mask

    a, b = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(10):  # heavy=0 draws nothing extra: earlier runs replay
        x, y = random_training_mask(a), random_training_mask(b, heavy=0.0)
        assert (x is None and y is None) or np.array_equal(x, y)
    rng = np.random.default_rng(6)
    covered = [coverage(random_training_mask(rng, heavy=1.0)) for _ in range(30)]
    assert min(covered) >= 0.24 and np.median(covered) >= 0.4, covered  # the centre square is 25 %
