"""Face detection for full images: YuNet, dlib and Haar boxes on real faces, input formats, no face, threads,
clear errors."""
import sys
import threading

import cv2
import numpy as np
import pytest

from core.preprocess import read_image
from runtime import faces
from runtime.faces import box_iou, detect_faces
from tests.conftest import FACES, needs_data

needs_haar = pytest.mark.skipif(not faces.haar_available(),
                                reason=f"OpenCV {cv2.__version__} has no CascadeClassifier (removed in OpenCV 5)")
needs_dlib_detector = pytest.mark.skipif(not faces.dlib_available(), reason="dlib not installed")
DETECTORS = [pytest.param("dlib", marks=needs_dlib_detector), pytest.param("haar", marks=needs_haar), "yunet"]


def real_faces() -> list[np.ndarray]:
    cacd = sorted((FACES / "cacd").glob("*.jpg"))
    taiwanese = sorted((FACES / "taiwanese").glob("*.jpg"))
    return [read_image(p) for p in cacd[:300:100] + taiwanese[:1]]


def assert_centred_face(box, shape) -> None:
    """These are whole face crops: one face in the middle, its box about half the image side."""
    h, w = shape[:2]
    side = max(box[2] - box[0], box[3] - box[1])
    assert 0.25 * w < side < 0.8 * w, box
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    assert np.abs(centre - [w / 2, h / 2]).max() < 0.15 * w, box


@needs_data
@pytest.mark.parametrize("detector", DETECTORS)
def test_one_centred_face_on_real_images(detector):
    for image in real_faces():
        boxes = detect_faces(image, detector)
        assert boxes, "no face found on a real face crop"
        assert_centred_face(boxes[0], image.shape)
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        assert areas == sorted(areas, reverse=True)


@needs_data
@pytest.mark.parametrize("detector", DETECTORS)
def test_grayscale_and_bgra_are_accepted(detector):
    image = real_faces()[0]
    for variant in (cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)):
        boxes = detect_faces(variant, detector)
        assert boxes
        assert_centred_face(boxes[0], image.shape)


@needs_data
@pytest.mark.parametrize("detector", DETECTORS)
def test_boxes_are_in_full_resolution_pixels_of_a_large_frame(detector):
    """Frames above DETECT_MAX_SIDE are shrunk for detection; the boxes must come back at full scale."""
    image = real_faces()[0]
    small = detect_faces(image, detector)[0]
    frame = np.full((1080, 1920, 3), 40, np.uint8)
    big = cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    frame[300:300 + big.shape[0], 900:900 + big.shape[1]] = big
    box = detect_faces(frame, detector)[0]
    expected = np.array(small) * 2 + [900, 300, 900, 300]
    side = small[2] - small[0]
    assert np.abs(np.array(box) - expected).max() < 0.25 * 2 * side


@needs_data
def test_a_smaller_detection_side_finds_the_face_at_full_scale_and_too_small_faces_are_lost():
    image = real_faces()[0]
    frame = np.full((480, 640, 3), 40, np.uint8)
    frame[100:100 + image.shape[0], 200:200 + image.shape[1]] = image
    full, shrunk = detect_faces(frame, max_side=640)[0], detect_faces(frame, max_side=320)[0]
    assert box_iou(full, shrunk) > 0.8
    small = cv2.resize(image, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)  # a face box of ~25 px
    frame = np.full((480, 640, 3), 40, np.uint8)
    frame[200:200 + small.shape[0], 300:300 + small.shape[1]] = small
    assert detect_faces(frame, max_side=640) and not detect_faces(frame, max_side=320)
    with pytest.raises(ValueError, match="max_side"):
        detect_faces(frame, max_side=16)


@pytest.mark.parametrize("detector", DETECTORS)
def test_no_face_gives_an_empty_list(detector):
    blank = np.full((240, 320, 3), 128, np.uint8)
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    assert detect_faces(blank, detector) == []
    assert detect_faces(gradient, detector) == []


def test_auto_is_the_shipped_yunet():
    assert faces.load_detector("auto") == "yunet" and faces.YUNET_MODEL.is_file()
    assert (faces.YUNET_MODEL.parent / "LICENSE").is_file() and "Apache" in (
        faces.YUNET_MODEL.parent / "LICENSE").read_text()


def test_unknown_detector_and_bad_image_are_rejected():
    with pytest.raises(ValueError, match="unknown face detector"):
        detect_faces(np.zeros((64, 64, 3), np.uint8), "mtcnn")
    with pytest.raises(ValueError, match="uint8"):
        detect_faces(np.zeros((64, 64, 3), np.float32), "dlib" if faces.dlib_available() else "haar")


@pytest.fixture
def fresh_detectors(monkeypatch):
    """This thread's detector objects made anew (and dropped again afterwards)."""
    monkeypatch.setattr(faces, "_local", threading.local())


def test_missing_dlib_is_a_clear_error(monkeypatch, fresh_detectors):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now raises ImportError
    with pytest.raises(RuntimeError, match="pip install dlib-bin"):
        detect_faces(np.zeros((64, 64, 3), np.uint8), "dlib")


def test_missing_haar_is_a_clear_error(monkeypatch, fresh_detectors):
    monkeypatch.delattr(cv2, "CascadeClassifier", raising=False)  # as in OpenCV 5
    with pytest.raises(RuntimeError, match="opencv-python-headless<5"):
        detect_faces(np.zeros((64, 64, 3), np.uint8), "haar")


@needs_data
@pytest.mark.skipif(not hasattr(cv2, "FaceDetectorYN"), reason=f"OpenCV {cv2.__version__} has no FaceDetectorYN")
def test_yunet_finds_what_opencvs_face_detector_finds():
    """runtime.yunet decodes as OpenCV does: same faces, same order, same numbers, at any frame size
    (sizes not multiples of 32 are padded) and at a low threshold, where NMS has many candidates."""
    ours = faces.YuNet(faces.YUNET_MODEL, threads=1)
    opencv = cv2.FaceDetectorYN.create(str(faces.YUNET_MODEL), "", (320, 320), 0.3, faces.YUNET_NMS, 5000)
    compared = 0
    for image in real_faces():
        frame = np.full((301, 437, 3), 90, np.uint8)
        frame[20:20 + image.shape[0], 60:60 + image.shape[1]] = image[:281, :377]
        for variant in (image, cv2.resize(image, (171, 203)), frame):
            opencv.setInputSize((variant.shape[1], variant.shape[0]))
            expected = opencv.detect(variant)[1]
            expected = np.zeros((0, 15), np.float32) if expected is None else expected
            got = ours.detect(variant, 0.3, faces.YUNET_NMS)
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, atol=1e-3)
            compared += len(got)
    assert compared >= 12  # every variant had its face


SOURCE_YUNET = FACES.parent.parent / "models" / "yunet" / "yunet_n_640_640.onnx"


@pytest.mark.skipif(not SOURCE_YUNET.is_file(), reason=f"the authors' YuNet file is not at {SOURCE_YUNET}")
def test_shipped_yunet_is_the_authors_model_with_free_input_size():
    onnx = pytest.importorskip("onnx")
    source, shipped = onnx.load(SOURCE_YUNET), onnx.load(faces.YUNET_MODEL)
    assert list(shipped.graph.node) == list(source.graph.node)
    assert list(shipped.graph.initializer) == list(source.graph.initializer)
    dims = [d.dim_param or d.dim_value for d in shipped.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, "height", "width"]
    assert "Modified" in shipped.doc_string


def test_missing_or_corrupt_yunet_is_a_clear_error(monkeypatch, fresh_detectors, tmp_path):
    monkeypatch.setattr(faces, "YUNET_MODEL", tmp_path / "missing.onnx")
    with pytest.raises(RuntimeError, match="missing.onnx: YuNet model missing"):
        detect_faces(np.zeros((64, 64, 3), np.uint8))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not onnx")
    monkeypatch.setattr(faces, "YUNET_MODEL", corrupt)
    with pytest.raises(RuntimeError, match="corrupt.onnx: ONNX Runtime cannot load"):
        detect_faces(np.zeros((64, 64, 3), np.uint8))


@needs_data
@pytest.mark.parametrize("detector", DETECTORS)
def test_two_threads_detecting_at_once_get_their_own_faces(detector):
    """Each thread owns its detectors: two threads on different images always get their own image's box
    (before, dlib crashed and Haar handed one thread the other's box in 56 of 100 calls)."""
    images = [read_image(sorted((FACES / folder).glob("*.jpg"))[0]) for folder in ("cacd", "taiwanese")]
    expected = [detect_faces(im, detector) for im in images]
    wrong = []

    def work(k: int) -> None:
        for _ in range(30):
            if detect_faces(images[k], detector) != expected[k]:
                wrong.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert expected[0] != expected[1] and not wrong


def test_haar_correction_maps_onto_dlib_framing():
    # a 100 px Haar box becomes a 85.5 px box, 2.5 px left of and 6 px below the Haar centre
    x0, y0, x1, y1 = faces.to_dlib_framing((0, 0, 100, 100), faces.HAAR_TO_DLIB)
    assert x1 - x0 == pytest.approx(85.5) and y1 - y0 == pytest.approx(85.5)
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((47.5, 56.0))
