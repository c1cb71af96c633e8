"""Parity verification without torch: do engines and ONNX files still match the PyTorch reference?

    python -m runtime.verify --golden OUT.golden.npz --model OUT.onnx --model OUT.int8.onnx \
        --faces ../shared/data/faces --json verify.json

For every model and every condition of the golden set (clean, four Liu et al. mask
bins, centre square) it reports the reference NMSE, the model's NMSE, their
difference (ΔNMSE, percentage points) and the mean and max landmark deviation from
the reference in pixels at 256 scale. For a model with visibility and face-score
heads it also reports, per condition, how far the probabilities move from the reference
(the face score's largest difference, the visibility's 99.9th percentile over points, and
its largest for information) and the share of points whose visible/hidden call (at 0.5)
agrees with the reference's. A NaN or infinite output anywhere fails the model.

Exit status, so that a CI gate can tell a regression from a broken setup:
  0  every model ran and is within its bounds
  1  every model ran, and at least one is outside a bound (a parity regression)
  2  verification could not run: bad arguments, an unreadable golden set or faces folder, or a model that
     could not be loaded or run (the other models are still verified and reported)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from core.data import DEFAULT_FACES
from core.files import atomic_write_bytes
from core.metrics import nmse_per_face
from core.preprocess import INPUT_SIZE, output_to_image, to_input

from .backends import Outputs, landmarks_output, load_backend
from .detector import VISIBLE
from .golden import Golden

EXIT_OUTSIDE_BOUND, EXIT_CANNOT_RUN = 1, 2
DEFAULT_BOUNDS = {"fp32": 0.01, "fp16": 0.05, "int8": 0.30}  # |ΔNMSE| in NMSE percentage points
# Heads, per precision: (bound on the probability difference, min visible/hidden agreement). The heads stay float;
# the backbone's FP16/INT8 error moves them. The difference is the face score's largest and the visibility's
# VISIBILITY_QUANTILE over points, not its largest: visibility is read at the predicted point, so a point that
# the engine's landmarks move a few px onto or off an occluder's edge flips outright, as it should (INT8 golden
# set: 7 of 81,600 points moved by a median 7.8 px, |Δp| up to 0.91; FP16 largest 0.07). The landmark bound
# allows such moves. Measured on the golden test set, worst condition: FP16 0.023, INT8 0.23 (face score's largest
# 0.004 / 0.05; earlier pooled-only heads, largest of both: 0.002-0.028 FP16, 0.19-0.33 INT8). The agreement is what catches heads
# that decide differently (INT8: 0.968-0.99 measured). An inverted or swapped head gives differences near 1
# and fails both.
HEAD_BOUNDS = {"fp32": (1e-3, 0.999), "fp16": (0.05, 0.995), "int8": (0.4, 0.97)}
VISIBILITY_QUANTILE = 0.999
TAIL_PRECISIONS = ("fp16", "int8")  # where the quantile applies; elsewhere (FP32) the largest difference


def to_image(pred: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """(S, 68, 2) normalised crop predictions -> image pixels, per sample matrix."""
    return np.stack([output_to_image(p, m) for p, m in zip(pred, matrices)])


def run_model(backend, crops: np.ndarray, batch: int = 32) -> Outputs:
    """Every output of a backend for uint8 crops, in batches."""
    batch = min(batch, backend.max_batch or batch)
    parts = [backend.run(to_input(crops[i:i + batch])) for i in range(0, len(crops), batch)]
    return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}


def worst(values) -> float:
    """The largest value, NaN when any is NaN (Python's max would skip a NaN that is not first)."""
    values = np.asarray(list(values), dtype=np.float64)
    return float("nan") if np.isnan(values).any() else float(values.max())


def compare(golden: Golden, outputs: Outputs, precision: str = "fp32") -> dict[str, dict]:
    """Per-condition NMSE of reference and model against the ground truth, their deviation and, for models
    with heads, how far the heads' probabilities move (``prob_diff``, the movement HEAD_BOUNDS bounds for this
    precision: the visibility's tail for TAIL_PRECISIONS, its largest otherwise) and the visible/hidden
    agreement."""
    pred = landmarks_output(outputs)
    mats = golden.matrices()
    gt = golden.landmarks[golden.face_index]
    ref_nmse = nmse_per_face(to_image(golden.reference, mats), gt)
    model_nmse = nmse_per_face(to_image(pred, mats), gt)
    dev = np.linalg.norm(pred - golden.reference, axis=-1) * INPUT_SIZE  # (S, 68) px at 256
    reference = golden.outputs()
    heads = [n for n in ("visibility", "face_score") if n in reference]
    missing = [n for n in heads if n not in outputs]
    if missing:
        raise ValueError(f"the golden set has reference {', '.join(missing)} but the model has no such output")
    conds = np.array(golden.condition)
    out = {}
    for cond in dict.fromkeys(golden.condition):
        sel = conds == cond
        ref, mod = float(ref_nmse[sel].mean()), float(model_nmse[sel].mean())
        row = {"n": int(sel.sum()), "nmse_reference": ref, "nmse_model": mod, "delta_nmse": mod - ref,
               "mean_dev_px": float(dev[sel].mean()), "max_dev_px": worst(dev[sel].ravel())}
        if heads:
            vis, ref_vis = outputs["visibility"][sel], reference["visibility"][sel]
            vis_diff = np.abs(vis - ref_vis)
            row["max_visibility_diff"] = worst(vis_diff.ravel())
            # FP32's landmarks equal the reference's: no point may flip there
            vis_move = (np.quantile(vis_diff, VISIBILITY_QUANTILE) if precision in TAIL_PRECISIONS
                        else row["max_visibility_diff"])
            row["prob_diff"] = worst([vis_move,
                                      np.abs(outputs["face_score"][sel] - reference["face_score"][sel]).max()])
            row["visibility_agreement"] = (float("nan") if np.isnan(vis).any()
                                           else float(((vis >= VISIBLE) == (ref_vis >= VISIBLE)).mean()))
        out[cond] = row
    return out


def judge(per_cond: dict[str, dict], precision: str, bounds: dict[str, float]) -> dict:
    """Bounds, worst values and the verdict of one model; NaN anywhere fails."""
    bound = bounds.get(precision, bounds["fp32"])
    rows = list(per_cond.values())
    result = {"bound": bound, "max_abs_delta_nmse": worst(abs(r["delta_nmse"]) for r in rows)}
    ok = result["max_abs_delta_nmse"] <= bound and all(np.isfinite(r["max_dev_px"]) for r in rows)
    if "prob_diff" in rows[0]:
        prob_bound, agree_bound = HEAD_BOUNDS.get(precision, HEAD_BOUNDS["fp32"])
        result.update({"prob_bound": prob_bound, "agreement_bound": agree_bound,
                       "prob_diff": worst(r["prob_diff"] for r in rows),
                       "max_visibility_diff": worst(r["max_visibility_diff"] for r in rows),
                       "visibility_quantile": VISIBILITY_QUANTILE,
                       "min_visibility_agreement": -worst(-r["visibility_agreement"] for r in rows)})
        ok = ok and result["prob_diff"] <= prob_bound and result["min_visibility_agreement"] >= agree_bound
    return {**result, "pass": bool(ok)}


def _finite(obj):
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def parse_bounds(items: list[str]) -> dict[str, float]:
    bounds = dict(DEFAULT_BOUNDS)
    for item in items:
        key, _, value = item.partition("=")
        if key not in bounds or not value:
            raise SystemExit(f"--bound {item!r}: use fp32=X, fp16=X or int8=X")
        bounds[key] = float(value)
    return bounds


def cli() -> None:
    """Console-script entry point (pyproject.toml)."""
    sys.exit(main())


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
    try:
        golden = Golden.load(args.golden)
        crops = golden.crops(args.faces)
    except (OSError, ValueError) as e:  # ImageError is a ValueError
        print(f"error: cannot verify: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    print(f"golden: {len(golden.paths)} faces, {len(crops)} samples ({args.golden})")
    report, failed, broken = {"golden": str(args.golden), "bounds": bounds, "models": {}}, [], []
    for path in args.model:
        try:
            backend = load_backend(path, args.backend)
            per_cond = compare(golden, run_model(backend, crops), backend.precision)
        except Exception as e:  # one unreadable model must not cost the others their result
            print(f"\n{path}: ERROR, could not be verified: {e}", file=sys.stderr)
            report["models"][str(path)] = {"error": f"{e.__class__.__name__}: {e}", "pass": False}
            broken.append(str(path))
            continue
        verdict = judge(per_cond, backend.precision, bounds)
        report["models"][str(path)] = {"backend": backend.name, "precision": backend.precision, **verdict,
                                       "conditions": per_cond}
        ok = verdict["pass"]
        heads = "prob_diff" in verdict
        print(f"\n{path} ({backend.name}, {backend.precision}): max |ΔNMSE| {verdict['max_abs_delta_nmse']:.4f} "
              f"(bound {verdict['bound']})" + (
                  f", |Δp| {verdict['prob_diff']:.4f} (bound {verdict['prob_bound']}; visibility's largest "
                  f"{verdict['max_visibility_diff']:.2f}), visible/hidden "
                  f"agreement {verdict['min_visibility_agreement']:.4f} (bound {verdict['agreement_bound']})"
                  if heads else "") + f" -> {'PASS' if ok else 'FAIL'}")
        print(f"  {'condition':<10}{'ref NMSE':>10}{'NMSE':>10}{'ΔNMSE':>10}{'mean px':>10}{'max px':>10}"
              + (f"{'|Δp|':>10}{'agree':>8}" if heads else ""))
        for cond, v in per_cond.items():
            print(f"  {cond:<10}{v['nmse_reference']:>10.3f}{v['nmse_model']:>10.3f}{v['delta_nmse']:>+10.4f}"
                  f"{v['mean_dev_px']:>10.4f}{v['max_dev_px']:>10.3f}"
                  + (f"{v['prob_diff']:>10.4f}{v['visibility_agreement']:>8.4f}" if heads else ""))
        if not ok:
            failed.append(str(path))
    if args.json:
        # strict JSON: a NaN is written as null (the verdict already says FAIL)
        atomic_write_bytes(args.json, json.dumps(_finite(report), indent=1, allow_nan=False).encode())
        print(f"\nwrote {args.json}")
    if failed:
        print(f"FAILED parity: {', '.join(failed)}", file=sys.stderr)
    if broken:
        print(f"could not verify: {', '.join(broken)}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    return EXIT_OUTSIDE_BOUND if failed else 0


if __name__ == "__main__":
    sys.exit(main())
