import numpy as np

from core.mirror import mirror_average, mirror_input, unmirror
from core.preprocess import crop_matrix, image_to_target, to_input, warp
from core.schema import MIRROR


def test_mirror_matches_the_training_flip():
    """The mirrored input is the crop training cuts with flip=True, and its truth maps back onto the plain crop's."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    box = (90.0, 50.0, 210.0, 180.0)
    pts = rng.uniform([90, 50], [210, 180], size=(68, 2))
    plain, flipped = crop_matrix(box), crop_matrix(box, flip=True)
    assert np.abs(mirror_input(to_input(warp(image, plain))) - to_input(warp(image, flipped))).max() < 0.02
    # a perfect network names the mirrored face's points as training does (the dataset renames with MIRROR)
    truth_of_mirror = image_to_target(pts, flipped)[MIRROR]
    back = unmirror({"landmarks": truth_of_mirror[None]})["landmarks"][0]
    assert np.abs(back - image_to_target(pts, plain)).max() < 1e-5


def test_mirror_average_renames_points_and_keeps_per_crop_outputs():
    n = 3
    lm = np.random.default_rng(1).uniform(0, 1, (n, 68, 2)).astype(np.float32)
    calls = []

    def run(x):
        calls.append(len(x))
        half = np.arange(len(x)) >= n  # the second half is the mirrored copy
        vis = np.where(half[:, None], np.arange(68, dtype=np.float32) / 100, 0.0).astype(np.float32)
        points = lm[np.arange(len(x)) % n].copy()
        points[half] = unmirror({"landmarks": points[half]})["landmarks"]  # an exactly mirror-consistent network
        return {"landmarks": points, "visibility": vis, "face_score": np.where(half, 1.0, 0.0).astype(np.float32)}

    out = mirror_average(run, np.zeros((n, 3, 8, 8), np.float32))
    assert calls == [2 * n]  # one call for both halves
    assert np.allclose(out["landmarks"], lm, atol=1e-6) and out["landmarks"].dtype == np.float32
    assert np.allclose(out["visibility"], np.asarray(MIRROR, np.float32)[None] / 200)
    assert np.allclose(out["face_score"], 0.5) and out["face_score"].shape == (n,)


def test_mirror_input_flips_width_only():
    x = np.arange(2 * 3 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 4)
    assert np.array_equal(mirror_input(x)[..., 0], x[..., 3])
    assert np.array_equal(mirror_input(mirror_input(x)), x)
