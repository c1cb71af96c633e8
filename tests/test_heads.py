"""Visibility and face-score heads: shapes, targets, training, the three-output export contract, verify."""
import json

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import CHECKPOINT
from train.checkpoint import load
from train.model import HEAD_MODULES, MODELS, MobileNetL, ModelConfig, landmarks_of


def test_heads_shapes_and_ranges():
    torch.manual_seed(0)
    model = MobileNetL(MODELS["mobilenet_l"]).eval()
    x = torch.randn(3, 3, 256, 256) * 3  # large inputs: the probabilities must still stay in [0, 1]
    with torch.no_grad():
        landmarks, vis, score = model(x)
        _, vis_logits, score_logits = model(x, logits=True)
    assert landmarks.shape == (3, 68, 2) and vis.shape == (3, 68) and score.shape == (3,)
    assert ((vis >= 0) & (vis <= 1)).all() and ((score >= 0) & (score <= 1)).all()
    assert torch.allclose(torch.sigmoid(vis_logits), vis) and torch.allclose(torch.sigmoid(score_logits), score)
    assert vis.std() > 0  # the head depends on the input, not a constant
    assert torch.equal(landmarks_of((landmarks, vis, score)), landmarks)
    # the heads see the same features: the landmark path is the paper network's
    paper = MobileNetL(MODELS["paper"]).eval()
    paper.load_state_dict({k: v for k, v in model.state_dict().items() if k in paper.state_dict()})
    with torch.no_grad():
        assert torch.allclose(paper(x), landmarks)


@pytest.mark.parametrize("tap, side", [(2, 32), (7, 16)])
def test_visibility_from_a_finer_backbone_map_exports_and_matches(tap, side, tmp_path):
    from dataclasses import replace

    from export.export_onnx import export_onnx
    from runtime.onnxruntime_backend import OnnxRuntimeBackend

    torch.manual_seed(0)
    config = replace(MODELS["mobilenet_l"], vis_tap=tap, vis_channels=2)
    model = MobileNetL(config).eval()
    assert model.visibility[0].in_features == 320 + 2 * side * side  # pooled S1/S2/S3 + the tapped map
    plain = MobileNetL(MODELS["mobilenet_l"]).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k.split(".")[0] not in ("vis_map", "visibility")},
                          strict=False)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out[0], plain(x)[0])  # the tap changes only what the visibility head sees
    export_onnx(model, tmp_path / "tap.onnx")
    got = OnnxRuntimeBackend(tmp_path / "tap.onnx").run(x.numpy())
    assert np.abs(got["visibility"] - out[1].numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="vis_tap"):
        MobileNetL(replace(config, vis_tap=11))


def test_point_sampling_reads_the_map_at_each_point():
    from train.model import sample

    side = 16
    # channel 0: the left half of the crop is 1; channels 1 and 2: the column and the row index (ramps)
    ramp = torch.arange(side, dtype=torch.float32)
    m = torch.zeros(2, 3, side, side)
    m[:, 0, :, : side // 2] = 1.0
    m[:, 1], m[:, 2] = ramp[None, :], ramp[:, None]
    m[1] *= 2  # the second crop's map differs: each crop must read its own
    points = torch.tensor([[[0.1, 0.5], [0.9, 0.5], [5.5 / side, 9.5 / side], [-2.0, 0.5], [3.0, 0.5]],
                           [[0.9, 0.5], [0.1, 0.5], [9.5 / side, 5.5 / side], [0.5, -2.0], [0.5, 3.0]]])
    got = sample(m, points)
    assert got.shape == (2, 5, 3)
    assert got[0, 0, 0] > 0.99 and got[0, 1, 0] < 0.01  # deep inside the left and the right half
    # on a cell's centre the symmetric Gaussian averages a ramp to that cell's index exactly, along x and y
    assert torch.allclose(got[0, 2, 1:], torch.tensor([5.0, 9.0]), atol=1e-4)
    assert torch.allclose(got[1, 2, 1:], torch.tensor([18.0, 10.0]), atol=1e-4)  # crop 1: cells (9, 5), map x2
    assert got[1, 0, 0] < 0.01 and got[1, 1, 0] > 1.99
    # outside the crop: the border cells (a Gaussian clipped at the border averages to about half a cell in)
    assert torch.allclose(got[0, 3, :2], torch.tensor([1.0, 0.5]), atol=0.05)
    assert torch.allclose(got[0, 4, :2], torch.tensor([0.0, side - 1.5]), atol=0.05)
    assert abs(got[1, 3, 2] - 2 * 0.5) < 0.1 and abs(got[1, 4, 2] - 2 * (side - 1.5)) < 0.1


def test_point_sampling_weights_are_never_subnormal_and_match_the_full_gaussian():
    # subnormal floats cost x86 CPUs ~100x per multiply: the untruncated Gaussian made them 13-14 cells out, and
    # the sampler's MatMul took 8.6 of a crop's 12 ms in ONNX Runtime (docs/deployment.md)
    from train.model import cell_weights

    side = 64
    points = torch.linspace(-0.2, 1.2, 142).reshape(1, -1, 2)
    w = cell_weights(points, side)
    assert w.dtype == torch.float32 and w.min() >= torch.finfo(torch.float32).tiny
    cells = (points.double() * side - 0.5).clamp(0, side - 1)
    full = torch.exp(-0.5 * (torch.arange(side, dtype=torch.float64) - cells[..., None]) ** 2)
    full = full / full.sum(-1, keepdim=True)
    assert (w.double() - full).abs().max() < 1e-6
    # the floor is far out: the centre cell still carries its share (~0.4 of a one-cell-wide Gaussian)
    assert w.max() > 0.39


def test_point_visibility_exports_matches_and_leaves_the_landmarks(tmp_path):
    from dataclasses import replace

    from export.export_onnx import export_onnx
    from runtime.onnxruntime_backend import OnnxRuntimeBackend

    torch.manual_seed(0)
    assert MODELS["mobilenet_l"].vis_points  # what we ship
    model = MobileNetL(MODELS["mobilenet_l"]).eval()
    plain = MobileNetL(replace(MODELS["mobilenet_l"], vis_points=())).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("vis_points.")})
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        out, base = model(x, logits=True), plain(x, logits=True)
    assert torch.equal(out[0], base[0]) and torch.equal(out[2], base[2])
    assert (out[1] - base[1]).abs().max() > 1e-2  # the sampled maps add to the visibility logits
    # the visibility loss reaches the sampler and the heads, never the landmark path
    model.train()
    _, vis, _ = model(x, logits=True)
    vis.sum().backward()
    assert model.vis_points.mix.weight.grad.abs().sum() > 0 and model.fc.weight.grad is None
    export_onnx(model.eval(), tmp_path / "points.onnx")
    with torch.no_grad():
        probs = model(x)[1].numpy()
    got = OnnxRuntimeBackend(tmp_path / "points.onnx").run(x.numpy())
    assert np.abs(got["visibility"] - probs).max() < 1e-4
    with pytest.raises(ValueError, match="vis_points"):
        MobileNetL(replace(MODELS["mobilenet_l"], vis_points=(11,)))


def test_head_noise_moves_only_the_heads_and_only_in_training():
    torch.manual_seed(0)
    model = MobileNetL(MODELS["mobilenet_l"])
    model.head_noise = 0.2
    features = torch.randn(64, 3, 8, 8) * torch.tensor([0.1, 1.0, 10.0]).view(1, 3, 1, 1)
    moved = (model.train()._noisy(features) - features).transpose(0, 1).reshape(3, -1).std(dim=1)
    assert torch.allclose(moved, torch.tensor([0.02, 0.2, 2.0]), rtol=0.1)  # a fifth of each channel's spread
    assert torch.equal(model.eval()._noisy(features), features)
    # trained landmark weights: a random network's pooled features hardly vary between inputs
    model.load_state_dict(load(CHECKPOINT)["model"], strict=False)
    x = torch.randn(4, 3, 256, 256)
    with torch.no_grad():
        clean = model.eval()(x, logits=True)
        model.freeze_landmarks()
        model.train()  # frozen: batch norm keeps its statistics, so only the noise can change an output
        noisy = model(x, logits=True)
    assert torch.equal(noisy[0], clean[0])  # the landmarks never see the noise
    assert not torch.equal(noisy[1], clean[1]) and not torch.equal(noisy[2], clean[2])


def test_visibility_target_from_a_hand_made_mask():
    from core.samples import visible_points

    mask = np.ones((256, 256), np.float32)
    mask[100:150, 50:120] = 0  # a hole
    target = np.full((68, 2), 10 / 256, np.float32)  # every point at pixel (10, 10): visible
    target[0] = [60 / 256, 120 / 256]  # in the hole (x 60, y 120)
    target[1] = [119.5 / 256, 149.5 / 256]  # the hole's last pixel
    target[2] = [120.5 / 256, 149.5 / 256]  # just right of it
    target[3] = [-1 / 256, 10 / 256]  # outside the crop
    target[4] = [300 / 256, 10 / 256]  # outside the crop
    inside = np.ones(68, bool)
    inside[5] = False  # the teacher put it outside the source image (a cut-off jaw)
    vis = visible_points(target, mask, inside)
    assert vis.dtype == np.float32 and vis.shape == (68,)
    assert vis[:6].tolist() == [0, 0, 1, 0, 0, 0] and vis[6:].all()
    assert visible_points(target, None, inside)[:6].tolist() == [1, 1, 1, 0, 0, 0]


def test_training_loss_uses_heads_and_skips_negatives_for_landmarks():
    from train.train import landmark_loss, training_loss

    torch.manual_seed(0)
    n = 4
    batch = {"landmarks": torch.rand(n, 68, 2), "weight": torch.ones(n, 68), "visibility": torch.ones(n, 68),
             "face": torch.tensor([1.0, 1.0, 0.0, 0.0])}
    pred = batch["landmarks"].clone()
    pred[2:] += 5.0  # wildly wrong landmarks, but on the negatives: no landmark loss
    confident = (pred, torch.full((n, 68), 20.0), torch.tensor([20.0, 20.0, -20.0, -20.0]))
    assert training_loss(confident, batch, "wing") < 1e-6
    wrong_score = (pred, confident[1], -confident[2])
    assert training_loss(wrong_score, batch, "wing") > 10
    # a paper network's plain tensor gets the landmark loss alone; weights steer it
    assert torch.isclose(training_loss(pred[:2], {k: v[:2] for k, v in batch.items()}, "l1"), torch.tensor(0.0))
    half = torch.ones(2, 68)
    half[:, 34:] = 0
    err = batch["landmarks"][:2].clone()
    err[:, 34:] += 1.0  # error only where the weight is 0
    assert landmark_loss(err, batch["landmarks"][:2], "l1", half) == 0
    assert landmark_loss(err, batch["landmarks"][:2], "wing") > landmark_loss(err, batch["landmarks"][:2], "l1") / 100


def test_old_checkpoint_loads_as_the_paper_network(tmp_path):
    from train import checkpoint

    torch.manual_seed(0)
    old = MobileNetL(MODELS["paper"])
    path = tmp_path / "old.pt"
    checkpoint.save(path, old)
    state = torch.load(path, weights_only=True)
    for key in ("heads", "vis_channels"):  # written before the heads existed
        state["config"].pop(key)
    torch.save(state, path)
    model = checkpoint.load_model(path)
    assert model.config == ModelConfig() and not model.config.heads
    with torch.no_grad():
        x = torch.randn(1, 3, 256, 256)
        y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 68, 2)
    assert torch.allclose(y, old.eval()(x))


@pytest.fixture(scope="module")
def heads_onnx(tmp_path_factory):
    from export.export_onnx import export_onnx

    torch.manual_seed(0)
    model = MobileNetL(MODELS["mobilenet_l"]).eval()
    path = tmp_path_factory.mktemp("heads") / "heads.onnx"
    export_onnx(model, path)
    return model, path


def test_export_contract_three_outputs_dynamic_batch(heads_onnx):
    from runtime.onnxruntime_backend import OnnxRuntimeBackend

    model, path = heads_onnx
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["landmarks", "visibility", "face_score"]
    dims = {o.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in o.type.tensor_type.shape.dim]
            for o in graph.output}
    assert dims["landmarks"][1:] == [68, 2] and dims["visibility"][1:] == [68] and len(dims["face_score"]) == 1
    assert all(isinstance(d[0], str) for d in dims.values())  # the batch axis is dynamic
    backend = OnnxRuntimeBackend(path)
    assert backend.outputs == ("landmarks", "visibility", "face_score")
    for n in (1, 5):
        x = np.random.default_rng(n).normal(0, 1, (n, 3, 256, 256)).astype(np.float32)
        out = backend.run(x)
        assert {k: v.shape for k, v in out.items()} == {"landmarks": (n, 68, 2), "visibility": (n, 68),
                                                         "face_score": (n,)}
        with torch.no_grad():
            ref = model(torch.from_numpy(x))
        for got, want in zip(out.values(), ref):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def test_fp16_and_int8_artifacts_carry_the_heads(heads_onnx, tmp_path):
    pytest.importorskip("modelopt")
    from calibration.dataset import build_calibration_set
    from export.quantize import make_fp16, make_int8
    from runtime.onnxruntime_backend import OnnxRuntimeBackend
    from tests.fake_tensorrt import synthetic_faces

    _, path = heads_onnx
    fp16 = make_fp16(path, tmp_path / "m.fp16.onnx")
    calib = build_calibration_set(synthetic_faces(tmp_path / "calib", count=8), count=8)
    int8 = make_int8(path, tmp_path / "m.int8.onnx", calib)
    for artifact in (fp16, int8):
        assert OnnxRuntimeBackend(artifact).outputs == ("landmarks", "visibility", "face_score")
    # the heads stay float in the INT8 graph: the only dequantized tensors they read are the backbone maps
    # the point sampler reads (INT8 in the engine anyway), never a weight or an activation of their own
    model = onnx.load(str(int8))
    producer = {o: n for n in model.graph.node for o in n.output}
    head_nodes = [n for n in model.graph.node if n.name.startswith(tuple(f"/{m}/" for m in HEAD_MODULES))]
    sigmoid = next(n for n in model.graph.node if "visibility" in n.output)
    head_nodes.append(producer[sigmoid.input[0]])  # the sum of the pooled and the point logits
    readers = [(n, producer[i]) for n in head_nodes for i in n.input
               if getattr(producer.get(i), "op_type", "") == "DequantizeLinear"]
    assert head_nodes and all(n.name.startswith("/vis_points/") for n, _ in readers)
    assert all(producer[producer[dq.input[0]].input[0]].name.startswith("/features/") for _, dq in readers)


def _invert_visibility(src, dst):
    """The same ONNX with the visibility logits negated before their sigmoid: sigmoid(-z) = 1 - visibility."""
    proto = onnx.load(str(src))
    sigmoid = next(n for n in proto.graph.node if n.op_type == "Sigmoid" and "visibility" in n.output)
    sigmoid.input[0], logits = "negated_visibility_logits", sigmoid.input[0]
    index = list(proto.graph.node).index(sigmoid)
    proto.graph.node.insert(index, onnx.helper.make_node("Neg", [logits], [sigmoid.input[0]], name="/test/Neg"))
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.usefixtures("tmp_cache")
def test_verify_checks_the_heads_and_fails_inverted_visibility(heads_onnx, tmp_path):
    from tests.conftest import FACES, MASKS, needs_data, needs_dlib, needs_masks

    for mark in (needs_data, needs_masks, needs_dlib):
        if mark.args[0]:
            pytest.skip(mark.kwargs["reason"])
    from export.export_onnx import build_golden
    from runtime.verify import main

    model, path = heads_onnx
    golden, _ = build_golden(model, FACES, MASKS, count=4, seed=0, meta={})
    assert golden.reference_visibility.shape == (24, 68) and golden.reference_score.shape == (24,)
    golden_path = tmp_path / "g.golden.npz"
    golden.save(golden_path)
    inverted = _invert_visibility(path, tmp_path / "inverted.onnx")
    out = tmp_path / "v.json"
    assert main(["--golden", str(golden_path), "--model", str(path), "--faces", str(FACES), "--json", str(out)]) == 0
    good = json.loads(out.read_text())["models"][str(path)]
    assert good["pass"] and good["prob_diff"] < 1e-4 and good["min_visibility_agreement"] == 1.0
    assert main(["--golden", str(golden_path), "--model", str(inverted), "--faces", str(FACES),
                 "--json", str(out)]) == 1
    bad = json.loads(out.read_text())["models"][str(inverted)]
    # the landmarks are untouched, so only the heads' checks can fail it
    assert bad["max_abs_delta_nmse"] < 1e-3 and not bad["pass"] and bad["min_visibility_agreement"] < 0.5


def test_verify_fails_a_model_with_nan_outputs():
    from runtime.golden import Golden
    from runtime.verify import compare, judge

    rng = np.random.default_rng(0)
    faces, conds = 3, ["clean", "30-40"]
    landmarks = rng.uniform(60, 190, (faces, 68, 2)).astype(np.float32)
    ref = rng.uniform(0.3, 0.7, (faces * 2, 68, 2)).astype(np.float32)
    golden = Golden(paths=["a", "b", "c"], sha1=["", "", ""], boxes=np.tile([64, 64, 192, 192], (faces, 1)),
                    landmarks=landmarks, yaw=np.zeros(faces), face_index=np.repeat(np.arange(faces), 2),
                    condition=conds * faces, mask_id=[""] * 6, masks=np.ones((6, 256, 256), bool), reference=ref)
    pred = {"landmarks": ref.copy()}
    assert judge(compare(golden, pred), "fp32", {"fp32": 0.01})["pass"]
    pred["landmarks"][1::2] = np.nan  # NaN on the occluded samples only, not on the first
    verdict = judge(compare(golden, pred), "fp32", {"fp32": 0.01})
    assert not verdict["pass"] and np.isnan(verdict["max_abs_delta_nmse"])


def test_verify_bounds_the_visibility_tail_not_one_flipped_point():
    """A point the engine's landmarks move onto an occluder's edge may flip (Δp near 1) without failing the model;
    flipping more than 0.1 % of the points fails it, and the face score is bounded at its largest difference."""
    from runtime.golden import Golden
    from runtime.verify import DEFAULT_BOUNDS, compare, judge

    rng = np.random.default_rng(0)
    faces = 400  # 400 samples x 68 points: 0.1 % is 27 points
    ref = rng.uniform(0.3, 0.7, (faces, 68, 2)).astype(np.float32)
    vis = rng.uniform(0, 1, (faces, 68)).astype(np.float32)
    score = rng.uniform(0.6, 1, faces).astype(np.float32)
    golden = Golden(paths=[str(i) for i in range(faces)], sha1=[""] * faces, boxes=np.tile([64, 64, 192, 192], (faces, 1)),
                    landmarks=rng.uniform(60, 190, (faces, 68, 2)).astype(np.float32), yaw=np.zeros(faces),
                    face_index=np.arange(faces), condition=["30-40"] * faces, mask_id=[""] * faces,
                    masks=np.ones((faces, 256, 256), bool), reference=ref, reference_visibility=vis,
                    reference_score=score)

    def verdict(flipped: int, score_shift: float | np.ndarray = 0.0) -> dict:
        out_vis = vis.copy().ravel()
        out_vis[:flipped] = 1 - out_vis[:flipped]
        out = {"landmarks": ref, "visibility": out_vis.reshape(vis.shape), "face_score": score + score_shift}
        return judge(compare(golden, out, "int8"), "int8", DEFAULT_BOUNDS)

    one = verdict(1)
    assert one["pass"] and one["max_visibility_diff"] > 0.4 and one["prob_diff"] < 0.01
    assert not verdict(int(0.002 * vis.size))["pass"]  # 0.2 % of the points flipped
    assert not verdict(0, score_shift=-0.5)["pass"]
    one_face = np.zeros(faces, np.float32)
    one_face[0] = -0.5
    assert not verdict(0, score_shift=one_face)["pass"]  # the face score is bounded at its largest difference
    assert not judge(compare(golden, {"landmarks": ref, "visibility": np.where(np.arange(vis.size) == 0, 1 - vis.ravel(),
                     vis.ravel()).reshape(vis.shape), "face_score": score}, "fp32"), "fp32", DEFAULT_BOUNDS)["pass"]  # FP32: none


def test_verify_exit_codes_tell_a_regression_from_a_broken_setup(heads_onnx, tmp_path, monkeypatch, capsys):
    """0 pass, 1 outside a bound, 2 could not run; a broken model does not cost the others their result."""
    import runtime.verify as verify
    from runtime.golden import Golden

    golden_path = tmp_path / "g.golden.npz"
    _, path = heads_onnx
    rng = np.random.default_rng(0)
    golden = Golden(paths=["a"], sha1=[""], boxes=np.array([[64.0, 64, 192, 192]]),
                    landmarks=rng.uniform(80, 170, (1, 68, 2)).astype(np.float32), yaw=np.zeros(1),
                    face_index=np.zeros(2, int), condition=["clean", "30-40"], mask_id=["", ""],
                    masks=np.ones((2, 256, 256), bool), reference=np.zeros((2, 68, 2), np.float32),
                    meta={"preprocess_version": "crop-v1"})
    golden.save(golden_path)
    crops = np.zeros((2, 256, 256, 3), np.uint8)
    monkeypatch.setattr(Golden, "crops", lambda self, faces: crops)
    from runtime.backends import load_backend
    good = verify.run_model(load_backend(path), crops)
    golden.reference, golden.reference_visibility, golden.reference_score = (good["landmarks"], good["visibility"],
                                                                            good["face_score"])
    golden.save(golden_path)
    args = ["--golden", str(golden_path), "--faces", str(tmp_path), "--json", str(tmp_path / "v.json")]
    assert verify.main(args + ["--model", str(path)]) == 0
    inverted = _invert_visibility(path, tmp_path / "inverted.onnx")
    assert verify.main(args + ["--model", str(path), "--model", str(inverted)]) == verify.EXIT_OUTSIDE_BOUND
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    assert verify.main(args + ["--model", str(path), "--model", str(broken)]) == verify.EXIT_CANNOT_RUN
    doc = json.loads((tmp_path / "v.json").read_text())
    assert doc["models"][str(path)]["pass"] and "broken.onnx" in doc["models"][str(broken)]["error"]
    # a damaged golden file: exit 2 and a message naming it, not a traceback
    import zipfile

    damaged = tmp_path / "damaged.golden.npz"
    data = bytearray(golden_path.read_bytes())
    member = zipfile.ZipFile(golden_path).getinfo("reference.npy")
    data[member.header_offset + 30 + len(member.filename) + len(member.extra) + member.compress_size // 2] ^= 0x01
    damaged.write_bytes(bytes(data))  # one flipped bit inside the reference predictions
    assert verify.main(["--golden", str(damaged), "--faces", str(tmp_path), "--model", str(path)]) == 2
    assert "damaged.golden.npz" in capsys.readouterr().err


@pytest.mark.usefixtures("tmp_cache")
def test_export_writes_nothing_under_the_final_names_when_parity_fails(tmp_path, monkeypatch):
    """A failed (or killed) export leaves the earlier model and its golden set as they were, and no temp files;
    an existing OUT needs --force."""
    from tests.conftest import FACES, MASKS, needs_data, needs_dlib, needs_masks

    for mark in (needs_data, needs_masks, needs_dlib):
        if mark.args[0]:
            pytest.skip(mark.kwargs["reason"])
    import export.export_onnx as exp
    from train import checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    checkpoint.save(ckpt, MobileNetL(MODELS["mobilenet_l"]))
    out = tmp_path / "out" / "m.onnx"
    args = ["--checkpoint", str(ckpt), "--out", str(out), "--golden-faces", "2", "--faces", str(FACES),
            "--masks", str(MASKS)]
    exp.main(args)
    before = (out.read_bytes(), out.with_suffix(".golden.npz").read_bytes())
    with pytest.raises(SystemExit) as refused:  # "OUT exists; pass --force" (argparse: exit status 2)
        exp.main(args)
    assert refused.value.code == 2
    monkeypatch.setattr(exp, "parity", lambda *a: {"landmarks": 34.7})  # a parity check that fails
    with pytest.raises(SystemExit, match="parity check failed, nothing written under m.onnx"):
        exp.main(args + ["--force"])
    assert (out.read_bytes(), out.with_suffix(".golden.npz").read_bytes()) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.golden.npz", "m.onnx"]  # no temp files left


class _StubCache:
    """A CropCache stand-in: N noise crops with a centred mean face (no data or dlib needed)."""

    def __init__(self, n: int):
        from train.dataset import CACHE_SIZE

        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 255, (n, CACHE_SIZE, CACHE_SIZE, 3), dtype=np.uint8)
        pts = rng.uniform(120, 200, (68, 2)).astype(np.float32)
        self.landmarks = self.mirrored = np.repeat(pts[None], n, 0)
        self.inside = np.ones((n, 68), bool)

    def __len__(self) -> int:
        return len(self.images)


def test_negatives_come_on_top_of_the_faces():
    """Every face is in every epoch; the negatives are extra (replacing faces cost the landmarks: the A/B)."""
    from train.dataset import Recipe, TrainSet

    cache = _StubCache(40)
    extra = TrainSet(cache, 0, Recipe(negatives=0.25))
    assert (len(extra), extra.faces) == (50, 40)
    faces = [float(extra[i]["face"]) for i in range(len(extra))]
    assert faces == [1.0] * 40 + [0.0] * 10
    in_batch = TrainSet(cache, 0, Recipe(negatives=0.25, negatives_extra=False))
    assert len(in_batch) == 40 and 0 < sum(float(in_batch[i]["face"]) == 0 for i in range(40)) < 40
    assert len(TrainSet(cache, 0, Recipe(negatives=0.25), negatives=False)) == 40  # no heads, no negatives
