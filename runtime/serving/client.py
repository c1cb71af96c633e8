"""Calling the served models with tritonclient, over HTTP or gRPC (the two modules share one API).

    client = TritonClient("127.0.0.1:8000", "http")      # or ("127.0.0.1:8001", "grpc")
    faces = client.faces(open("photo.jpg", "rb").read())  # {"boxes": (F, 4), "landmarks": (F, 68, 2), ...}
    out = client.landmarks(crops)                         # crops: float32 (N, 3, 256, 256)

A rejected request raises tritonclient.utils.InferenceServerException with the server's message.
"""
from __future__ import annotations

import re
import time

import numpy as np

from .models import FACES_MODEL, LANDMARKS_MODEL

PROTOCOLS = ("http", "grpc")
# in a model's error, which PyTriton sends with its traceback around it, the line naming the problem
_RAISED = re.compile(r"^[\w.]*(Error|Exception): .+")


def error_message(error: Exception) -> str:
    """The line of a server's error that names the problem (``ValueError: face box 0 ...``), else its first."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [error.__class__.__name__]
    raised = [line for line in lines if _RAISED.match(line)]
    return raised[-1] if raised else lines[0]


class TritonClient:
    """One connection to the serve command (not shared between threads: make one per thread)."""

    def __init__(self, url: str, protocol: str = "http"):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}: use http or grpc")
        if protocol == "http":
            import tritonclient.http as api
        else:
            import tritonclient.grpc as api
        self.api, self.protocol = api, protocol
        self.client = api.InferenceServerClient(url=url)
        self.outputs: dict[str, list[str]] = {}  # model -> its output names, read from the server once

    def ready(self) -> bool:
        try:
            return bool(self.client.is_server_ready() and self.client.is_model_ready(LANDMARKS_MODEL)
                        and self.client.is_model_ready(FACES_MODEL))
        except Exception:  # not listening yet: connection refused, reset or unavailable, by protocol
            return False

    def wait_ready(self, timeout_s: float, alive=lambda: True) -> bool:
        """Poll until both models are ready, ``timeout_s`` passes or ``alive()`` turns false."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and alive():
            if self.ready():
                return True
            time.sleep(0.2)
        return False

    def output_names(self, model: str) -> list[str]:
        if model not in self.outputs:
            meta = self.client.get_model_metadata(model)
            outputs = meta["outputs"] if isinstance(meta, dict) else [{"name": o.name} for o in meta.outputs]
            self.outputs[model] = [o["name"] for o in outputs]
        return self.outputs[model]

    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of ``model`` for these named inputs (float32 arrays, or object arrays of bytes)."""
        from tritonclient.utils import np_to_triton_dtype  # object arrays (of bytes) -> BYTES

        tensors = []
        for name, value in inputs.items():
            tensor = self.api.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        names = self.output_names(model)
        result = self.client.infer(model, tensors, outputs=[self.api.InferRequestedOutput(n) for n in names])
        return {n: result.as_numpy(n) for n in names}

    def landmarks(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """The landmarks model on float32 crops (N, 3, 256, 256)."""
        return self.infer(LANDMARKS_MODEL, {"input": crops})

    def faces(self, image: bytes, boxes: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The faces model on one encoded image, in ``boxes`` (K, 4) or on the faces it detects."""
        inputs = {"image": np.array([image], dtype=np.object_)}
        if boxes is not None:
            inputs["boxes"] = np.asarray(boxes, np.float32).reshape(-1, 4)
        return self.infer(FACES_MODEL, inputs)

    def close(self) -> None:
        self.client.close()
