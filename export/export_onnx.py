"""Export a MobileNet-L checkpoint to ONNX (simplified, with metadata and a PyTorch parity check).

    python export/export_onnx.py --checkpoint weights/mobilenet_l.pt --out OUT.onnx
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import os
import platform
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from core import preprocess, schema
from core.data import DEFAULT_FACES, DEFAULT_MASKS
from core.files import atomic_write_bytes, check_output_path, remove_temp_leftovers, sha1_file, sha256_file, temp_path
from export.quantize import set_metadata
from runtime.backends import INPUT_NAME, OUTPUTS
from train.checkpoint import load_model
from train.model import variant_name

DEFAULT_OPSET = 17
BACKBONE_OPS = {"Conv", "HardSwish", "HardSigmoid", "Relu", "GlobalAveragePool", "Mul", "Add"}
HEAD_OPS = {"Flatten", "Concat", "Gemm", "Reshape", "Sigmoid", "Squeeze", "Constant"}
# the visibility head's sampling at the points (train.model.sample), all in TensorRT 8.5's ONNX parser; allowed
# only in its nodes, so that nothing else grows them unnoticed
SAMPLING_OPS = {"Clip", "Div", "Exp", "Gather", "MatMul", "ReduceSum", "Sub", "Transpose", "Unsqueeze"}
SAMPLING_SCOPE = "/vis_points/"
PARITY_BOUND_PX = 0.01  # max landmark difference to PyTorch, pixels at 256 scale
PARITY_BOUND_PROB = 1e-4  # max visibility / face-score difference to PyTorch


def model_outputs(model: torch.nn.Module) -> list[str]:
    """The runtime.backends.OUTPUTS a network returns: all three with heads, landmarks without."""
    return list(OUTPUTS) if getattr(getattr(model, "config", None), "heads", False) else ["landmarks"]


def export_onnx(model: torch.nn.Module, path: Path, opset: int = DEFAULT_OPSET, simplify: bool = True) -> list[str]:
    """Write ``model`` as ONNX with input ``input`` [N,3,256,256] and outputs ``landmarks`` [N,68,2] and, for
    a model with heads, ``visibility`` [N,68] and ``face_score`` [N] (probabilities), batch axis dynamic.

    Returns notes (e.g. why simplification was skipped). The TorchScript exporter is used
    because it maps nn.Hardswish / nn.Hardsigmoid / AdaptiveAvgPool2d(1) straight to
    HardSwish / HardSigmoid / GlobalAveragePool.
    """
    buf = io.BytesIO()
    outputs = model_outputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy-exporter deprecation notice
        torch.onnx.export(
            model.eval(), torch.zeros(1, 3, 256, 256), buf, input_names=[INPUT_NAME], output_names=outputs,
            opset_version=opset, dynamic_axes={n: {0: "N"} for n in [INPUT_NAME, *outputs]}, dynamo=False,
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
    atomic_write_bytes(Path(path), proto.SerializeToString())
    return notes


def check_op_set(nodes) -> None:
    """The graph's nodes may hold only TensorRT-fusable backbone ops, the heads' ops (HEAD_OPS) and, in the
    visibility head's point sampling (SAMPLING_SCOPE) only, SAMPLING_OPS."""
    extra = sorted({f"{n.op_type} ({n.name})" if n.op_type in SAMPLING_OPS else n.op_type for n in nodes
                    if n.op_type not in BACKBONE_OPS | HEAD_OPS
                    and not (n.op_type in SAMPLING_OPS and n.name.startswith(SAMPLING_SCOPE))})
    if extra:
        raise RuntimeError(f"unexpected ONNX ops {extra}: the backbone must stay {sorted(BACKBONE_OPS)} so "
                           f"TensorRT can fuse it, and {sorted(SAMPLING_OPS)} belong to {SAMPLING_SCOPE} nodes only")


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxsim", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def build_golden(model: torch.nn.Module, faces_dir: Path, masks_dir: Path, count: int, seed: int, meta: dict):
    """The fixed verification set: ``count`` test faces under every condition, with PyTorch predictions."""
    from core.occlusion import CONDITIONS
    from core.samples import occluded_crops
    from runtime.golden import Golden
    from train.evaluate import as_outputs, load_faces, torch_predictor

    faces = load_faces(faces_dir, "test", limit=count)
    face_index, conds, mask_ids, masks, crops = [], [], [], [], []
    for f, face in enumerate(faces):
        _, by_cond = occluded_crops(faces_dir, face, masks_dir, CONDITIONS, seed)
        for cond, (mask_id, mask, crop) in by_cond.items():
            face_index.append(f)
            conds.append(cond)
            mask_ids.append(mask_id)
            masks.append(np.ones((256, 256), bool) if mask is None else mask.astype(bool))
            crops.append(crop)
    crops = np.stack(crops)
    ref = as_outputs(torch_predictor(model, batch=64)(crops))
    golden = Golden(
        paths=[f.path for f in faces], sha1=[sha1_file(faces_dir / f.path) for f in faces],
        boxes=np.stack([f.box for f in faces]), landmarks=np.stack([f.landmarks for f in faces]),
        yaw=np.array([f.yaw for f in faces]), face_index=np.array(face_index), condition=conds, mask_id=mask_ids,
        masks=np.stack(masks), reference=ref["landmarks"], reference_visibility=ref.get("visibility"),
        reference_score=ref.get("face_score"),
        meta=meta | {"preprocess_version": preprocess.PREPROCESS_VERSION, "mask_seed": seed, "split": "test"},
    )
    return golden, crops


def parity(onnx_path: Path, crops: np.ndarray, reference: dict[str, np.ndarray]) -> dict[str, float]:
    """Max difference between ONNX Runtime and PyTorch on the same inputs, per output: landmarks in pixels
    at 256 scale, visibility and face score in probability."""
    from runtime.onnxruntime_backend import OnnxRuntimeBackend
    from runtime.verify import run_model

    pred = run_model(OnnxRuntimeBackend(onnx_path, providers=["CPUExecutionProvider"]), crops)
    if set(pred) != set(reference):
        raise RuntimeError(f"{onnx_path}: outputs {sorted(pred)}, PyTorch has {sorted(reference)}")
    scale = {"landmarks": preprocess.INPUT_SIZE}
    return {n: float(np.abs(pred[n] - reference[n]).max() * scale.get(n, 1)) for n in reference}


def cli() -> None:
    """Console-script entry point (pyproject.toml)."""
    main()  # returns its results for callers in Python; the exit status is 0 unless it raises


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=Path("weights/mobilenet_l.pt"), help="(default: %(default)s)")
    ap.add_argument("--out", type=Path, required=True, help="ONNX file to write; the golden set goes to OUT.golden.npz")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    ap.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="faces for parity and golden (default: %(default)s)")
    ap.add_argument("--masks", type=Path, default=DEFAULT_MASKS, help="Liu et al. masks (default: %(default)s)")
    ap.add_argument("--golden-faces", type=int, default=200, help="test faces in the golden set (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="mask selection seed, as in train.evaluate (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="replace an existing OUT and its golden set")
    args = ap.parse_args(argv)
    golden_path = args.out.with_suffix(".golden.npz")
    try:
        check_output_path(args.out)
    except ValueError as e:
        ap.error(str(e))
    if args.out.exists() and not args.force:
        ap.error(f"{args.out} exists; pass --force to replace it (and {golden_path.name})")
    # What a killed export to OUT left; no other export to OUT can be running (it would replace OUT too)
    removed = remove_temp_leftovers(args.out.parent, (args.out.name, golden_path.name))
    if removed:
        print(f"{args.out.parent}: removed {len(removed)} temp file(s) a killed export left: "
              f"{', '.join(p.name for p in removed)}")

    # Everything is written under temporary names first; the golden set and the model replace the final
    # names together, and only once parity has passed, so a failed or killed export never leaves an
    # unverified model (or a golden set of another model) under the final names.
    tmp_onnx, tmp_golden = temp_path(args.out), temp_path(golden_path)
    try:
        result = export_checked(args, tmp_onnx, tmp_golden)
        if "max_diff" in result:  # parity passed and the golden set was saved
            os.replace(tmp_golden, golden_path)
            result["golden"] = str(golden_path)
        elif golden_path.exists():  # the earlier export's golden set belongs to another model
            golden_path.unlink()
            print(f"removed {golden_path}: it was the golden set of the model this export replaces")
        os.replace(tmp_onnx, args.out)
    finally:
        tmp_onnx.unlink(missing_ok=True)
        tmp_golden.unlink(missing_ok=True)
    result["onnx"] = str(args.out)
    print(f"wrote {args.out}")
    return result


def export_checked(args: argparse.Namespace, onnx_path: Path, golden_path: Path) -> dict:
    """Export, embed metadata, build the golden set and check parity, all at the given (temporary) paths."""
    model = load_model(args.checkpoint)
    checkpoint_sha = sha256_file(args.checkpoint)
    notes = export_onnx(model, onnx_path, args.opset, simplify=not args.no_simplify)
    for note in notes:
        print(f"note: {note}")
    proto = onnx.load(str(onnx_path))
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    print("ONNX ops: " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
    check_op_set(proto.graph.node)
    meta = {
        "model": variant_name(model.config), "precision": "fp32", "opset": str(args.opset),
        "outputs": ",".join(model_outputs(model)),
        "preprocess": json.dumps(preprocess.describe()), "schema": json.dumps(schema.describe()),
        "checkpoint_sha256": checkpoint_sha, "tools": json.dumps(tool_versions()),
        "simplified": "no" if notes or args.no_simplify else "yes",
    }
    set_metadata(proto, meta)
    atomic_write_bytes(onnx_path, proto.SerializeToString())
    result = {"ops": dict(ops)}
    if not (args.faces.is_dir() and args.masks.is_dir()):
        print(f"skipped parity check and golden set: {args.faces} or {args.masks} not found")
        return result
    golden, crops = build_golden(model, args.faces, args.masks, args.golden_faces, args.seed,
                                 {"checkpoint_sha256": checkpoint_sha, "onnx": args.out.name})
    diffs = parity(onnx_path, crops, golden.outputs())
    diff = diffs["landmarks"]
    print(f"golden set: {len(golden.paths)} test faces x {len(set(golden.condition))} conditions")
    print(f"parity ONNX Runtime vs PyTorch on {len(crops)} real samples: max landmark difference {diff:.5f} px "
          f"at 256 (bound {PARITY_BOUND_PX} px)" + "".join(
              f", {n} {d:.2e} (bound {PARITY_BOUND_PROB})" for n, d in diffs.items() if n != "landmarks"))
    if diff > PARITY_BOUND_PX or any(d > PARITY_BOUND_PROB for n, d in diffs.items() if n != "landmarks"):
        raise SystemExit(f"parity check failed, nothing written under {args.out.name}: {diffs}")
    golden.save(golden_path)
    return {**result, "max_diff_px": diff, "max_diff": diffs}

if __name__ == "__main__":
    main()
