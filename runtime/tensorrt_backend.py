"""TensorRT backend: a serialized engine from export/build_engine.py, run with pycuda on one CUDA stream.

The engine's JSON sidecar (``model.engine.json``) is checked against the running TensorRT and GPU first:
engines are not portable across TensorRT versions or GPUs, and a clear refusal beats a crash or
silently wrong numbers. Version differences are handled in ``runtime.tensorrt_shim``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import tensorrt_shim as shim
from .backends import Outputs, check_input, output_names, run_in_batches


class EngineMismatch(RuntimeError):
    """The engine was built for another TensorRT version or GPU."""


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``: what the engine was built for (export/engine.py writes it)."""
    return Path(f"{engine_path}.json")


def read_sidecar(engine_path: Path) -> dict:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise FileNotFoundError(f"{engine_path}: no sidecar {path.name} next to it, so what it was built for is "
                                f"unknown; rebuild it with export/build_engine.py")
    try:
        sidecar = json.loads(path.read_text())
    except ValueError as e:  # not JSON, or not UTF-8 text
        raise ValueError(f"{path}: not a readable engine sidecar ({e}); rebuild the engine with "
                         f"export/build_engine.py") from None
    if not isinstance(sidecar, dict):
        raise ValueError(f"{path}: not an engine sidecar (a JSON {type(sidecar).__name__}, not an object); "
                         f"rebuild the engine with export/build_engine.py")
    return sidecar


def check_sidecar(engine_path: Path, sidecar: dict, running: dict[str, str]) -> None:
    """Raise EngineMismatch naming the file, what it was built for and what is running."""
    keys = ("tensorrt_version", "gpu_name", "compute_capability")
    diff = [k for k in keys if str(sidecar.get(k)) != str(running[k])]
    if diff:
        built = ", ".join(f"{k}={sidecar.get(k)}" for k in keys)
        here = ", ".join(f"{k}={running[k]}" for k in keys)
        raise EngineMismatch(f"{engine_path}: built for {built}; running {here} (differs in {', '.join(diff)}). "
                             f"Engines are not portable: rebuild it here with export/build_engine.py")


class TensorRTBackend:
    """float32 (N, 3, 256, 256) -> the engine's outputs (runtime.backends.OUTPUTS); batches above the
    profile's maximum are split.

    One ``run`` at a time per instance (the pinned buffers are shared); use one backend per thread.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, device: int = 0):
        self.path = Path(engine_path)
        self.sidecar = read_sidecar(self.path)
        self.precision = self.sidecar.get("precision", "fp32")
        trt, cuda = shim.require_gpu_stack()
        self._trt, self._cuda = trt, cuda
        self._ctx = shim.primary_context(cuda, device)
        try:
            self._open(device)
        except BaseException:
            self._ctx.detach()
            raise

    def _open(self, device: int) -> None:
        trt, cuda = self._trt, self._cuda
        with shim.active(cuda, self._ctx):
            check_sidecar(self.path, self.sidecar, {"tensorrt_version": trt.__version__, **shim.gpu_info(cuda, device)})
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise RuntimeError(f"{self.path}: TensorRT could not deserialize the engine (see its log above)")
            self.context = self.engine.create_execution_context()
            inputs, outputs = shim.io_names(trt, self.engine)
            if len(inputs) != 1:
                raise ValueError(f"{self.path}: expected one input, got {inputs} -> {outputs}")
            self._in = inputs[0]
            lo, _, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(self._in, 0))
            self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
            if tuple(hi[1:]) != shim.INPUT_CHW:
                raise ValueError(f"{self.path}: not a landmark engine: input {hi}")
            self.context.set_input_shape(self._in, (self.max_batch, *shim.INPUT_CHW))
            shapes = {n: tuple(self.context.get_tensor_shape(n)) for n in outputs}
            self.outputs = output_names(self.path, {n: s[1:] for n, s in shapes.items()})
            # Pinned host and device buffers for the largest batch, allocated once; smaller batches use a prefix.
            in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self._in)))
            self._host_in = cuda.pagelocked_empty((self.max_batch, *shim.INPUT_CHW), in_dtype)
            self._dev_in = cuda.mem_alloc(self._host_in.nbytes)
            self.context.set_tensor_address(self._in, int(self._dev_in))
            self._host_out, self._dev_out = {}, {}
            for name in self.outputs:
                dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
                self._host_out[name] = cuda.pagelocked_empty(shapes[name], dtype)
                self._dev_out[name] = cuda.mem_alloc(self._host_out[name].nbytes)
                self.context.set_tensor_address(name, int(self._dev_out[name]))
            self._stream = cuda.Stream()

    def run(self, x: np.ndarray) -> Outputs:
        return run_in_batches(check_input(self.path, x), self.max_batch, self._run_batch)

    def _run_batch(self, x: np.ndarray) -> Outputs:
        n = len(x)
        m = max(n, self.min_batch)  # a profile with MIN > 1: pad with zeros, drop the padding afterwards
        cuda = self._cuda
        with shim.active(cuda, self._ctx):
            self._host_in[:n] = x  # converts to the engine's input dtype
            self._host_in[n:m] = 0
            self.context.set_input_shape(self._in, (m, *shim.INPUT_CHW))
            cuda.memcpy_htod_async(self._dev_in, self._host_in[:m], self._stream)
            if not self.context.execute_async_v3(self._stream.handle):
                raise RuntimeError(f"{self.path}: TensorRT execution failed (see its log above)")
            for name in self.outputs:
                cuda.memcpy_dtoh_async(self._host_out[name][:m], self._dev_out[name], self._stream)
            self._stream.synchronize()
            return {name: self._host_out[name][:n].astype(np.float32, copy=True) for name in self.outputs}

    def close(self) -> None:
        """Free the buffers and release the primary context (also fine to leave to interpreter exit)."""
        if getattr(self, "_ctx", None) is None:
            return
        with shim.active(self._cuda, self._ctx):
            self._dev_in.free()
            for buf in self._dev_out.values():
                buf.free()
            del self.context, self.engine
        self._ctx.detach()
        self._ctx = None

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
