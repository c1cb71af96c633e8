"""Inference backends behind one interface: float32 (N, 3, 256, 256) in, a dict of named outputs out.

The model contract (tensor names and per-sample shapes) is OUTPUTS: ``landmarks`` (68, 2) normalised
crop coordinates, always; ``visibility`` (68,) and ``face_score`` () probabilities in [0, 1] when the
model has the heads (the paper's network has landmarks only).

The backend is chosen by file extension (``.onnx`` -> ONNX Runtime, ``.engine``/``.plan``/``.trt``
-> TensorRT) or by name. Heavy imports (onnxruntime, tensorrt, pycuda) happen only here, on use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np

ENGINE_SUFFIXES = {".engine", ".plan", ".trt"}
INPUT_NAME = "input"
INPUT_CHW = (3, 256, 256)
# output name: shape per sample, in the order the network returns them
OUTPUTS: dict[str, tuple[int, ...]] = {"landmarks": (68, 2), "visibility": (68,), "face_score": ()}
Outputs = dict  # output name -> float32 array (N, *OUTPUTS[name])


class Backend(Protocol):
    name: str  # "onnxruntime" or "tensorrt"
    precision: str  # "fp32", "fp16" or "int8"
    max_batch: int | None  # the largest batch run at once (None: any); run() splits larger ones
    outputs: tuple[str, ...]  # the OUTPUTS this model has, "landmarks" first

    def run(self, x: np.ndarray) -> Outputs: ...  # any N >= 1


def output_names(path: str | Path, found: dict[str, tuple]) -> tuple[str, ...]:
    """Check a model's outputs (name: shape without the batch axis) against OUTPUTS; return their names.

    A model with one (68, 2) output of another name is a landmark model too (older exports).
    """
    shapes = {name: tuple(shape) for name, shape in found.items()}
    if len(shapes) == 1 and next(iter(shapes.values())) == OUTPUTS["landmarks"]:
        return (next(iter(shapes)),)
    wrong = {n: s for n, s in shapes.items() if OUTPUTS.get(n) != s}
    if "landmarks" not in shapes or wrong:
        expected = ", ".join(f"{n} [N{''.join(f',{d}' for d in s)}]" for n, s in OUTPUTS.items())
        raise ValueError(f"{path}: not a landmark model: outputs {shapes}; expected landmarks and optionally "
                         f"visibility and face_score ({expected})")
    return tuple(n for n in OUTPUTS if n in shapes)


def check_input(path: str | Path, x: np.ndarray) -> np.ndarray:
    """``x`` as an array if it is (N, 3, 256, 256) with N >= 1, else ValueError naming the model file."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1:] != INPUT_CHW or len(x) == 0:
        raise ValueError(f"{path}: expected input (N, 3, 256, 256) with N >= 1, got {x.shape}")
    return x


def run_in_batches(x: np.ndarray, max_batch: int | None, run_batch: Callable[[np.ndarray], Outputs]) -> Outputs:
    """``run_batch`` on slices of ``x`` of at most ``max_batch`` (None: all at once), outputs joined."""
    if max_batch is None or len(x) <= max_batch:
        return run_batch(x)
    parts = [run_batch(x[i:i + max_batch]) for i in range(0, len(x), max_batch)]
    return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}


def landmarks_output(outputs: Outputs) -> np.ndarray:
    """The landmarks of a run's outputs (the one output of an older single-output model)."""
    return outputs["landmarks"] if "landmarks" in outputs else next(iter(outputs.values()))


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
