"""ONNX Runtime backend: FP32, FP16 or Q/DQ INT8 ONNX files, on the CPU or, when installed, CUDA."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# TensorRT's own EP is left out on purpose: it rebuilds an engine at every start; use a .engine instead.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeBackend:
    name = "onnxruntime"
    max_batch = None

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
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if (len(inputs) != 1 or list(inputs[0].shape[1:]) != [3, 256, 256]
                or len(outputs) != 1 or list(outputs[0].shape[1:]) != [68, 2]):
            raise ValueError(
                f"{self.path}: not a landmark model: expected input [N,3,256,256] and output [N,68,2], got "
                f"{[(i.name, i.shape) for i in inputs]} -> {[(o.name, o.shape) for o in outputs]}")
        self.input_name = inputs[0].name
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.precision = self.metadata.get("precision", "fp32")
        self.providers = self.session.get_providers()

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0].astype(np.float32, copy=False)
