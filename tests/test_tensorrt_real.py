"""Real TensorRT: build FP32 / FP16 (and, on 8.5-10.x, implicitly calibrated INT8) engines and run them.

Runs only where tensorrt, pycuda and a CUDA GPU are present; skipped elsewhere with the reason.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.fake_tensorrt import synthetic_faces, tiny_onnx, tiny_reference

pytestmark = pytest.mark.tensorrt


@pytest.fixture(scope="module")
def gpu_stack():
    from runtime.tensorrt_shim import MissingDependency, require_gpu_stack

    try:
        trt, cuda = require_gpu_stack()
    except MissingDependency as e:
        pytest.skip(f"real TensorRT tests need tensorrt and pycuda ({e})")
    try:
        if cuda.Device.count() < 1:
            pytest.skip("real TensorRT tests need a CUDA GPU: none found")
    except Exception as e:  # no driver, no device
        pytest.skip(f"real TensorRT tests need a CUDA GPU ({e.__class__.__name__}: {e})")
    return trt, cuda


def build_and_run(tmp_path, precision, onnx_precision=None, **kw):
    from export.engine import build_engine
    from runtime.tensorrt_backend import TensorRTBackend

    onnx_path = tiny_onnx(tmp_path / f"tiny.{onnx_precision or precision}.onnx", onnx_precision or precision)
    out = tmp_path / f"tiny.{precision}.engine"
    sidecar = build_engine(onnx_path, out, precision, batch=(1, 4, 8), workspace_mb=256, **kw)
    x = np.random.default_rng(1).normal(0.2, 1.0, (11, 3, 256, 256)).astype(np.float32)
    with TensorRTBackend(out) as backend:
        assert (backend.precision, backend.max_batch) == (precision, 8)
        y = backend.run(x)["landmarks"]
    assert y.shape == (11, 68, 2) and y.dtype == np.float32 and np.isfinite(y).all()
    return sidecar, y, tiny_reference(x)


def test_fp32_engine(gpu_stack, tmp_path):
    trt, _ = gpu_stack
    sidecar, y, ref = build_and_run(tmp_path, "fp32")
    assert sidecar["tensorrt_version"] == trt.__version__
    np.testing.assert_allclose(y, ref, atol=5e-3)  # TF32 may be on for FP32 layers


def test_fp16_engine(gpu_stack, tmp_path):
    sidecar, y, ref = build_and_run(tmp_path, "fp16")
    np.testing.assert_allclose(y, ref, atol=2e-2)


def test_int8_engine_with_implicit_calibration(gpu_stack, tmp_path, tmp_cache):
    from calibration.dataset import build_calibration_set
    from runtime.tensorrt_shim import strongly_typed_only

    trt, _ = gpu_stack
    if strongly_typed_only(trt):
        pytest.skip(f"TensorRT {trt.__version__} has no implicit INT8 calibrators")
    calib = build_calibration_set(synthetic_faces(tmp_path / "faces", 16), count=16, seed=0)
    cache = tmp_path / "calib.cache"
    sidecar, y, ref = build_and_run(tmp_path, "int8", onnx_precision="fp32", calibrator_kind="entropy",
                                    calib_set=calib, calib_cache=cache)
    assert cache.is_file() and sidecar["calibration_key"] == calib.key
    np.testing.assert_allclose(y, ref, atol=0.1)
