"""export/build_engine.py: arguments, input checks and their messages, the precision artifacts, exit codes.

TensorRT itself is the recording fake (tests/fake_tensorrt.py) in-process, and really absent in the
subprocess tests (forced absent, so they also hold on a machine that has TensorRT).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.fake_tensorrt import install, synthetic_faces, tiny_onnx

SCRIPT = ROOT / "export" / "build_engine.py"


def run_cli(*args, prelude: str = "", cwd=ROOT) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter; ``prelude`` runs first (e.g. to hide tensorrt or fake quantize)."""
    code = textwrap.dedent(f"""
        import runpy, sys
        sys.path.insert(0, {str(ROOT)!r})
        {prelude}
        sys.argv = ["build_engine.py", *{list(map(str, args))!r}]
        runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


NO_TENSORRT = "sys.modules['tensorrt'] = None; sys.modules['pycuda'] = None; sys.modules['pycuda.driver'] = None"
FAKE_QUANTIZE = textwrap.dedent("""
    from tests.fake_tensorrt import tiny_onnx
    import export.quantize as q
    q.make_fp16 = lambda src, dst: tiny_onnx(dst, "fp16")
    q.make_int8 = lambda src, dst, calib, method="entropy": tiny_onnx(dst, "int8", {"calibration_key": calib.key})
""").replace("\n", "; ").strip("; ")


def main(*args) -> int:
    from export.build_engine import main as cli_main

    return cli_main([str(a) for a in args])


@pytest.fixture
def fp32_onnx(tmp_path):
    return tiny_onnx(tmp_path / "model.onnx")


# ------------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("how", ["script", "module"])
def test_help_explains_itself(how):
    cmd = [sys.executable, str(SCRIPT), "--help"] if how == "script" else \
        [sys.executable, "-m", "export.build_engine", "--help"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for text in ("--onnx", "--precision {fp32,fp16,int8}", "--out", "--calib-faces DIR", "--calibrator",
                 "--calib-cache FILE", "--calib-count N", "--batch MIN,OPT,MAX", "--workspace MB",
                 "--timing-cache FILE", "--dla-core N", "--force", "TensorRT 11: strongly typed",
                 "refused on 11", "Exit status"):
        assert text in out.stdout, text


# ------------------------------------------------------------------------------------------- validation


def test_validation_errors(tmp_path, fp32_onnx, capsys):
    fp16_onnx = tiny_onnx(tmp_path / "model.fp16.onnx", "fp16")
    qdq_onnx = tiny_onnx(tmp_path / "model.int8.onnx", "int8")
    out = tmp_path / "out.engine"
    cases = [
        (["--onnx", tmp_path / "missing.onnx", "--precision", "fp32", "--out", out], "missing.onnx: no such ONNX file"),
        (["--onnx", fp16_onnx, "--precision", "int8", "--out", out], "is a fp16 ONNX; for a int8 engine give the FP32"),
        (["--onnx", qdq_onnx, "--precision", "fp32", "--out", out], "is a int8 ONNX"),
        (["--onnx", fp32_onnx, "--precision", "int8", "--out", out, "--calib-faces", tmp_path / "nope"],
         "INT8 from the FP32 ONNX needs calibration images: --calib-faces DIR"),
        (["--onnx", fp32_onnx, "--precision", "fp32", "--out", out, "--dla-core", "0"], "DLA runs no FP32"),
        (["--onnx", fp32_onnx, "--precision", "fp16", "--out", out, "--dla-core", "-1"], "core number >= 0"),
        (["--onnx", fp32_onnx, "--precision", "fp32", "--out", out, "--calib-cache", tmp_path / "c"],
         "--calib-cache belongs to --calibrator"),
        (["--onnx", fp32_onnx, "--precision", "fp16", "--out", out, "--calibrator", "entropy"],
         "--calibrator calibrates the FP32 ONNX to INT8"),
        (["--onnx", qdq_onnx, "--precision", "int8", "--out", out, "--calibrator", "entropy"],
         "model.int8.onnx is int8"),
        (["--onnx", fp32_onnx, "--precision", "fp16", "--out", out, "--calib-faces", tmp_path],
         "--calib-faces/--calib-count only apply to --precision int8"),
        (["--onnx", fp32_onnx, "--precision", "fp32", "--out", fp32_onnx, "--force"], "would overwrite the ONNX"),
    ]
    for argv, message in cases:
        assert main(*argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: ") and err.count("\n") == 1, (argv, err)


def test_existing_output_needs_force(tmp_path, fp32_onnx, capsys):
    out = tmp_path / "out.engine"
    out.write_bytes(b"old")
    assert main("--onnx", fp32_onnx, "--precision", "fp32", "--out", out) == 2
    assert f"{out} exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"old"


@pytest.mark.parametrize("batch, message", [("8,4,1", "1 <= MIN <= OPT <= MAX"), ("0,1,2", "1 <= MIN"),
                                            ("1,2", "1 <= MIN"), ("a,b,c", "expected MIN,OPT,MAX integers")])
def test_bad_batch_profile(tmp_path, fp32_onnx, capsys, batch, message):
    with pytest.raises(SystemExit) as exit_:
        main("--onnx", fp32_onnx, "--precision", "fp32", "--out", tmp_path / "o.engine", "--batch", batch)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_bad_workspace_and_count(tmp_path, fp32_onnx, capsys):
    for flag in ("--workspace", "--calib-count"):
        with pytest.raises(SystemExit):
            main("--onnx", fp32_onnx, "--precision", "fp32", "--out", tmp_path / "o.engine", flag, "0")
        assert "must be a positive integer" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- TensorRT missing


def test_missing_tensorrt_exits_3_with_one_line(tmp_path, fp32_onnx):
    res = run_cli("--onnx", fp32_onnx, "--precision", "fp32", "--out", tmp_path / "m.engine", prelude=NO_TENSORRT)
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: TensorRT Python bindings not found: on Jetson they come with JetPack")
    assert "pip install tensorrt --extra-index-url https://pypi.nvidia.com" in lines[0] and "pycuda" in lines[0]
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.skipif(any(__import__("importlib").util.find_spec(m) for m in ("tensorrt",)),
                    reason="TensorRT is installed here")
def test_missing_tensorrt_for_real(tmp_path, fp32_onnx):
    res = subprocess.run([sys.executable, str(SCRIPT), "--onnx", str(fp32_onnx), "--precision", "fp32",
                          "--out", str(tmp_path / "m.engine")], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 3 and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_artifact_is_made_before_tensorrt_is_needed(tmp_path, fp32_onnx):
    out = tmp_path / "engines" / "m.engine"
    res = run_cli("--onnx", fp32_onnx, "--precision", "fp16", "--out", out,
                  prelude=NO_TENSORRT + "; " + FAKE_QUANTIZE)
    assert res.returncode == 3, res.stderr
    assert f"wrote {tmp_path / 'engines' / 'm.fp16.onnx'}" in res.stdout
    assert len(res.stderr.strip().splitlines()) == 1 and "TensorRT" in res.stderr
    from export.engine import onnx_precision

    assert onnx_precision(tmp_path / "engines" / "m.fp16.onnx") == "fp16"


# ---------------------------------------------------------------------------------- builds (fake TensorRT)


def test_fp32_build(monkeypatch, tmp_path, fp32_onnx, capsys):
    fake = install(monkeypatch, "10.x")
    out = tmp_path / "m.engine"
    assert main("--onnx", fp32_onnx, "--precision", "fp32", "--out", out, "--batch", "1,4,16",
                "--workspace", "64") == 0
    sidecar = json.loads((tmp_path / "m.engine.json").read_text())
    assert sidecar["profile"]["max"] == [16, 3, 256, 256] and sidecar["strongly_typed"]
    assert fake.named("set_memory_pool_limit") == [("WORKSPACE", 64 << 20)]
    assert f"wrote {out} (fp32, TensorRT 10.3.0.26" in capsys.readouterr().out


@pytest.mark.parametrize("gen", ["8.6", "10.x", "11.x"])
def test_int8_from_fp32_makes_the_qdq_artifact_and_builds_from_it(monkeypatch, tmp_path, fp32_onnx, gen):
    import calibration.dataset
    from calibration.dataset import CalibrationSet
    from export import quantize

    fake = install(monkeypatch, gen)
    calls = {}
    calib = CalibrationSet(np.zeros((4, 3, 256, 256), np.float32), ["a", "b", "c", "d"],
                           np.array([0, 1, 0, 1], bool), "c" * 64, "whole image")

    def fake_set(faces_dir, count, seed=0, framing="auto"):
        calls["set"] = (faces_dir, count, seed)
        return calib

    def fake_int8(src, dst, calib_set, method="entropy"):
        calls["int8"] = (src, dst, calib_set, method)
        return tiny_onnx(dst, "int8", {"calibration_key": calib_set.key})

    monkeypatch.setattr(calibration.dataset, "build_calibration_set", fake_set)
    monkeypatch.setattr(quantize, "make_int8", fake_int8)
    faces = tmp_path / "faces"
    faces.mkdir()
    out = tmp_path / "m.engine"
    assert main("--onnx", fp32_onnx, "--precision", "int8", "--out", out, "--calib-faces", faces,
                "--calib-count", 4) == 0
    artifact = tmp_path / "m.int8.onnx"
    assert calls["set"] == (faces, 4, 0)
    assert calls["int8"] == (fp32_onnx, artifact, calib, "entropy")
    sidecar = json.loads((tmp_path / "m.engine.json").read_text())
    assert sidecar["onnx_sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert sidecar["calibration_key"] == "c" * 64 and sidecar["precision"] == "int8"
    assert fake.named("parse_from_file") == [(str(artifact),)]
    assert set(f for (f,) in fake.named("set_flag")) == ({"INT8"} if gen == "8.6" else set())


def test_fp16_with_the_real_modelopt_artifact(monkeypatch, tmp_path, fp32_onnx):
    pytest.importorskip("modelopt.onnx.autocast", reason="nvidia-modelopt not installed")
    fake = install(monkeypatch, "11.x")
    assert main("--onnx", fp32_onnx, "--precision", "fp16", "--out", tmp_path / "m.engine") == 0
    from export.quantize import read_metadata

    meta = read_metadata(tmp_path / "m.fp16.onnx")
    assert meta["precision"] == "fp16" and "source_onnx_sha256" in meta
    assert fake.named("create_network") == [(0,)] and not fake.named("set_flag")


def test_prebuilt_fp16_onnx_is_used_as_is(monkeypatch, tmp_path):
    fake = install(monkeypatch, "8.6")
    fp16 = tiny_onnx(tmp_path / "given.fp16.onnx", "fp16")
    assert main("--onnx", fp16, "--precision", "fp16", "--out", tmp_path / "m.engine") == 0
    assert fake.named("parse_from_file") == [(str(fp16),)]
    assert fake.named("set_flag") == [("FP16",)]
    assert not (tmp_path / "m.fp16.onnx").exists()


def test_calibrator_path_and_stale_cache(monkeypatch, tmp_path, fp32_onnx, tmp_cache, capsys):
    fake = install(monkeypatch, "10.x")
    faces = synthetic_faces(tmp_path / "faces", 6)
    cache = tmp_path / "calib.cache"
    argv = ["--onnx", fp32_onnx, "--precision", "int8", "--out", tmp_path / "m.engine", "--calibrator", "minmax",
            "--calib-faces", faces, "--calib-cache", cache, "--batch", "1,2,4"]
    assert main(*argv, "--calib-count", 6) == 0
    (batches,), = fake.named("calibration_batches")
    assert len(batches) == 3 and cache.is_file()
    assert json.loads((tmp_path / "m.engine.json").read_text())["calibrator"] == "minmax"
    capsys.readouterr()
    builds = len(fake.named("build_serialized_network"))
    # a different calibration set (4 images instead of 6): the cache is refused, before TensorRT is touched
    assert main(*argv, "--calib-count", 4, "--force") == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the calibration set's progress bar
    assert err.startswith(f"error: {cache}: stale or foreign calibration cache, refused (calibration_key: ")
    assert len(fake.named("build_serialized_network")) == builds


def test_calibrator_refused_on_tensorrt_11(monkeypatch, tmp_path, fp32_onnx, tmp_cache, capsys):
    fake = install(monkeypatch, "11.x")
    faces = synthetic_faces(tmp_path / "faces", 2)
    assert main("--onnx", fp32_onnx, "--precision", "int8", "--out", tmp_path / "m.engine",
                "--calibrator", "entropy", "--calib-faces", faces) == 2
    captured = capsys.readouterr()
    assert "TensorRT 11.0.0.1 has no INT8 calibrators" in captured.err and "export/quantize.py" in captured.err
    assert "calibration set" not in captured.out and not fake.named("Builder")  # refused before any work


def test_build_failure_exits_1(monkeypatch, tmp_path, capsys):
    install(monkeypatch, "10.x")
    bad = tiny_onnx(tmp_path / "bad.onnx", unsupported=True)
    assert main("--onnx", bad, "--precision", "fp32", "--out", tmp_path / "m.engine") == 1
    assert "TensorRT's ONNX parser failed" in capsys.readouterr().err


def test_one_rulebook_for_engine_requests(tmp_path, fp32_onnx):
    """export.engine.check_request holds every rule; the CLI says exactly what the API raises."""
    from export.engine import check_request

    out = tmp_path / "m.engine"
    cases = [
        (dict(precision="fp32", dla_core=0), "DLA runs no FP32"),
        (dict(precision="fp16", calibrator_kind="entropy"), "--calibrator calibrates the FP32 ONNX to INT8"),
        (dict(precision="fp32", batch=(4, 2, 8)), "need MIN,OPT,MAX"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            check_request(fp32_onnx, out, **kwargs)
    assert check_request(fp32_onnx, out, "fp16", fp32_source_ok=True) == "fp32"  # the CLI makes the FP16 graph
    with pytest.raises(ValueError, match="is a fp32 ONNX; for a fp16 engine"):
        check_request(fp32_onnx, out, "fp16")  # the API builds what the graph holds
    out.write_bytes(b"engine")
    with pytest.raises(FileExistsError, match="pass --force"):
        check_request(fp32_onnx, out, "fp32")
    assert check_request(fp32_onnx, out, "fp32", force=True) == "fp32"
