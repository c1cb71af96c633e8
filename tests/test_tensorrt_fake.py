"""The TensorRT build and runtime code against a recording fake of tensorrt/pycuda, per API generation.

No TensorRT or GPU is needed: tests/fake_tensorrt.py stands in for TensorRT 8.6, 10.x and 11.x and
records every call, so these tests pin down what each generation receives.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.fake_tensorrt import (GENERATIONS, PLAN_MAGIC, TIMING_MAGIC, expected_output, expected_outputs, install,
                                 synthetic_faces, tiny_onnx)

GENS = list(GENERATIONS)
CHW = (3, 256, 256)


def shape(b: int) -> tuple[int, ...]:
    return (b, *CHW)


@pytest.fixture
def fp32_onnx(tmp_path):
    return tiny_onnx(tmp_path / "model.onnx")


@pytest.fixture
def calib_set(tmp_path, tmp_cache):
    """A real calibration set (shared preprocessing, every 2nd image occluded) from synthetic images."""
    from calibration.dataset import build_calibration_set

    return build_calibration_set(synthetic_faces(tmp_path / "faces", 7), count=7, seed=0)


def build(tmp_path, onnx_path, precision="fp32", name="model.engine", **kw):
    from export.engine import build_engine

    return build_engine(onnx_path, tmp_path / name, precision, **kw)


# ------------------------------------------------------------------------------------------- imports


def test_nothing_heavy_is_imported_at_import_time():
    code = ("import sys, runtime, runtime.tensorrt_shim, runtime.tensorrt_backend, export.engine, "
            "export.build_engine, calibration.calibrator; "
            "print(sorted(m for m in ('torch', 'tensorrt', 'pycuda') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_parsing():
    from runtime.tensorrt_shim import parse_version

    assert parse_version("8.6.1.6") == (8, 6)
    assert parse_version("10.3.0") == (10, 3)
    assert parse_version("11.0.0.1") == (11, 0)
    with pytest.raises(ValueError):
        parse_version("dev")


@pytest.mark.parametrize("gen, strongly_typed_only", [("8.6", False), ("10.x", False), ("11.x", True)])
def test_strongly_typed_only(monkeypatch, gen, strongly_typed_only):
    from runtime.tensorrt_shim import import_tensorrt
    from runtime.tensorrt_shim import strongly_typed_only as sto

    install(monkeypatch, gen)
    assert sto(import_tensorrt()) is strongly_typed_only


# ----------------------------------------------------------------------------------------------- build

# generation -> (network creation flags, precision flags per graph precision, strongly typed)
EXPECTED = {
    "8.6": (1 << 0, {"fp32": set(), "fp16": {"FP16"}, "int8": {"INT8"}}, False),  # EXPLICIT_BATCH
    "10.x": (1 << 1, {"fp32": set(), "fp16": set(), "int8": set()}, True),  # STRONGLY_TYPED, no flags
    "11.x": (0, {"fp32": set(), "fp16": set(), "int8": set()}, True),  # always strongly typed
}


@pytest.mark.parametrize("gen", GENS)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_calls_per_generation(monkeypatch, tmp_path, gen, precision):
    fake = install(monkeypatch, gen)
    onnx_path = tiny_onnx(tmp_path / f"m.{precision}.onnx", precision,
                          {"calibration_key": "k" * 64} if precision == "int8" else None)
    sidecar = build(tmp_path, onnx_path, precision, batch=(1, 4, 8), workspace_mb=256)

    flags, precision_flags, strongly_typed = EXPECTED[gen]
    assert fake.named("create_network") == [(flags,)]
    assert set(f for (f,) in fake.named("set_flag")) == precision_flags[precision]
    assert fake.named("set_memory_pool_limit") == [("WORKSPACE", 256 << 20)]
    assert fake.named("set_shape") == [("input", shape(1), shape(4), shape(8))]
    assert fake.named("parse_from_file") == [(str(onnx_path),)]
    assert "build_error" not in [c[0] for c in fake.calls]
    # the engine and its sidecar
    plan = (tmp_path / "model.engine").read_bytes()
    assert plan.startswith(PLAN_MAGIC)
    assert json.loads((tmp_path / "model.engine.json").read_text()) == sidecar
    assert sidecar["tensorrt_version"] == GENERATIONS[gen]
    assert (sidecar["gpu_name"], sidecar["compute_capability"]) == ("NVIDIA Fake Orin", "8.7")
    assert sidecar["precision"] == precision and sidecar["strongly_typed"] is strongly_typed
    assert sidecar["profile"] == {"input": "input", "min": list(shape(1)), "opt": list(shape(4)),
                                  "max": list(shape(8))}
    assert sidecar["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert sidecar["calibration_key"] == ("k" * 64 if precision == "int8" else None)
    assert sidecar["dla_core"] is None and sidecar["build_time_s"] >= 0 and sidecar["built_at"]
    # the primary context was pushed for the build and released afterwards
    assert fake.named("retain_primary_context") == [(0,)]
    assert len(fake.named("ctx_push")) == len(fake.named("ctx_pop")) and fake.named("ctx_detach")


@pytest.mark.parametrize("gen", GENS)
def test_dla_core_with_gpu_fallback(monkeypatch, tmp_path, gen):
    fake = install(monkeypatch, gen)
    sidecar = build(tmp_path, tiny_onnx(tmp_path / "m.onnx", "fp16"), "fp16", dla_core=1)
    config = fake.last("config")
    assert config.default_device_type == fake.trt.DeviceType.DLA and config.DLA_core == 1
    assert "GPU_FALLBACK" in config.flags and sidecar["dla_core"] == 1
    if gen == "11.x":  # strongly typed DLA: precision from the graph
        assert config.flags == {"GPU_FALLBACK"} and sidecar["strongly_typed"]
    else:  # DLA before 11 is described with the FP16/INT8 flags: weak typing
        assert config.flags == {"GPU_FALLBACK", "FP16"} and not sidecar["strongly_typed"]
        assert fake.named("create_network") == [(1 if gen == "8.6" else 0,)]


def test_dla_refuses_fp32(monkeypatch, tmp_path, fp32_onnx):
    install(monkeypatch, "10.x")
    with pytest.raises(ValueError, match="DLA runs no FP32"):
        build(tmp_path, fp32_onnx, "fp32", dla_core=0)


def test_precision_must_match_the_graph(monkeypatch, tmp_path, fp32_onnx):
    install(monkeypatch, "10.x")
    with pytest.raises(ValueError, match="is a fp32 ONNX; for a fp16 engine"):
        build(tmp_path, fp32_onnx, "fp16")


def test_refuses_to_overwrite_without_force(monkeypatch, tmp_path, fp32_onnx):
    fake = install(monkeypatch, "10.x")
    build(tmp_path, fp32_onnx)
    with pytest.raises(FileExistsError, match="model.engine exists"):
        build(tmp_path, fp32_onnx)
    assert len(fake.named("build_serialized_network")) == 1
    build(tmp_path, fp32_onnx, force=True)
    assert len(fake.named("build_serialized_network")) == 2


@pytest.mark.parametrize("gen", GENS)
def test_parser_errors_are_reported(monkeypatch, tmp_path, gen):
    install(monkeypatch, gen)
    bad = tiny_onnx(tmp_path / "bad.onnx", unsupported=True)
    with pytest.raises(RuntimeError, match=r"ONNX parser failed:\n  In node 0 .*No importer registered for op: "
                                           r"Unsupported"):
        build(tmp_path, bad)
    assert not (tmp_path / "model.engine").exists()


def test_timing_cache_is_loaded_and_saved(monkeypatch, tmp_path, fp32_onnx):
    fake = install(monkeypatch, "10.x")
    cache = tmp_path / "timing.cache"
    build(tmp_path, fp32_onnx, timing_cache=cache)
    assert fake.named("create_timing_cache") == [(b"",)] and cache.read_bytes() == TIMING_MAGIC + b"1"
    build(tmp_path, fp32_onnx, timing_cache=cache, force=True)
    assert fake.named("create_timing_cache")[-1] == (TIMING_MAGIC + b"1",)
    assert fake.named("set_timing_cache")[-1] == (False,)  # never ignore a mismatch
    assert cache.read_bytes() == TIMING_MAGIC + b"2"


def test_foreign_timing_cache_is_replaced(monkeypatch, tmp_path, fp32_onnx, capsys):
    fake = install(monkeypatch, "8.6")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"from another GPU")
    build(tmp_path, fp32_onnx, timing_cache=cache)
    assert "does not match this GPU/TensorRT" in capsys.readouterr().out
    assert fake.named("create_timing_cache") == [(b"from another GPU",), (b"",)]
    assert cache.read_bytes() == TIMING_MAGIC + b"1"


# ---------------------------------------------------------------------------------- implicit calibration


def test_calibration_set_uses_the_shared_preprocessing(calib_set, tmp_path):
    from core.preprocess import crop_matrix, read_image, to_input, warp, whole_image_box

    assert calib_set.inputs.shape == (7, *CHW) and calib_set.inputs.dtype == np.float32
    assert not calib_set.occluded[0]  # every second image is occluded: the first is clean
    image = read_image(tmp_path / "faces" / calib_set.paths[0])
    expected = to_input(warp(image, crop_matrix(whole_image_box(*image.shape[:2]))))[0]
    np.testing.assert_array_equal(calib_set.inputs[0], expected)


@pytest.mark.parametrize("gen", ["8.6", "10.x"])
@pytest.mark.parametrize("kind, base", [("entropy", "IInt8EntropyCalibrator2"), ("minmax", "IInt8MinMaxCalibrator")])
def test_implicit_calibration_feeds_the_calibration_set(monkeypatch, tmp_path, fp32_onnx, calib_set, gen, kind,
                                                        base, capsys):
    fake = install(monkeypatch, gen)
    cache = tmp_path / "calib.cache"
    sidecar = build(tmp_path, fp32_onnx, "int8", batch=(1, 2, 4), calibrator_kind=kind, calib_set=calib_set,
                    calib_cache=cache)
    assert fake.named("calibrator_base_init") == [(base,)]
    assert fake.named("create_network") == [(1 if gen == "8.6" else 0,)]  # weak typing for calibrators
    assert fake.last("config").flags == {"INT8"}
    assert fake.named("set_calibration_profile") == [({"input": (shape(1), shape(2), shape(4))},)]
    # batches of the OPT size, exactly the calibration set's (already preprocessed) inputs
    (batches,), = fake.named("calibration_batches")
    assert [b.shape for b in batches] == [shape(2)] * 3
    np.testing.assert_array_equal(np.concatenate(batches), calib_set.inputs[:6])
    assert "calibrating on 6 of 7 images" in capsys.readouterr().out
    # the cache carries its key; the sidecar names the calibration set
    header = cache.read_bytes().split(b"\n")[1]
    assert json.loads(header) == {"calibration_key": calib_set.key, "calibrator": kind,
                                  "onnx_sha256": sidecar["onnx_sha256"]}
    assert sidecar["calibration_key"] == calib_set.key and sidecar["calibrator"] == kind
    assert not sidecar["strongly_typed"] and sidecar["builder_flags"] == ["INT8"]


def test_calibration_cache_is_reused(monkeypatch, tmp_path, fp32_onnx, calib_set):
    fake = install(monkeypatch, "10.x")
    cache = tmp_path / "calib.cache"
    kw = dict(batch=(1, 2, 4), calibrator_kind="entropy", calib_set=calib_set, calib_cache=cache)
    build(tmp_path, fp32_onnx, "int8", **kw)
    build(tmp_path, fp32_onnx, "int8", force=True, **kw)
    assert len(fake.named("calibration_batches")) == 1  # the second build calibrated from the cache
    assert fake.named("read_calibration_cache") == [(None,), (b"TRT-FAKE-EntropyCalibration2\ninput: 3c010a14\n",)]


def test_stale_or_foreign_calibration_cache_is_refused(monkeypatch, tmp_path, fp32_onnx, calib_set):
    from calibration.calibrator import CalibrationCacheError

    fake = install(monkeypatch, "8.6")
    cache = tmp_path / "calib.cache"
    kw = dict(batch=(1, 2, 4), calib_set=calib_set, calib_cache=cache, force=True)
    build(tmp_path, fp32_onnx, "int8", calibrator_kind="entropy", **kw)
    builds = len(fake.named("build_serialized_network"))

    other = type(calib_set)(**{**vars(calib_set), "key": "f" * 64})  # another calibration set
    with pytest.raises(CalibrationCacheError, match=rf"{cache}: stale or foreign.*calibration_key: cache has "
                                                    rf"'{calib_set.key}', expected '{'f' * 64}'"):
        build(tmp_path, fp32_onnx, "int8", calibrator_kind="entropy", **{**kw, "calib_set": other})
    with pytest.raises(CalibrationCacheError, match="calibrator: cache has 'entropy', expected 'minmax'"):
        build(tmp_path, fp32_onnx, "int8", calibrator_kind="minmax", **kw)
    other_onnx = tiny_onnx(tmp_path / "other.onnx", seed=1)
    with pytest.raises(CalibrationCacheError, match="onnx_sha256: cache has"):
        build(tmp_path, other_onnx, "int8", calibrator_kind="entropy", **kw)
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")  # e.g. from trtexec
    with pytest.raises(CalibrationCacheError, match="no key header"):
        build(tmp_path, fp32_onnx, "int8", calibrator_kind="entropy", **kw)
    assert len(fake.named("build_serialized_network")) == builds  # refused before building


def test_calibrators_are_refused_on_tensorrt_11(monkeypatch, tmp_path, fp32_onnx, calib_set):
    from calibration.calibrator import make_calibrator

    fake = install(monkeypatch, "11.x")
    assert not hasattr(fake.trt, "IInt8EntropyCalibrator2") and not hasattr(fake.trt.BuilderFlag, "INT8")
    with pytest.raises(RuntimeError, match="removed in TensorRT 11.*export/quantize.py"):
        make_calibrator(fake.trt, calib_set, "entropy", None, 2, onnx_sha256="0" * 64)
    with pytest.raises(RuntimeError, match="no INT8 calibrators"):
        build(tmp_path, fp32_onnx, "int8", calibrator_kind="entropy", calib_set=calib_set)
    assert not fake.named("build_serialized_network")


# ------------------------------------------------------------------------------------------------ runtime


@pytest.fixture
def engine(tmp_path, fp32_onnx):
    def make(batch=(1, 4, 8)):
        build(tmp_path, fp32_onnx, batch=batch, force=True)
        return tmp_path / "model.engine"
    return make


@pytest.mark.parametrize("gen", GENS)
def test_backend_runs_and_splits_batches(monkeypatch, engine, gen):
    from runtime.tensorrt_backend import TensorRTBackend

    fake = install(monkeypatch, gen)
    backend = TensorRTBackend(engine(batch=(1, 4, 8)))
    assert (backend.name, backend.precision, backend.max_batch) == ("tensorrt", "fp32", 8)
    x = np.random.default_rng(0).normal(size=(19, *CHW)).astype(np.float32)
    out = backend.run(x)
    assert list(out) == ["landmarks"] and backend.outputs == ("landmarks",)
    y = out["landmarks"]
    assert y.shape == (19, 68, 2) and y.dtype == np.float32
    np.testing.assert_allclose(y, expected_output(x), rtol=1e-5, atol=1e-6)
    assert [c[1] for c in fake.named("execute_async_v3")] == [shape(8), shape(8), shape(3)]
    y2 = backend.run(x[:2])["landmarks"]
    np.testing.assert_allclose(y2, expected_output(x[:2]), rtol=1e-5, atol=1e-6)
    # buffers allocated once, for the profile's max batch: pinned host in/out and device in/out
    assert fake.named("pagelocked_empty") == [(shape(8), "float32"), ((8, 68, 2), "float32")]
    engine_allocs = fake.named("mem_alloc")
    assert engine_allocs == [(8 * 3 * 256 * 256 * 4,), (8 * 68 * 2 * 4,)]
    assert len(fake.named("set_tensor_address")) == 2
    # copy-in, execute and copy-out on one stream, then a synchronise per batch
    (stream,), = fake.named("Stream")
    assert {c[2] for c in fake.named("memcpy_htod_async")} == {stream}
    assert {c[0] for c in fake.named("execute_async_v3")} == {stream}
    assert {c[2] for c in fake.named("memcpy_dtoh_async")} == {stream}
    assert len(fake.named("synchronize")) == 4
    assert [c[1] for c in fake.named("memcpy_htod_async")] == [8 * 786432] * 2 + [3 * 786432, 2 * 786432]  # bytes
    backend.close()
    assert len(fake.named("free")) == 2 and len(fake.named("ctx_push")) == len(fake.named("ctx_pop"))


@pytest.mark.parametrize("gen", GENS)
def test_backend_returns_the_three_outputs_of_a_model_with_heads(monkeypatch, tmp_path, gen):
    from runtime.tensorrt_backend import TensorRTBackend

    fake = install(monkeypatch, gen)
    onnx_path = tiny_onnx(tmp_path / "heads.onnx", heads=True)
    build(tmp_path, onnx_path, batch=(1, 4, 8), force=True)
    backend = TensorRTBackend(tmp_path / "model.engine")
    assert backend.outputs == ("landmarks", "visibility", "face_score")
    x = np.random.default_rng(0).normal(size=(11, *CHW)).astype(np.float32)
    out = backend.run(x)
    assert {k: v.shape for k, v in out.items()} == {"landmarks": (11, 68, 2), "visibility": (11, 68),
                                                     "face_score": (11,)}
    for name, want in expected_outputs(x, backend.outputs).items():
        np.testing.assert_allclose(out[name], want, rtol=1e-5, atol=1e-6)
    # one pinned host and one device buffer per output, each bound to its tensor
    assert fake.named("pagelocked_empty")[1:] == [((8, 68, 2), "float32"), ((8, 68), "float32"), ((8,), "float32")]
    assert [c[0] for c in fake.named("set_tensor_address")] == ["input", "landmarks", "visibility", "face_score"]
    backend.close()
    assert len(fake.named("free")) == 4


def test_backend_pads_up_to_the_profile_minimum(monkeypatch, engine):
    from runtime.tensorrt_backend import TensorRTBackend

    fake = install(monkeypatch, "10.x")
    backend = TensorRTBackend(engine(batch=(2, 4, 4)))
    x = np.full((1, *CHW), 0.5, np.float32)
    y = backend.run(x)["landmarks"]
    assert y.shape == (1, 68, 2)
    np.testing.assert_allclose(y, expected_output(x), rtol=1e-6)
    assert fake.named("set_input_shape")[-1] == ("input", shape(2))


def test_backend_rejects_bad_input(monkeypatch, engine):
    from runtime.tensorrt_backend import TensorRTBackend

    install(monkeypatch, "10.x")
    backend = TensorRTBackend(engine())
    for bad in (np.zeros((2, 3, 128, 128), np.float32), np.zeros((3, 256, 256), np.float32),
                np.zeros((0, *CHW), np.float32)):
        with pytest.raises(ValueError, match=r"expected input \(N, 3, 256, 256\)"):
            backend.run(bad)


def test_backend_is_chosen_by_extension(monkeypatch, engine):
    from runtime.backends import load_backend

    install(monkeypatch, "8.6")
    assert load_backend(engine()).name == "tensorrt"


@pytest.mark.parametrize("field, value", [("tensorrt_version", "8.6.1.6"), ("gpu_name", "NVIDIA Jetson Xavier"),
                                          ("compute_capability", "7.2")])
def test_backend_refuses_an_engine_built_elsewhere(monkeypatch, engine, field, value):
    from runtime.tensorrt_backend import EngineMismatch, TensorRTBackend

    fake = install(monkeypatch, "10.x")
    path = engine()
    sidecar_path = path.with_name("model.engine.json")
    sidecar = json.loads(sidecar_path.read_text())
    sidecar[field] = value
    sidecar_path.write_text(json.dumps(sidecar))
    with pytest.raises(EngineMismatch) as err:
        TensorRTBackend(path)
    msg = str(err.value)
    assert str(path) in msg and f"built for" in msg and f"{field}={value}" in msg
    running = {"tensorrt_version": "10.3.0.26", "gpu_name": "NVIDIA Fake Orin", "compute_capability": "8.7"}[field]
    assert f"running" in msg and f"{field}={running}" in msg and f"differs in {field}" in msg
    assert not fake.named("deserialize_cuda_engine")  # refused before touching the engine


def test_backend_needs_the_sidecar(monkeypatch, engine):
    from runtime.tensorrt_backend import TensorRTBackend

    install(monkeypatch, "10.x")
    path = engine()
    path.with_name("model.engine.json").unlink()
    with pytest.raises(FileNotFoundError, match="no sidecar model.engine.json.*export/build_engine.py"):
        TensorRTBackend(path)


def test_backend_reports_a_corrupt_engine(monkeypatch, engine):
    from runtime.tensorrt_backend import TensorRTBackend

    install(monkeypatch, "10.x")
    path = engine()
    path.write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="could not deserialize"):
        TensorRTBackend(path)


def test_missing_tensorrt_is_one_clear_line(monkeypatch, engine):
    from runtime.tensorrt_shim import MissingDependency, require_gpu_stack

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    monkeypatch.setitem(sys.modules, "pycuda", None)
    with pytest.raises(MissingDependency) as err:
        require_gpu_stack()
    msg = str(err.value)
    assert "\n" not in msg and "TensorRT Python bindings not found" in msg and "JetPack" in msg
    assert "https://pypi.nvidia.com" in msg and "pycuda not found" in msg
