"""python -m runtime.benchmark (and train.benchmark, + PyTorch): a tiny run writes the JSON schema.

No timing assertions: speed targets belong in benchmarks, not tests.
"""
import importlib.util
import json
import shutil

import pytest

from runtime.benchmark import main
from tests.conftest import FACES

ROW_KEYS = {"model", "backend", "precision", "batch", "median_ms", "p90_ms", "p99_ms", "ms_per_face", "faces_per_s",
            "peak_rss_mb"}


def test_tiny_run_writes_the_schema(onnx_model, tmp_path, capsys):
    second = tmp_path / "second.onnx"
    shutil.copy(onnx_model, second)
    out = tmp_path / "bench.json"
    assert main(["--model", str(onnx_model), "--model", str(second), "--batch", "1,2", "--runs", "3",
                 "--warmup", "1", "--threads", "1", "--settle-timeout", "0", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {"cpu_count", "platform", "python", "onnxruntime"} <= set(doc["machine"])
    assert isinstance(doc["clean"], bool) and {"before", "after"} == set(doc["load"])
    rows = doc["results"]
    assert {(r["model"], r["batch"]) for r in rows} == {
        (m, b) for m in ("landmarks.onnx", "second.onnx", "preprocess") for b in (1, 2)}
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert r["p99_ms"] >= r["median_ms"] > 0 and r["faces_per_s"] > 0
        assert r["ms_per_face"] == pytest.approx(r["median_ms"] / r["batch"], rel=1e-3, abs=1e-3)
        assert r["peak_rss_mb"] is not None and r["peak_rss_mb"] >= 0
    models = [r for r in rows if r["model"] != "preprocess"]
    assert {(r["backend"], r["precision"]) for r in models} == {("onnxruntime", "fp32")}
    assert doc["ratios"]["vs_first"]["reference"] == "landmarks.onnx"
    assert set(doc["ratios"]["vs_first"]["by_batch"]) == {"1", "2"}
    assert set(doc["ratios"]["vs_first"]["by_batch"]["1"]) == {"second.onnx"}
    assert "median ms" in capsys.readouterr().out  # the table


HAS_DLIB = all(importlib.util.find_spec(m) is not None for m in ("dlib", "face_recognition_models"))


@pytest.mark.skipif(not (HAS_DLIB and (FACES / "cacd").is_dir()),
                    reason="needs dlib, face-recognition-models and ../shared faces")
def test_references_pytorch_and_dlib(onnx_model, tmp_path):
    pytest.importorskip("torch")
    from train import checkpoint
    from train.benchmark import main as main_with_torch
    from train.model import MobileNetL

    ckpt = tmp_path / "model.pt"
    checkpoint.save(ckpt, MobileNetL())
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit):  # the runtime's own benchmark has no torch option
        main(["--model", str(onnx_model), "--torch-checkpoint", str(ckpt), "--json", str(out)])
    assert main_with_torch(["--model", str(onnx_model), "--batch", "1", "--runs", "2", "--warmup", "1", "--no-memory",
                            "--torch-checkpoint", str(ckpt), "--dlib", "--settle-timeout", "0", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {r["backend"] for r in doc["results"]} == {"onnxruntime", "opencv", "pytorch-eager", "dlib"}
    assert set(doc["ratios"]["vs_pytorch"]["by_batch"]["1"]) == {"landmarks.onnx"}
    assert set(doc["ratios"]["vs_dlib"]["by_batch"]["1"]) == {"landmarks.onnx", "pytorch-eager"}
    assert all(r["peak_rss_mb"] is None for r in doc["results"])


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "none.onnx"), "--json", str(tmp_path / "b.json")]) == 2
    assert "none.onnx: model file not found" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_a_busy_machine_is_reported_not_hidden(onnx_model, tmp_path, monkeypatch, capsys):
    import runtime.benchmark as bench

    busy = {"cpus": 2, "load_avg_1m": 5.8, "busy_cpus": 1.9, "busy": True}
    readings = []
    monkeypatch.setattr(bench, "machine_load", lambda *a, **k: readings.append(1) or busy)
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)  # the settle wait polls without sleeping here
    out = tmp_path / "bench.json"
    assert main(["--model", str(onnx_model), "--batch", "1", "--runs", "2", "--warmup", "0", "--no-memory",
                 "--settle-timeout", "0", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["clean"] is False and doc["load"]["before"]["load_avg_1m"] == 5.8
    err = capsys.readouterr().err
    assert "machine busy (load 5.8 on 2 CPUs" in err and "not clean measurements" in err
    assert len(readings) == 2  # once before timing (no wait at timeout 0), once after
