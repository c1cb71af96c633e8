"""Parity verification without torch: do engines and ONNX files still match the PyTorch reference?

    python -m runtime.verify --golden OUT.golden.npz --model OUT.onnx --model OUT.int8.onnx \
        --faces ../shared/data/faces --json verify.json

For every model and every condition of the golden set (clean, four Liu et al. mask
bins, centre square) it reports the reference NMSE, the model's NMSE, their
difference (ΔNMSE, percentage points) and the mean and max landmark deviation from
the reference in pixels at 256 scale. Exit status 1 when a model breaks its bound.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .backends import load_backend
from .files import DEFAULT_DATA, atomic_write_bytes
from .golden import Golden
from .metrics import nmse_per_face
from .preprocess import INPUT_SIZE, output_to_image, to_input

DEFAULT_BOUNDS = {"fp32": 0.01, "fp16": 0.05, "int8": 0.30}  # |ΔNMSE| in NMSE percentage points
DEFAULT_FACES = DEFAULT_DATA / "faces"


def to_image(pred: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """(S, 68, 2) normalised crop predictions -> image pixels, per sample matrix."""
    return np.stack([output_to_image(p, m) for p, m in zip(pred, matrices)])


def run_model(backend, crops: np.ndarray, batch: int = 32) -> np.ndarray:
    batch = min(batch, backend.max_batch or batch)
    return np.concatenate([backend.run(to_input(crops[i:i + batch])) for i in range(0, len(crops), batch)])


def compare(golden: Golden, pred: np.ndarray) -> dict[str, dict]:
    """Per-condition NMSE of reference and model against the ground truth, and their deviation."""
    mats = golden.matrices()
    gt = golden.landmarks[golden.face_index]
    ref_nmse = nmse_per_face(to_image(golden.reference, mats), gt)
    model_nmse = nmse_per_face(to_image(pred, mats), gt)
    dev = np.linalg.norm(pred - golden.reference, axis=-1) * INPUT_SIZE  # (S, 68) px at 256
    conds = np.array(golden.condition)
    out = {}
    for cond in dict.fromkeys(golden.condition):
        sel = conds == cond
        ref, mod = float(ref_nmse[sel].mean()), float(model_nmse[sel].mean())
        out[cond] = {"n": int(sel.sum()), "nmse_reference": ref, "nmse_model": mod, "delta_nmse": mod - ref,
                     "mean_dev_px": float(dev[sel].mean()), "max_dev_px": float(dev[sel].max())}
    return out


def parse_bounds(items: list[str]) -> dict[str, float]:
    bounds = dict(DEFAULT_BOUNDS)
    for item in items:
        key, _, value = item.partition("=")
        if key not in bounds or not value:
            raise SystemExit(f"--bound {item!r}: use fp32=X, fp16=X or int8=X")
        bounds[key] = float(value)
    return bounds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", type=Path, required=True, help="golden set written by export/export_onnx.py")
    ap.add_argument("--model", type=Path, action="append", required=True, help=".onnx or .engine (repeatable)")
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="the faces folder the golden set came from")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--backend", choices=["onnxruntime", "tensorrt"], help="force a backend (default: by extension)")
    ap.add_argument("--bound", action="append", default=[], metavar="PRECISION=DELTA",
                    help=f"|ΔNMSE| bound per precision (defaults: {DEFAULT_BOUNDS})")
    args = ap.parse_args(argv)
    bounds = parse_bounds(args.bound)
    golden = Golden.load(args.golden)
    crops = golden.crops(args.faces)
    print(f"golden: {len(golden.paths)} faces, {len(crops)} samples ({args.golden})")
    report, failed = {"golden": str(args.golden), "bounds": bounds, "models": {}}, []
    for path in args.model:
        backend = load_backend(path, args.backend)
        per_cond = compare(golden, run_model(backend, crops))
        bound = bounds.get(backend.precision, bounds["fp32"])
        worst = max(abs(v["delta_nmse"]) for v in per_cond.values())
        ok = worst <= bound
        report["models"][str(path)] = {"backend": backend.name, "precision": backend.precision, "bound": bound,
                                       "max_abs_delta_nmse": worst, "pass": ok, "conditions": per_cond}
        print(f"\n{path} ({backend.name}, {backend.precision}): max |ΔNMSE| {worst:.4f} "
              f"{'<=' if ok else '>'} {bound} -> {'PASS' if ok else 'FAIL'}")
        print(f"  {'condition':<10}{'ref NMSE':>10}{'NMSE':>10}{'ΔNMSE':>10}{'mean px':>10}{'max px':>10}")
        for cond, v in per_cond.items():
            print(f"  {cond:<10}{v['nmse_reference']:>10.3f}{v['nmse_model']:>10.3f}{v['delta_nmse']:>+10.4f}"
                  f"{v['mean_dev_px']:>10.4f}{v['max_dev_px']:>10.3f}")
        if not ok:
            failed.append(str(path))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(report, indent=1).encode())
        print(f"\nwrote {args.json}")
    if failed:
        print(f"FAILED parity: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
