"""ONNX Runtime backend: FP32, FP16 or Q/DQ INT8 ONNX files, on the CPU or, when installed, CUDA.

A model exported with a fixed batch B runs B inputs at a time (``max_batch``): larger batches are split,
smaller ones padded with zeros, as the TensorRT backend does with its profile.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backends import INPUT_CHW, Outputs, check_input, output_names, run_in_batches

# TensorRT's own EP is left out on purpose: it rebuilds an engine at every start; use a .engine instead.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        available = ort.get_available_providers()
        providers = providers or [p for p in PREFERRED_PROVIDERS if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as e:
            raise ValueError(f"{self.path}: ONNX Runtime cannot load it ({e.__class__.__name__}: {e})") from e
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or tuple(inputs[0].shape[1:]) != INPUT_CHW:
            raise ValueError(f"{self.path}: not a landmark model: expected one input [N,3,256,256], got "
                             f"{[(i.name, i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        batch = inputs[0].shape[0]  # an int when fixed; a name or None when dynamic
        self.max_batch: int | None = batch if isinstance(batch, int) else None
        self.outputs = output_names(self.path, {o.name: o.shape[1:] for o in self.session.get_outputs()})
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.precision = self.metadata.get("precision", "fp32")
        self.providers = self.session.get_providers()

    def run(self, x: np.ndarray) -> Outputs:
        x = np.ascontiguousarray(check_input(self.path, x), dtype=np.float32)
        return run_in_batches(x, self.max_batch, self._run_batch)

    def _run_batch(self, x: np.ndarray) -> Outputs:
        n = len(x)
        if self.max_batch is not None and n < self.max_batch:
            x = np.concatenate([x, np.zeros((self.max_batch - n, *INPUT_CHW), np.float32)])
        values = self.session.run(list(self.outputs), {self.input_name: x})
        return {name: v[:n].astype(np.float32, copy=False) for name, v in zip(self.outputs, values)}
