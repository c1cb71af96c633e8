"""ONNX export, precision artifacts (ModelOpt FP16 / INT8 Q/DQ) and the calibration set, proven in ONNX Runtime."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import CHECKPOINT, FACES, MASKS, ROOT, needs_data, needs_dlib, needs_masks
from train.model import HEAD_MODULES

pytest.importorskip("modelopt", reason="quantize extra (nvidia-modelopt) not installed")


def test_calibration_set_selection_and_key(small_faces, tmp_cache):
    from calibration.dataset import build_calibration_set, calibration_key, select_images

    a = select_images(small_faces, 16, seed=0)
    assert a == select_images(small_faces, 16, seed=0) and len(set(a)) == 16
    assert a != select_images(small_faces, 16, seed=1)
    val_test = {l.split(",")[0] for l in (small_faces / "splits.csv").read_text().splitlines()[1:]
                if not l.endswith(",train")}
    assert not set(a) & val_test  # training split only
    assert len(select_images(small_faces, 1000)) == 48  # capped at what exists
    calib = build_calibration_set(small_faces, 24, framing="whole")
    assert calib.inputs.shape == (24, 3, 256, 256) and calib.inputs.dtype == np.float32
    assert calib.occluded.tolist() == [False, True] * 12 and calib.framing == "whole image"
    assert (calib.inputs[1::2] == -1.0).mean() > (calib.inputs[0::2] == -1.0).mean() + 0.05  # black holes
    assert -1.0 <= calib.inputs.min() and calib.inputs.max() <= 1.0
    assert calib.key == calibration_key(calib.paths, 0) != calibration_key(calib.paths, 1)
    boxes = [[0.0, 0.0, 100.0, 100.0]] * len(calib.paths)  # the same images cropped from labelled boxes
    assert calibration_key(calib.paths, 0, boxes) != calib.key
    assert calib.key != build_calibration_set(small_faces, 6, framing="whole").key


def test_unlabelled_calibration_is_framed_by_the_detector(small_faces, tmp_cache, monkeypatch):
    from calibration.dataset import build_calibration_set

    whole = build_calibration_set(small_faces, 8, framing="whole")
    found = build_calibration_set(small_faces, 8)  # no labels here: auto frames with the face detector
    assert found.framing.startswith("detector boxes") and found.paths == whole.paths
    assert found.key != whole.key  # a cache of the whole-image set is stale for this one
    assert np.abs(found.inputs[0::2] - whole.inputs[0::2]).mean() > 0.01  # other crops of the same images
    with pytest.raises(SystemExit, match="not labelled"):
        build_calibration_set(small_faces, 8, framing="teacher")
    # labels for some images only (a fresh machine labels the test faces): teacher boxes where they exist
    from types import SimpleNamespace

    import calibration.dataset

    box = (30.0, 30.0, 200.0, 200.0)
    monkeypatch.setattr(calibration.dataset, "labels_path", lambda faces_dir: small_faces / "splits.csv")
    monkeypatch.setattr(calibration.dataset, "load_labels",
                        lambda faces_dir, paths: SimpleNamespace(paths=[found.paths[0]], boxes=[box]))
    mixed = build_calibration_set(small_faces, 8)
    assert mixed.framing.startswith("detector boxes 7") and "teacher boxes 1" in mixed.framing
    assert mixed.key != found.key and np.array_equal(mixed.inputs[1:], found.inputs[1:])
    assert build_calibration_set(small_faces, 8, framing="teacher").framing == "whole image 7, teacher boxes 1"
    with pytest.raises(ValueError, match="choose from"):
        build_calibration_set(small_faces, 8, framing="tight")


@pytest.fixture(scope="module")
def artifacts(onnx_model, tmp_path_factory):
    """FP16 and INT8 artifacts of the test model, calibrated on 128 real training images (fewer make the INT8 ranges noisy)."""
    if not (FACES / "splits.csv").exists():
        pytest.skip(f"real face data not found at {FACES}")
    from calibration.dataset import build_calibration_set
    from export.quantize import make_fp16, make_int8

    out = tmp_path_factory.mktemp("artifacts")
    calib = build_calibration_set(FACES, 128)
    return make_fp16(onnx_model, out / "m.fp16.onnx"), make_int8(onnx_model, out / "m.int8.onnx", calib), calib


def test_qdq_properties(artifacts, onnx_model):
    from core.files import sha256_file

    _, int8, calib = artifacts
    model = onnx.load(str(int8))
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    in_float = ("/features/features.0/", "/features/features.1/block/block.0/")  # the stem and its reader: by design
    convs = [n for n in g.node if n.op_type == "Conv" and n.name.startswith("/features/")
             and not n.name.startswith(in_float)]
    assert len(convs) == 49  # the backbone; the head (C2 conv, S1/S2/S3, FC) stays in float by design
    floats = [n for n in g.node if n.op_type in ("Conv", "Gemm")
              and (not n.name.startswith("/features/") or n.name.startswith(in_float))]
    # 8 in the landmark head and stem; the heads add vis_map, four Gemms and the point sampler's two
    heads = sum(n.name.startswith(tuple(f"/{m}/" for m in HEAD_MODULES)) for n in floats)
    assert len(floats) - heads == 8 and heads in (0, 7)
    assert all(producer[n.input[1]].op_type != "DequantizeLinear" for n in floats if n.input[1] in producer)
    assert all(getattr(producer.get(n.input[0]), "op_type", None) != "DequantizeLinear" for n in floats)
    for conv in convs:
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear", conv.name
        scale, zero = inits[dq.input[1]], inits[dq.input[2]]
        weight = inits.get(producer[dq.input[0]].input[0]) if dq.input[0] in producer else inits[dq.input[0]]
        assert scale.shape == (weight.shape[0],), f"{conv.name}: weights not per output channel"
        assert not zero.any() and zero.dtype == np.int8
        assert producer[conv.input[0]].op_type == "DequantizeLinear", f"{conv.name}: activation not quantized"
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            assert not inits[n.input[2]].any(), "non-zero zero point"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["precision"] == "int8" and meta["calibration_key"] == calib.key
    assert meta["source_onnx_sha256"] == sha256_file(onnx_model) and meta["opset"] == "19"


def test_fp16_graph_keeps_float32_io(artifacts):
    fp16, _, _ = artifacts
    model = onnx.load(str(fp16))
    f32 = onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == f32
    assert model.graph.output[0].type.tensor_type.elem_type == f32
    conv_w = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    assert all(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer if i.name in conv_w)


def test_op_check_keeps_the_sampling_ops_inside_the_visibility_head(onnx_model):
    """Gather, MatMul, Exp... are TensorRT-parsable but not fusable: only the head's point sampling may use them."""
    from export.export_onnx import SAMPLING_OPS, SAMPLING_SCOPE, check_op_set

    nodes = list(onnx.load(str(onnx_model)).graph.node)
    check_op_set(nodes)
    sampling = [n for n in nodes if n.op_type in SAMPLING_OPS]
    if not sampling:
        pytest.skip("this checkpoint's visibility head does not sample at the points")
    assert all(n.name.startswith(SAMPLING_SCOPE) for n in sampling)
    stray = sampling[0]
    stray.name = "/features/features.3/" + stray.name.rsplit("/", 1)[-1]
    with pytest.raises(RuntimeError, match=f"{stray.op_type} \\(/features/features.3/"):
        check_op_set(nodes)
    with pytest.raises(RuntimeError, match="'Softmax'"):
        check_op_set([onnx.helper.make_node("Softmax", ["x"], ["y"], name="/fc/Softmax")])


@pytest.fixture(scope="module")
def parity(reference_model, onnx_model, artifacts, tmp_path_factory):
    """runtime.verify of FP32, FP16 and INT8 on a golden set of 200 real test faces x 6 conditions (the bounds hold for 200, as the issue sets them)."""
    if not (MASKS.is_dir() and (FACES / "splits.csv").exists()):
        pytest.skip("real faces and Liu et al. masks needed")
    pytest.importorskip("dlib", reason="teacher extra needed for the ground truth")
    from export.export_onnx import build_golden
    from runtime.verify import main

    fp16, int8, _ = artifacts
    tmp = tmp_path_factory.mktemp("parity")
    golden, _ = build_golden(reference_model, FACES, MASKS, count=200, seed=0, meta={})
    golden.save(tmp / "g.npz")
    rc = main(["--golden", str(tmp / "g.npz"), "--faces", str(FACES), "--json", str(tmp / "v.json"),
               "--model", str(onnx_model), "--model", str(fp16), "--model", str(int8)])
    models = list(json.loads((tmp / "v.json").read_text())["models"].values())
    assert [m["precision"] for m in models] == ["fp32", "fp16", "int8"]
    return rc, dict(zip(("fp32", "fp16", "int8"), models))


def test_fp32_and_fp16_nmse_parity_on_real_faces(parity):
    rc, models = parity
    assert models["fp32"]["pass"] and models["fp32"]["max_abs_delta_nmse"] < 1e-3
    assert models["fp16"]["pass"], models["fp16"]["conditions"]  # |ΔNMSE| <= 0.05 under every condition
    # INT8 meets the bound on clean faces, and really differs from FP32 (the comparison is not vacuous)
    assert abs(models["int8"]["conditions"]["clean"]["delta_nmse"]) <= 0.30
    assert models["int8"]["conditions"]["clean"]["max_dev_px"] > 0.0


def test_int8_nmse_parity_under_every_condition(parity):
    rc, models = parity
    assert models["int8"]["pass"], {k: v["delta_nmse"] for k, v in models["int8"]["conditions"].items()}
    assert rc == 0


@needs_data
@needs_masks
@needs_dlib
def test_export_cli_metadata_ops_and_parity(tmp_path, tmp_cache):
    import torch

    from train import checkpoint
    from train.model import MobileNetL

    ckpt = CHECKPOINT
    if not ckpt.exists():
        torch.manual_seed(0)
        ckpt = tmp_path / "init.pt"
        checkpoint.save(ckpt, MobileNetL())
    out = tmp_path / "m.onnx"
    proc = subprocess.run([sys.executable, "export/export_onnx.py", "--checkpoint", str(ckpt), "--out", str(out),
                           "--golden-faces", "3", "--opset", "17"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # 56 convolutions in the paper's network, one more (vis_map) with the heads
    convs = 57 if torch.load(ckpt, weights_only=True)["config"].get("heads") else 56
    assert f"ONNX ops: Conv {convs}," in proc.stdout and "max landmark difference" in proc.stdout
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert {"preprocess", "schema", "checkpoint_sha256", "tools", "precision"} <= set(meta)
    assert json.loads(meta["preprocess"])["input_size"] == 256 and json.loads(meta["schema"])["num_landmarks"] == 68
    assert model.graph.input[0].name == "input" and model.graph.output[0].name == "landmarks"
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") and [d.dim_value for d in dims[1:]] == [3, 256, 256]
    assert out.with_suffix(".golden.npz").exists()


def test_int8_sweep_finds_activation_qdq_and_removes_it(artifacts, onnx_model):
    import onnxruntime as ort

    from export.int8_sweep import activation_qdq, block_of, with_float_weights, without_qdq

    _, int8, _ = artifacts
    model = onnx.load(str(int8))
    pairs = activation_qdq(model)
    inits = {i.name for i in model.graph.initializer}
    assert len(pairs) >= 40 and not any(q.input[0] in inits for q, _ in pairs)
    blocks = {block_of(q.input[0]) for q, _ in pairs}
    assert blocks >= {f"features.{i}" for i in range(2, 12)} and not blocks & {"input", "features.0"}  # stem: float

    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 256, 256)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString() if isinstance(m, onnx.ModelProto) else str(m),
                                    providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]

    fp32 = run(onnx_model)
    weights_only = without_qdq(model, pairs)
    read = {i for n in weights_only.graph.node for i in n.input}
    assert not any(dq.output[0] in read for _, dq in pairs)  # nothing reads a quantized activation any more
    # with only the weights quantized the graph is closer to FP32 than the full INT8 graph
    assert np.abs(run(weights_only) - fp32).mean() < np.abs(run(model) - fp32).mean()
    # and with the float weights back as well it is the FP32 graph
    convs = {n.name for n in weights_only.graph.node if n.op_type == "Conv"}
    assert np.abs(run(with_float_weights(weights_only, onnx.load(str(onnx_model)), convs)) - fp32).max() < 1e-4
