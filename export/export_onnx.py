"""Export a MobileNet-L checkpoint to ONNX (simplified, with metadata and a PyTorch parity check).

    python export/export_onnx.py --checkpoint weights/mobilenet_l.pt --out OUT.onnx
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import collections
import io
import json
import platform
import warnings

import numpy as np
import onnx
import torch

from runtime import preprocess, schema
from runtime.files import atomic_write_bytes, sha1_file, sha256_file

DEFAULT_OPSET = 17
BACKBONE_OPS = {"Conv", "HardSwish", "HardSigmoid", "Relu", "GlobalAveragePool", "Mul", "Add"}
HEAD_OPS = {"Flatten", "Concat", "Gemm", "Reshape"}
PARITY_BOUND_PX = 0.01  # max landmark difference to PyTorch, pixels at 256 scale


def export_onnx(model: torch.nn.Module, path: Path, opset: int = DEFAULT_OPSET, simplify: bool = True) -> list[str]:
    """Write ``model`` as ONNX with input ``input`` [N,3,256,256] and output ``landmarks`` [N,68,2].

    Returns notes (e.g. why simplification was skipped). The TorchScript exporter is used
    because it maps nn.Hardswish / nn.Hardsigmoid / AdaptiveAvgPool2d(1) straight to
    HardSwish / HardSigmoid / GlobalAveragePool.
    """
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
    atomic_write_bytes(Path(path), proto.SerializeToString())
    return notes


def op_histogram(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def check_op_set(ops: collections.Counter) -> None:
    """The graph may hold only TensorRT-fusable backbone ops plus the head's flatten/concat/FC/reshape."""
    extra = set(ops) - BACKBONE_OPS - HEAD_OPS
    if extra:
        raise RuntimeError(f"unexpected ONNX ops {sorted(extra)}: the backbone must stay "
                           f"{sorted(BACKBONE_OPS)} so TensorRT can fuse it")


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxsim", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def embed_metadata(path: Path, props: dict[str, str]) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    atomic_write_bytes(path, model.SerializeToString())


def build_golden(model: torch.nn.Module, faces_dir: Path, masks_dir: Path, count: int, seed: int, meta: dict):
    """The fixed verification set: ``count`` test faces under every condition, with PyTorch predictions."""
    from runtime.golden import Golden
    from train.evaluate import load_faces, occluded_crops
    from train.occlusion import CONDITIONS

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
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(preprocess.to_input(crops[i:i + 64]))).numpy()
                              for i in range(0, len(crops), 64)])
    golden = Golden(
        paths=[f.path for f in faces], sha1=[sha1_file(faces_dir / f.path) for f in faces],
        boxes=np.stack([f.box for f in faces]), landmarks=np.stack([f.landmarks for f in faces]),
        yaw=np.array([f.yaw for f in faces]), face_index=np.array(face_index), condition=conds, mask_id=mask_ids,
        masks=np.stack(masks), reference=ref,
        meta=meta | {"preprocess_version": preprocess.PREPROCESS_VERSION, "mask_seed": seed, "split": "test"},
    )
    return golden, crops


def parity(onnx_path: Path, crops: np.ndarray, reference: np.ndarray) -> float:
    """Max landmark difference (pixels at 256 scale) between ONNX Runtime and PyTorch on the same inputs."""
    from runtime.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(onnx_path, providers=["CPUExecutionProvider"])
    pred = np.concatenate([backend.run(preprocess.to_input(crops[i:i + 64])) for i in range(0, len(crops), 64)])
    return float(np.abs(pred - reference).max() * preprocess.INPUT_SIZE)


def main(argv: list[str] | None = None) -> dict:
    from train.checkpoint import load_model
    from train.data import DEFAULT_FACES, DEFAULT_MASKS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=Path("weights/mobilenet_l.pt"), help="(default: %(default)s)")
    ap.add_argument("--out", type=Path, required=True, help="ONNX file to write; the golden set goes to OUT.golden.npz")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    ap.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="faces for parity and golden (default: %(default)s)")
    ap.add_argument("--masks", type=Path, default=DEFAULT_MASKS, help="Liu et al. masks (default: %(default)s)")
    ap.add_argument("--golden-faces", type=int, default=200, help="test faces in the golden set (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="mask selection seed, as in train.evaluate (default: %(default)s)")
    args = ap.parse_args(argv)

    model = load_model(args.checkpoint)
    checkpoint_sha = sha256_file(args.checkpoint)
    notes = export_onnx(model, args.out, args.opset, simplify=not args.no_simplify)
    for note in notes:
        print(f"note: {note}")
    ops = op_histogram(args.out)
    print("ONNX ops: " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
    check_op_set(ops)
    meta = {
        "model": "mobilenet_l", "precision": "fp32", "opset": str(args.opset),
        "preprocess": json.dumps(preprocess.describe()), "schema": json.dumps(schema.describe()),
        "checkpoint_sha256": checkpoint_sha, "tools": json.dumps(tool_versions()),
        "simplified": "no" if notes or args.no_simplify else "yes",
    }
    embed_metadata(args.out, meta)
    result = {"onnx": str(args.out), "ops": dict(ops)}

    if args.faces.is_dir() and args.masks.is_dir():
        golden, crops = build_golden(model, args.faces, args.masks, args.golden_faces, args.seed,
                                     {"checkpoint_sha256": checkpoint_sha, "onnx": args.out.name})
        golden_path = args.out.with_suffix(".golden.npz")
        golden.save(golden_path)
        diff = parity(args.out, crops, golden.reference)
        print(f"golden set: {len(golden.paths)} test faces x 6 conditions -> {golden_path}")
        print(f"parity ONNX Runtime vs PyTorch: max landmark difference {diff:.5f} px at 256 "
              f"(bound {PARITY_BOUND_PX} px) on {len(crops)} real samples")
        result |= {"golden": str(golden_path), "max_diff_px": diff}
        if diff > PARITY_BOUND_PX:
            raise SystemExit(f"parity check failed: {diff:.5f} px > {PARITY_BOUND_PX} px")
    else:
        print(f"skipped parity check and golden set: {args.faces} or {args.masks} not found")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
