"""Inference backends behind one interface: float32 (N, 3, 256, 256) in, (N, 68, 2) normalised landmarks out.

The backend is chosen by file extension (``.onnx`` -> ONNX Runtime, ``.engine``/``.plan``/``.trt``
-> TensorRT) or by name. Heavy imports (onnxruntime, tensorrt, pycuda) happen only here, on use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

ENGINE_SUFFIXES = {".engine", ".plan", ".trt"}


class Backend(Protocol):
    name: str  # "onnxruntime" or "tensorrt"
    precision: str  # "fp32", "fp16" or "int8"
    max_batch: int | None  # None: any batch size

    def run(self, x: np.ndarray) -> np.ndarray: ...


def backend_for(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    raise ValueError(f"{path}: cannot tell the backend from the extension {suffix!r} "
                     f"(.onnx or {', '.join(sorted(ENGINE_SUFFIXES))}); pass backend=")


def load_backend(path: str | Path, backend: str | None = None, **options) -> Backend:
    """Open a model file with the named backend, or the one its extension implies."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    backend = backend or backend_for(path)
    if backend == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, **options)
    if backend == "tensorrt":
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path, **options)
    raise ValueError(f"unknown backend {backend!r}: use onnxruntime or tensorrt")
