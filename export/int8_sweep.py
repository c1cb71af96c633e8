"""Which quantized activations cost an INT8 graph its accuracy: a per-block sensitivity sweep.

    python export/int8_sweep.py --int8 out/mobilenet_l.int8.onnx --golden out/mobilenet_l.golden.npz \
        [--faces ../shared/data/faces] [--conditions 40-50,50-60] [--json sweep.json]

For every backbone block (and the network input) the sweep removes the Q/DQ pairs on that block's
activation tensors, so those tensors stay float while everything else stays INT8, and measures ΔNMSE
against the PyTorch reference of the golden set (runtime.verify) in ONNX Runtime. A block whose removal
brings ΔNMSE close to zero holds the tensors to keep in float: add its consumer nodes to FLOAT_NODES in
export/quantize.py. This is how the stem output was found (docs/deployment.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import re
import tempfile

import numpy as np
import onnx

from runtime.files import atomic_write_bytes
from runtime.golden import Golden
from runtime.onnxruntime_backend import OnnxRuntimeBackend
from runtime.verify import DEFAULT_FACES, compare, run_model


def activation_qdq(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(QuantizeLinear, DequantizeLinear) pairs on activations (weights are initializers, not Q inputs)."""
    inits = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    pairs = []
    for dq in model.graph.node:
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in inits:
            pairs.append((q, dq))
    return pairs


def block_of(tensor: str) -> str:
    """'input', 'features.N' (backbone block N; 0 is the stem) or 'head'."""
    if tensor == "input":
        return "input"
    m = re.match(r"/features/features\.(\d+)/", tensor)
    return f"features.{m.group(1)}" if m else "head"


def without_qdq(model: onnx.ModelProto, pairs: list[tuple[onnx.NodeProto, onnx.NodeProto]]) -> onnx.ModelProto:
    """A copy whose consumers of these pairs read the float tensor directly (the pairs are left dangling)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    bypass = {dq.output[0]: q.input[0] for q, dq in pairs}
    for node in out.graph.node:
        node.input[:] = [bypass.get(x, x) for x in node.input]
    return out


def sweep(int8: Path, golden: Golden, crops: np.ndarray, conditions: list[str]) -> dict[str, dict]:
    """ΔNMSE per condition: the INT8 graph as is ('none'), then with each block's activations in float."""
    model = onnx.load(str(int8))
    groups: dict[str, list] = {"none": []}
    for q, dq in activation_qdq(model):
        groups.setdefault(block_of(q.input[0]), []).append((q, dq))
    sel = np.isin(np.array(golden.condition), conditions)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, pairs in groups.items():
            path = Path(tmp) / "variant.onnx"
            onnx.save(without_qdq(model, pairs), str(path))
            pred = golden.reference.copy()  # unselected samples equal the reference: ΔNMSE 0 there
            pred[sel] = run_model(OnnxRuntimeBackend(path), crops[sel])
            per_cond = compare(golden, pred)
            results[name] = {"tensors": len(pairs), **{c: per_cond[c]["delta_nmse"] for c in conditions}}
            print(f"{name:<14}{len(pairs):>8}" + "".join(f"{results[name][c]:>+10.3f}" for c in conditions), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--int8", type=Path, required=True, help="INT8 Q/DQ ONNX from export/quantize.py")
    ap.add_argument("--golden", type=Path, required=True, help="golden set written by export/export_onnx.py")
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="faces folder of the golden set (default: %(default)s)")
    ap.add_argument("--conditions", default="40-50,50-60", help="conditions to measure (default: %(default)s)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    for path in (args.int8, args.golden):
        if not path.is_file():
            ap.error(f"{path}: not found")
    golden = Golden.load(args.golden)
    conditions = args.conditions.split(",")
    unknown = set(conditions) - set(golden.condition)
    if unknown:
        ap.error(f"conditions {sorted(unknown)} are not in {args.golden} (it has {sorted(set(golden.condition))})")
    crops = golden.crops(args.faces)
    print(f"{'in float':<14}{'tensors':>8}" + "".join(f"{'Δ ' + c:>10}" for c in conditions))
    results = sweep(args.int8, golden, crops, conditions)
    if args.json:
        atomic_write_bytes(args.json, json.dumps({"int8": str(args.int8), "delta_nmse": results}, indent=1).encode())
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
