"""export/triton_repo.py: the model repository for stock Triton servers, its config.pbtxt parsed against Triton's
own model-configuration schema (tritonclient's model_config.proto) and checked against the model's tensors.

The tensorrt_plan path is checked with a stand-in engine (its sidecar and source ONNX are real; TensorRT is
not installed here, so no Triton has loaded such a plan from this code).
"""
from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from core.files import sha256_file
from export.triton_repo import main, parse_config, write_repo
from tests.conftest import ROOT

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient not installed (the serve extra)")


@pytest.fixture(scope="module")
def heads_onnx(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from export.export_onnx import export_onnx
    from train.model import MODELS, MobileNetL

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("repo_model") / "heads.onnx"
    export_onnx(MobileNetL(MODELS["mobilenet_l"]).eval(), path)  # simplified, as exported: shapes inferred
    return path


def fake_engine(folder, onnx_path, profile=(1, 4, 8)):
    """A stand-in engine file with a real sidecar (as export/engine.py writes it) naming ``onnx_path``."""
    engine = folder / "model.engine"
    engine.write_bytes(b"not a real plan")
    sidecar = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "precision": "fp16",
               "profile": {"input": "input", **{k: [b, 3, 256, 256] for k, b in zip(("min", "opt", "max"), profile)}},
               "onnx": str(onnx_path), "onnx_sha256": sha256_file(onnx_path)}
    (folder / "model.engine.json").write_text(json.dumps(sidecar))
    return engine


def model_dims(path) -> dict[str, list[int]]:
    """Per-sample dims of the ONNX outputs (the batch axis dropped)."""
    graph = onnx.load(str(path)).graph
    return {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim][1:] for o in graph.output}


def test_onnx_repository_parses_and_matches_the_model(heads_onnx, tmp_path):
    folder = write_repo(heads_onnx, tmp_path / "repo", instances=2, max_batch=16, queue_delay_us=250)
    assert folder == tmp_path / "repo" / "landmarks"
    assert (folder / "1" / "model.onnx").read_bytes() == heads_onnx.read_bytes()
    config = parse_config((folder / "config.pbtxt").read_text())
    assert config.name == "landmarks" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert [(i.name, list(i.dims)) for i in config.input] == [("input", [3, 256, 256])]
    assert config.input[0].data_type == config.output[0].data_type == 11  # TYPE_FP32
    # each output's dims, after Triton's reshape, are the network's own: what Triton checks when loading
    served = {o.name: (list(o.reshape.shape) if o.HasField("reshape") else list(o.dims)) for o in config.output}
    assert served == model_dims(heads_onnx) == {"landmarks": [68, 2], "visibility": [68], "face_score": []}
    assert [list(o.dims) for o in config.output] == [[68, 2], [68], [1]]  # the clients' shapes, as runtime.serve's
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, 2)]  # KIND_CPU


def test_paper_model_has_landmarks_only(onnx_model, tmp_path):
    config = parse_config((write_repo(onnx_model, tmp_path, kind="gpu") / "config.pbtxt").read_text())
    assert [o.name for o in config.output] == list(model_dims(onnx_model))
    assert config.instance_group[0].kind == 1  # KIND_GPU


def test_engine_repository_takes_the_profile(heads_onnx, tmp_path):
    engine = fake_engine(tmp_path, heads_onnx)
    folder = write_repo(engine, tmp_path / "repo")
    config = parse_config((folder / "config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8 and config.instance_group[0].kind == 1
    assert (folder / "1" / "model.plan").read_bytes() == b"not a real plan"
    assert json.loads((folder / "1" / "model.plan.json").read_text())["tensorrt_version"] == "10.3.0"
    assert "TensorRT 10.3.0 fp16 engine for Orin" in (folder / "config.pbtxt").read_text()
    with pytest.raises(ValueError, match="profile maximum 8"):
        write_repo(engine, tmp_path / "other", max_batch=16)
    with pytest.raises(ValueError, match="GPU only"):
        write_repo(engine, tmp_path / "other", kind="cpu")
    with pytest.raises(ValueError, match="starts at batch 2"):
        write_repo(fake_engine(tmp_path, heads_onnx, (2, 4, 8)), tmp_path / "other")


def test_engine_needs_the_onnx_it_was_built_from(heads_onnx, onnx_model, tmp_path):
    engine = fake_engine(tmp_path, heads_onnx)
    with pytest.raises(ValueError, match="not the ONNX"):
        write_repo(engine, tmp_path / "repo", onnx=onnx_model)
    sidecar = json.loads((tmp_path / "model.engine.json").read_text())
    (tmp_path / "model.engine.json").write_text(json.dumps({**sidecar, "onnx": str(tmp_path / "gone.onnx")}))
    with pytest.raises(FileNotFoundError, match="--onnx"):
        write_repo(engine, tmp_path / "repo")
    assert write_repo(engine, tmp_path / "repo", onnx=heads_onnx).is_dir()


def test_existing_model_needs_force_and_cli(heads_onnx, tmp_path, capsys):
    out = tmp_path / "repo"
    assert main(["--model", str(heads_onnx), "--out", str(out)]) == 0
    assert main(["--model", str(heads_onnx), "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    (out / "landmarks" / "stale.txt").write_text("old")
    assert main(["--model", str(heads_onnx), "--out", str(out), "--force", "--max-batch", "4"]) == 0
    assert not (out / "landmarks" / "stale.txt").exists()
    assert parse_config((out / "landmarks" / "config.pbtxt").read_text()).max_batch_size == 4
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no half-written folder left
    proc = subprocess.run([sys.executable, "-m", "export.triton_repo", "--help"], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0 and "tensorrt_plan" in proc.stdout and "max_batch_size" in proc.stdout


def test_schema_rejects_what_triton_would():
    with pytest.raises(ValueError, match="ModelConfig"):
        parse_config('name: "landmarks"\nmax_batch_size: 8\nmax_queue_delay: 5\n')  # no such field
    with pytest.raises(ValueError, match="ModelConfig"):
        parse_config('name: "landmarks"\ninstance_group [ { kind: KIND_TPU } ]\n')  # no such enum value
