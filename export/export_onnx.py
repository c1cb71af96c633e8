"""Export a MobileNet-L checkpoint to ONNX (simplified, with metadata and a PyTorch parity check).

    python export/export_onnx.py --checkpoint weights/mobilenet_l.pt --out OUT.onnx
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import io

import onnx
import torch

DEFAULT_OPSET = 17


def export_onnx(model: torch.nn.Module, path: Path, opset: int = DEFAULT_OPSET, simplify: bool = True) -> list[str]:
    """Write ``model`` as ONNX with input ``input`` [N,3,256,256] and output ``landmarks`` [N,68,2].

    Returns notes (e.g. why simplification was skipped). The TorchScript exporter is used
    because it maps nn.Hardswish / nn.Hardsigmoid / AdaptiveAvgPool2d(1) straight to
    HardSwish / HardSigmoid / GlobalAveragePool.
    """
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy-exporter deprecation notice
        torch.onnx.export(
            model.eval(), torch.zeros(1, 3, 256, 256), buf, input_names=["input"], output_names=["landmarks"],
            opset_version=opset, dynamic_axes={"input": {0: "N"}, "landmarks": {0: "N"}}, dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    notes = []
    if simplify:
        try:
            import onnxsim

            simplified, ok = onnxsim.simplify(proto)
            if ok:
                proto = simplified
            else:
                notes.append("onnxsim could not validate the simplified graph; kept the unsimplified one")
        except Exception as e:  # keep the exported graph, say why
            notes.append(f"onnxsim failed ({e.__class__.__name__}: {e}); kept the unsimplified graph")
    onnx.checker.check_model(proto)
    from train.data import atomic_write_bytes

    atomic_write_bytes(Path(path), proto.SerializeToString())
    return notes
