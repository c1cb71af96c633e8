import numpy as np
import pytest

from core.metrics import interpupil_distance, nmse, nmse_per_face
from core.schema import GROUPS, MIRROR, pupils


def face_with_pupils(right=(30.0, 50.0), left=(70.0, 50.0)) -> np.ndarray:
    pts = np.zeros((68, 2))
    pts[GROUPS["right_eye"]] = right
    pts[GROUPS["left_eye"]] = left
    pts[0:36] = [50, 80]
    pts[48:] = [50, 90]
    return pts


def test_pupils_are_eye_means():
    pts = face_with_pupils()
    pts[36] = [20, 50]
    pts[39] = [40, 50]  # mean of the six stays 30 only if the others compensate
    r, l = pupils(pts)
    assert r[0] == pytest.approx((20 + 40 + 30 * 4) / 6)
    assert l.tolist() == [70.0, 50.0]


def test_nmse_known_answers():
    gt = face_with_pupils()  # inter-pupil distance 40
    assert interpupil_distance(gt) == pytest.approx(40.0)
    assert nmse(gt, gt) == 0.0
    shifted = gt + [3.0, 4.0]  # every point 5 px off -> 5 / 40 = 12.5 %
    assert nmse(shifted, gt) == pytest.approx(12.5)
    one_off = gt.copy()
    one_off[10] += [0.0, 68.0]  # a single point 68 px off -> 68 / (68 * 40) = 2.5 %
    assert nmse(one_off, gt) == pytest.approx(2.5)
    # scale invariance: the same error on a face twice the size is the same NMSE
    assert nmse(shifted * 2, gt * 2) == pytest.approx(12.5)
    # mean over faces
    assert nmse(np.stack([shifted, gt]), np.stack([gt, gt])) == pytest.approx(6.25)
    assert nmse_per_face(np.stack([shifted, one_off]), np.stack([gt, gt])) == pytest.approx([12.5, 2.5])


def test_nmse_rejects_bad_shapes():
    with pytest.raises(ValueError):
        nmse(np.zeros((68, 2)), np.zeros((5, 2)))


def test_mirror_is_an_involution_that_swaps_eyes():
    assert sorted(MIRROR) == list(range(68))
    assert all(MIRROR[MIRROR[i]] == i for i in range(68))
    assert MIRROR[36] == 45 and MIRROR[8] == 8 and MIRROR[30] == 30 and MIRROR[48] == 54
