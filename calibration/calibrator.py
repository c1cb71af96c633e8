"""TensorRT's classic (implicit) INT8 calibrators for 8.5-10.x, fed from the shared calibration set.

TensorRT 11 removed calibrators; there (and by default everywhere) INT8 comes from the Q/DQ ONNX made by
``export/quantize.py`` from the same calibration set.

The calibration cache is one file: a header line naming what it was computed from (the calibration
set's key, which covers the images, the mask seed and the preprocessing version; the ONNX sha256; the
calibrator kind), then TensorRT's own cache bytes. A cache whose header does not match, or that has no
header, is refused with the differences spelled out, never silently used.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.files import atomic_write_bytes

if TYPE_CHECKING:
    from calibration.dataset import CalibrationSet

KINDS = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}
CACHE_MAGIC = b"landmarks-trt-calibration-cache v1\n"


class CalibrationCacheError(RuntimeError):
    """A calibration cache that does not belong to this ONNX / calibration set / calibrator."""


def cache_key(calibration_key: str, onnx_sha256: str, kind: str) -> dict[str, str]:
    return {"calibration_key": calibration_key, "onnx_sha256": onnx_sha256, "calibrator": kind}


def read_cache(path: str | Path, expected: dict[str, str]) -> bytes | None:
    """TensorRT's cache bytes when ``path`` exists and was made for ``expected``; None when absent."""
    path = Path(path)
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data.startswith(CACHE_MAGIC):
        raise CalibrationCacheError(
            f"{path}: not a calibration cache written by export/build_engine.py (no key header), so what it "
            f"was calibrated on is unknown; delete it or pass another --calib-cache")
    header, _, payload = data[len(CACHE_MAGIC):].partition(b"\n")
    try:
        found = json.loads(header)
    except ValueError as e:
        raise CalibrationCacheError(f"{path}: unreadable calibration cache header ({e})") from e
    diff = [f"{k}: cache has {found.get(k)!r}, expected {v!r}" for k, v in expected.items() if found.get(k) != v]
    if diff:
        raise CalibrationCacheError(f"{path}: stale or foreign calibration cache, refused ("
                                    + "; ".join(diff) + "); delete it to recalibrate")
    return payload


def write_cache(path: str | Path, key: dict[str, str], payload: bytes) -> None:
    atomic_write_bytes(Path(path), CACHE_MAGIC + json.dumps(key, sort_keys=True).encode() + b"\n" + bytes(payload))


def make_calibrator(trt: Any, calib_set: CalibrationSet, kind: str, cache_path: str | Path | None, batch: int,
                    *, onnx_sha256: str, cuda: Any = None) -> Any:
    """An ``IInt8EntropyCalibrator2`` / ``IInt8MinMaxCalibrator`` over ``calib_set.inputs``.

    The inputs are already network-ready (the one shared preprocessing), so they go to the GPU as they are.
    ``batch`` must equal the calibration profile's OPT batch; a last partial batch is dropped. A cache at
    ``cache_path`` is checked here, before the build, so a stale one fails early and clearly.
    """
    from runtime.tensorrt_shim import CALIBRATORS_REMOVED, has_calibrators, import_pycuda

    if not has_calibrators(trt):
        raise RuntimeError(CALIBRATORS_REMOVED.format(version=trt.__version__))
    if kind not in KINDS:
        raise ValueError(f"calibrator {kind!r}: use {' or '.join(KINDS)}")
    cuda = cuda or import_pycuda()
    key = cache_key(calib_set.key, onnx_sha256, kind)
    cached = read_cache(cache_path, key) if cache_path else None
    inputs = np.ascontiguousarray(calib_set.inputs, dtype=np.float32)
    usable = len(inputs) // batch * batch
    if cached is None and usable == 0:
        raise ValueError(f"{len(inputs)} calibration images are fewer than one batch of {batch}")
    if cached is None and usable < len(inputs):
        print(f"note: calibrating on {usable} of {len(inputs)} images (whole batches of {batch})")
    base = getattr(trt, KINDS[kind])

    class Calibrator(base):  # defined here because trt is only known at run time
        def __init__(self) -> None:
            base.__init__(self)  # TensorRT's pybind base must be initialised explicitly
            self.kind, self.cache_path, self.key = kind, cache_path, key
            self.batches_fed = 0
            self._next = 0
            self._device = cuda.mem_alloc(batch * inputs[0].nbytes) if usable else None

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._next >= usable:
                return None
            cuda.memcpy_htod(self._device, inputs[self._next:self._next + batch])
            self._next += batch
            self.batches_fed += 1
            return [int(self._device)]

        def read_calibration_cache(self) -> bytes | None:
            return cached  # already checked against the key above

        def write_calibration_cache(self, cache: Any) -> None:
            if self.cache_path:
                write_cache(self.cache_path, key, bytes(memoryview(cache)))

    return Calibrator()
