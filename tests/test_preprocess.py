import cv2
import numpy as np
import pytest

from core.preprocess import (INPUT_SIZE, ImageError, crop_matrix, ensure_bgr, image_to_target, output_to_image,
                             preprocess, read_image, to_input, warp, whole_image_box)
from tests.conftest import FACES, needs_data


def test_round_trip_landmarks_to_input_and_back():
    rng = np.random.default_rng(0)
    box = (40.0, 60.0, 160.0, 190.0)
    pts = rng.uniform([40, 60], [160, 190], size=(68, 2))
    for kw in ({}, {"scale": 1.2, "rotation_deg": 12.0, "shift": (0.05, -0.03)}, {"flip": True}):
        m = crop_matrix(box, **kw)
        back = output_to_image(image_to_target(pts, m), m)
        assert np.abs(back - pts).max() < 0.5


def test_crop_places_box_centre_at_input_centre():
    image = np.zeros((300, 400, 3), np.uint8)
    cv2.circle(image, (250, 120), 6, (255, 255, 255), -1)  # a dot at the box centre
    x = preprocess(image, box=(200, 70, 300, 170))[0]
    assert x.shape == (1, 3, INPUT_SIZE, INPUT_SIZE) and x.dtype == np.float32
    bright = np.argwhere(x[0, 0] > 0.5).mean(0)
    assert np.abs(bright - (INPUT_SIZE - 1) / 2).max() < 1.0
    # box side 100 * BOX_SCALE 2 -> 200 image px over 256: the 12 px dot is about 15 px wide
    width = (x[0, 0, int(bright[0])] > 0).sum()
    assert 13 <= width <= 18


def test_whole_image_is_the_crop():
    image = np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    x, m = preprocess(image)
    assert np.allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    assert np.allclose(x, to_input(image))
    assert whole_image_box(200, 100) == pytest.approx((-0.5, 49.5, 99.5, 149.5))


def test_colour_order_and_normalisation():
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 2] = 255  # red in BGR
    x = to_input(image)
    assert x[0, 0].min() == 1.0 and x[0, 2].max() == -1.0  # channel 0 is R, range [-1, 1]


def test_grayscale_and_rgba_are_converted():
    gray = np.full((50, 60), 128, np.uint8)
    assert ensure_bgr(gray).shape == (50, 60, 3)
    bgra = np.zeros((50, 60, 4), np.uint8)
    assert ensure_bgr(bgra).shape == (50, 60, 3)
    assert ensure_bgr(gray[:, :, None]).shape == (50, 60, 3)


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((50, 60, 2), np.uint8), "unsupported image shape"),
    (np.zeros((50, 60, 3), np.float32), "uint8"),
    (np.zeros((8, 8, 3), np.uint8), "too small"),
    ([[1, 2]], "numpy array"),
])
def test_bad_arrays_raise_clear_errors(bad, msg):
    with pytest.raises(ImageError, match=msg):
        ensure_bgr(bad)


def test_bad_files_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageError, match="corrupt.jpg"):
        read_image(corrupt)
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")
    png = tmp_path / "rgba.png"
    cv2.imwrite(str(png), np.zeros((40, 40, 4), np.uint8))
    assert read_image(png).shape == (40, 40, 3)


def test_invalid_box():
    with pytest.raises(ValueError, match="invalid face box"):
        crop_matrix((10, 10, 5, 20))


def test_large_downscale_is_antialiased():
    # a 1-px checkerboard averages to grey when shrunk 8x; plain bilinear sampling would alias
    board = (np.indices((2048, 2048)).sum(0) % 2 * 255).astype(np.uint8)
    crop = warp(cv2.cvtColor(board, cv2.COLOR_GRAY2BGR), crop_matrix(whole_image_box(2048, 2048)))
    assert abs(float(crop.mean()) - 127.5) < 10 and crop.std() < 20


@needs_data
def test_real_image_crop_matches_teacher_framing():
    image = read_image(FACES / "cacd" / "0000_0.jpg")
    x, m = preprocess(image)
    assert x.shape == (1, 3, 256, 256) and -1.0 <= x.min() and x.max() <= 1.0
