"""The runtime benchmark (runtime.benchmark) with PyTorch eager on a checkpoint as one more candidate.

    python -m train.benchmark --model model.onnx --torch-checkpoint weights/mobilenet_l.pt --json bench.json

The runtime never imports torch; this module, in the training layer, hands it the PyTorch candidate.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from runtime import benchmark

from .checkpoint import load_model


def torch_candidate(spec: benchmark.Spec, crops: np.ndarray) -> benchmark.Candidate:
    """The checkpoint's network in eager mode on the benchmark's ready crops."""
    import torch

    if spec.threads:
        torch.set_num_threads(spec.threads)
    model, x = load_model(Path(spec.path)), torch.from_numpy(crops)

    def run_torch(n: int):
        with torch.inference_mode():
            return model(x[:n])

    return benchmark.Candidate(spec.label, "torch", "pytorch-eager", "fp32", run_torch)


def main(argv: list[str] | None = None) -> int:
    return benchmark.main(argv, torch_builder=torch_candidate)


if __name__ == "__main__":
    sys.exit(main())
