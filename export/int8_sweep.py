"""Which quantized activations cost an INT8 graph its accuracy: a per-block sensitivity sweep.

    python export/int8_sweep.py --int8 out/mobilenet_l.int8.onnx --golden out/mobilenet_l.golden.npz \
        [--fp32 out/mobilenet_l.onnx] [--faces ../shared/data/faces] [--conditions 40-50,50-60] [--json sweep.json]

For every backbone block (and the network input) the sweep removes the Q/DQ pairs on that block's
activation tensors, so those tensors stay float while everything else stays INT8, and measures ΔNMSE
against the PyTorch reference of the golden set (runtime.verify) in ONNX Runtime. With --fp32 it then
does the same for weights: each block's convolutions get their float weights back from the FP32 ONNX.
A block whose row brings ΔNMSE close to zero holds what to keep in float: add its nodes to FLOAT_NODES
in export/quantize.py. This is how the stem was found (docs/deployment.md).
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from core.files import write_json
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


def block_of(name: str) -> str:
    """Of a tensor or node name: 'input', 'features.N' (backbone block N; 0 is the stem) or 'head'."""
    if name == "input":
        return "input"
    m = re.match(r"/features/features\.(\d+)/", name)
    return f"features.{m.group(1)}" if m else "head"


def without_qdq(model: onnx.ModelProto, pairs: list[tuple[onnx.NodeProto, onnx.NodeProto]]) -> onnx.ModelProto:
    """A copy whose consumers of these pairs read the float tensor directly (the pairs are left dangling)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    bypass = {dq.output[0]: q.input[0] for q, dq in pairs}
    for node in out.graph.node:
        node.input[:] = [bypass.get(x, x) for x in node.input]
    return out


def with_float_weights(model: onnx.ModelProto, fp32: onnx.ModelProto, convs: set[str]) -> onnx.ModelProto:
    """A copy whose named convolutions read the FP32 model's weights instead of dequantized INT8 ones."""
    inits = {i.name: i for i in fp32.graph.initializer}
    weight_of = {n.name: inits[n.input[1]] for n in fp32.graph.node if n.op_type == "Conv" and n.input[1] in inits}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.name in convs:
            weight = out.graph.initializer.add()
            weight.CopyFrom(weight_of[node.name])
            weight.name = f"{node.name}/float_weight"
            node.input[1] = weight.name
    return out


def sweep(int8: Path, golden: Golden, crops: np.ndarray, conditions: list[str],
          fp32: Path | None = None) -> dict[str, dict]:
    """ΔNMSE per condition: the INT8 graph as is ('none'), then with each block's activations in float,
    then (given the FP32 ONNX) with each block's conv weights in float."""
    model = onnx.load(str(int8))
    variants: dict[str, tuple[onnx.ModelProto, int]] = {"none": (model, 0)}
    groups: dict[str, list] = {}
    for q, dq in activation_qdq(model):
        groups.setdefault(block_of(q.input[0]), []).append((q, dq))
    variants |= {f"act {b}": (without_qdq(model, pairs), len(pairs)) for b, pairs in groups.items()}
    if fp32 is not None:
        producer = {o: n for n in model.graph.node for o in n.output}
        convs: dict[str, set[str]] = {}
        for n in model.graph.node:
            if n.op_type == "Conv" and getattr(producer.get(n.input[1]), "op_type", "") == "DequantizeLinear":
                convs.setdefault(block_of(n.name), set()).add(n.name)
        reference = onnx.load(str(fp32))
        variants |= {f"weights {b}": (with_float_weights(model, reference, names), len(names))
                     for b, names in convs.items()}
    sel = np.isin(np.array(golden.condition), conditions)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (variant, count) in variants.items():
            path = Path(tmp) / "variant.onnx"
            onnx.save(variant, str(path))
            pred = {n: v.copy() for n, v in golden.outputs().items()}  # unselected samples equal the reference
            for n, v in run_model(OnnxRuntimeBackend(path), crops[sel]).items():
                pred[n][sel] = v
            per_cond = compare(golden, pred)
            results[name] = {"count": count, **{c: per_cond[c]["delta_nmse"] for c in conditions}}
            print(f"{name:<20}{count:>6}" + "".join(f"{results[name][c]:>+10.3f}" for c in conditions), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--int8", type=Path, required=True, help="INT8 Q/DQ ONNX from export/quantize.py")
    ap.add_argument("--golden", type=Path, required=True, help="golden set written by export/export_onnx.py")
    ap.add_argument("--fp32", type=Path, help="the FP32 ONNX: also sweep the conv weights, block by block")
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="faces folder of the golden set (default: %(default)s)")
    ap.add_argument("--conditions", default="40-50,50-60", help="conditions to measure (default: %(default)s)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    for path in (args.int8, args.golden, *([args.fp32] if args.fp32 else [])):
        if not path.is_file():
            ap.error(f"{path}: not found")
    golden = Golden.load(args.golden)
    conditions = args.conditions.split(",")
    unknown = set(conditions) - set(golden.condition)
    if unknown:
        ap.error(f"conditions {sorted(unknown)} are not in {args.golden} (it has {sorted(set(golden.condition))})")
    crops = golden.crops(args.faces)
    print(f"{'in float':<20}{'count':>6}" + "".join(f"{'Δ ' + c:>10}" for c in conditions))
    results = sweep(args.int8, golden, crops, conditions, args.fp32)
    if args.json:
        write_json(args.json, {"int8": str(args.int8), "delta_nmse": results})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
