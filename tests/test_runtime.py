"""The torch-free runtime: backend selection, LandmarkDetector, golden set and parity verification."""
import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from runtime.backends import backend_for, load_backend
from tests.conftest import FACES, MASKS, ROOT, needs_data, needs_dlib, needs_masks


def test_import_runtime_does_not_import_torch():
    code = ("import sys, runtime, runtime.verify, runtime.golden, runtime.backends, runtime.onnxruntime_backend; "
            "from runtime import LandmarkDetector; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'tensorrt' not in sys.modules and 'pycuda' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_backend_selection_by_extension(tmp_path):
    assert backend_for("a/model.onnx") == "onnxruntime"
    assert backend_for("m.engine") == "tensorrt" and backend_for("m.plan") == "tensorrt"
    with pytest.raises(ValueError, match="extension"):
        backend_for("model.pt")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_backend(tmp_path / "missing.onnx")


@pytest.fixture(scope="module")
def trained(reference_model, onnx_model):
    return reference_model, onnx_model


def test_wrong_model_shape_is_refused(tmp_path):
    import torch

    path = tmp_path / "wrong.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 64, 64), str(path), dynamo=False)
    with pytest.raises(ValueError, match="not a landmark model"):
        load_backend(path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"nope")
    with pytest.raises(ValueError, match="garbage.onnx"):
        load_backend(garbage)


@needs_data
def test_detector_agrees_with_pytorch_on_real_faces(trained):
    import torch

    from core.preprocess import output_to_image, preprocess, read_image, warp
    from runtime import LandmarkDetector
    from train.evaluate import torch_predictor
    from train.model import landmarks_of

    model, path = trained
    det = LandmarkDetector(path, mirror=False)
    images = [read_image(FACES / p) for p in ("cacd/0000_0.jpg", "taiwanese/0101a02.jpg")]
    gray = cv2.cvtColor(images[0], cv2.COLOR_BGR2GRAY)
    boxes = [None, (60.0, 70.0, 190.0, 200.0)]
    many = det.predict_batch(images, boxes)
    mirrored = LandmarkDetector(path).predict_batch(images, boxes)  # the default for still images
    for image, box, pts, pts_mirrored in zip(images, boxes, many, mirrored):
        x, m = preprocess(image, box)
        crop = warp(image, m)
        with torch.no_grad():
            ref = output_to_image(landmarks_of(model(torch.from_numpy(x))).numpy()[0], m)
        ref_mirrored = output_to_image(torch_predictor(model, mirror=True)(crop[None])["landmarks"][0], m)
        assert pts.shape == (68, 2) and pts.dtype == np.float32
        assert np.abs(pts - ref).max() < 0.05  # issue bound: 0.05 px
        assert np.abs(pts_mirrored - ref_mirrored).max() < 0.05
        assert np.abs(pts_mirrored - pts).max() > 0.1  # the mirror pass changes the answer
    assert np.allclose(det.predict(images[1], box=boxes[1]), many[1], atol=1e-4)
    assert det.predict(gray).shape == (68, 2)  # grayscale accepted
    with pytest.raises(ValueError, match="2 images but 1 boxes"):
        det.predict_batch(images, boxes[:1])


@needs_data
@needs_masks
@needs_dlib
def test_verify_passes_faithful_and_fails_perturbed_models(trained, tmp_path, capsys):
    from export.export_onnx import build_golden
    from export.quantize import make_fp16
    from runtime.verify import main

    model, path = trained
    golden, _ = build_golden(model, FACES, MASKS, count=6, seed=0, meta={})
    golden_path = tmp_path / "g.golden.npz"
    golden.save(golden_path)
    fp16 = make_fp16(path, tmp_path / "model.fp16.onnx")

    # perturbed: shift every x prediction by 2 px at 256 scale through the FC bias
    proto = onnx.load(str(path))
    gemm_bias = next(n.input[2] for n in proto.graph.node if n.op_type == "Gemm")
    for init in proto.graph.initializer:
        if init.name == gemm_bias:
            b = numpy_helper.to_array(init).copy()
            b[0::2] += 2 / 256
            init.CopyFrom(numpy_helper.from_array(b, init.name))
    bad = tmp_path / "perturbed.onnx"
    onnx.save(proto, str(bad))

    out = tmp_path / "v.json"
    assert main(["--golden", str(golden_path), "--model", str(path), "--model", str(fp16),
                 "--faces", str(FACES), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    fp32 = doc["models"][str(path)]
    assert fp32["pass"] and fp32["max_abs_delta_nmse"] < 1e-3 and fp32["precision"] == "fp32"
    assert set(fp32["conditions"]) == {"clean", "10-20", "30-40", "40-50", "50-60", "center25"}
    assert doc["models"][str(fp16)]["precision"] == "fp16" and doc["models"][str(fp16)]["pass"]

    assert main(["--golden", str(golden_path), "--model", str(bad), "--faces", str(FACES)]) == 1
    proc = subprocess.run([sys.executable, "-m", "runtime.verify", "--golden", str(golden_path), "--model", str(bad),
                           "--faces", str(FACES)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and "FAILED parity" in proc.stderr

    # the golden set refuses a faces folder whose images differ
    other = tmp_path / "other"
    (other / golden.paths[0]).parent.mkdir(parents=True)
    cv2.imwrite(str(other / golden.paths[0]), np.zeros((250, 250, 3), np.uint8))
    assert main(["--golden", str(golden_path), "--model", str(path), "--faces", str(other)]) == 2  # cannot run
    assert "differs from the image" in capsys.readouterr().err


@needs_data
@needs_dlib
def test_runtime_preprocessing_equals_training_and_evaluation(small_faces, tmp_cache):
    """The runtime's input for a face box is what evaluation feeds, and what the training cache reproduces."""
    from core.data import load_labels, read_split
    from core.preprocess import crop_matrix, image_to_target, preprocess, read_image, to_input
    from core.samples import occluded_crops
    from train.annotate import annotate
    from train.dataset import CropCache, sample
    from train.evaluate import load_faces

    annotate(small_faces, workers=1)
    labels = load_labels(small_faces, read_split(small_faces, "val"))
    cache = CropCache(small_faces, labels, "val-test")
    for face in load_faces(small_faces, "val"):
        image = read_image(small_faces / face.path)
        x, m = preprocess(image, face.box)
        _, by_cond = occluded_crops(small_faces, face, None, ["clean"], 0)
        assert np.array_equal(to_input(by_cond["clean"][2]), x)  # evaluation: bit for bit
        i = cache.paths.index(face.path)
        s = sample(cache, i, None, augment=False, mask=None)
        crop, target = s["crop"], s["landmarks"]
        # training goes through the cache (one more resampling): same framing, nearly the same pixels
        assert np.abs(to_input(crop) - x).mean() < 0.05
        assert np.abs(target - image_to_target(face.landmarks, crop_matrix(face.box))).max() * 256 < 0.5
