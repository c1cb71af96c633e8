"""The paper's occlusion evaluation: NMSE clean, under Liu et al. masks by coverage bin, and the centre square.

    python -m train.evaluate --checkpoint weights/mobilenet_l.pt --faces ../shared/data/faces \
        --masks ../shared/data/masks/nvidia_irregular_test --split test --json OUT.json

Each face is cropped from its teacher box (found on the clean image), the mask is
applied to the 256x256 crop, and predictions are mapped back to image pixels.
The mask for each (face, bin) is fixed by --seed, so runs and models are comparable.

Beyond the paper: a ``textured`` condition (the 30-40 % masks filled with texture), and for models
with heads the visibility quality per condition (ROC AUC and accuracy at 0.5; ground truth: the
mask at the teacher's landmark, and whether the point lies in the crop and the image) and the face
score's AUC against negatives made from the same test faces (crops far off the face, background).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from core.data import DEFAULT_FACES, DEFAULT_MASKS, labels_path, load_labels, read_split
from core.files import write_json
from core.metrics import nmse_per_face, roc_auc
from core.mirror import mirror_average
from core.occlusion import EVAL_CONDITIONS, PAPER_CONDITIONS
from core.pose import SIDE_YAW_DEG, yaw_degrees
from core.preprocess import output_to_image, read_image
from core.progress import Progress
from core.samples import Face, negative_crop, occluded_crops, visibility_truth
from runtime.backends import OUTPUTS
from runtime.detector import VISIBLE

from .annotate import annotate

# Predictor: uint8 BGR crops (N, 256, 256, 3) -> normalised landmarks (N, 68, 2), or a dict of outputs
# named as runtime.backends.OUTPUTS (landmarks, and visibility / face_score for models with heads).
Predictor = Callable[[np.ndarray], "np.ndarray | dict[str, np.ndarray]"]

# The paper's numbers (Pang et al. 2025, as summarised in PAPER.md), all in this one place.
PAPER = {  # MobileNet-L, NMSE %: Tables 3 (frontal) and 4 (side)
    "frontal": {"10-20": 2.64, "30-40": 3.67, "40-50": 5.75, "50-60": 6.26, "center25": 9.54},
    "side": {"10-20": 5.36, "30-40": 7.25, "40-50": 10.27, "50-60": 11.80, "center25": 12.13},
}
PAPER_METHODS = {  # Tables 3 and 4 with the paper's re-implemented baselines FAN* and ESR*
    "MobileNet-L": PAPER,
    "FAN*": {"frontal": {"10-20": 3.56, "30-40": 4.75, "40-50": 6.85, "50-60": 7.82, "center25": 9.52},
             "side": {"10-20": 4.02, "30-40": 6.78, "40-50": 11.06, "50-60": 12.67, "center25": 14.07}},
    "ESR*": {"frontal": {"10-20": 4.72, "30-40": 6.53, "40-50": 9.63, "50-60": 10.34, "center25": 13.26},
             "side": {"10-20": 4.75, "30-40": 6.73, "40-50": 10.93, "50-60": 12.42, "center25": 13.86}},
}
PAPER_TOTAL_S = {"MobileNet-L": 1.84, "FAN*": 3.64, "ESR*": 3.06}  # Table 2: total testing time, seconds
# Figure 9 (centre occlusion): NMSE improvement (%) from adding each component, keyed by the
# train.model.ABLATIONS variant that lacks it.
PAPER_FIG9 = {"no-SE": ("SE", 3.5), "ReLU": ("h-swish", 11.6), "non-linear-bottleneck": ("linear bottleneck", 9.2),
              "no-residual": ("inverted residual", 17.8)}


def load_faces(faces_dir: Path, split: str, limit: int | None = None) -> list[Face]:
    """Teacher-labelled faces of a split (labelling any that are missing first)."""
    paths = read_split(faces_dir, split)
    if not paths:
        raise SystemExit(f"{faces_dir}: no images in split {split!r}")
    labelled = load_labels(faces_dir, paths) if labels_path(faces_dir).exists() else None
    if labelled is None or len(labelled.paths) < len(paths):
        annotate(faces_dir, split)  # labels what is missing; failures stay listed in the report
        labelled = load_labels(faces_dir, paths)
    if len(labelled.paths) < len(paths):
        print(f"note: {len(paths) - len(labelled.paths)} of {len(paths)} {split} images have no teacher label "
              f"(see the annotate report) and are not evaluated", file=sys.stderr)
    faces = [Face(p, b, l, yaw_degrees(l), (int(s[0]), int(s[1])))
             for p, b, l, s in zip(labelled.paths, labelled.boxes, labelled.landmarks, labelled.sizes)]
    return faces[:limit]


def as_outputs(pred) -> dict[str, np.ndarray]:
    return pred if isinstance(pred, dict) else {"landmarks": pred}


def summarise(per_face: dict[str, np.ndarray], yaws: np.ndarray, threshold: float) -> dict:
    side = yaws >= threshold
    groups = {"all": np.ones_like(side), "frontal": ~side, "side": side}
    return {
        "n_faces": {g: int(sel.sum()) for g, sel in groups.items()},
        "nmse": {g: {c: (float(v[sel].mean()) if sel.any() else None) for c, v in per_face.items()}
                 for g, sel in groups.items()},
    }


def evaluate(predict: Predictor, faces_dir: Path, masks_dir: Path | None, split: str = "test",
             limit: int | None = None, seed: int = 0, batch: int = 64,
             conditions=EVAL_CONDITIONS, threshold: float = SIDE_YAW_DEG) -> tuple[dict, dict]:
    """Run the protocol with any predictor; returns (summary, per-face NMSE arrays by condition).

    For a predictor with heads the summary also holds ``visibility`` (per condition: ROC AUC and accuracy
    at 0.5 over every point of every face) and ``face_score`` (per condition: ROC AUC of that condition's
    crops against one negative per face).
    """
    faces = load_faces(faces_dir, split, limit)
    per_face = {c: np.zeros(len(faces)) for c in conditions}
    vis_pred = {c: [] for c in conditions}
    vis_true = {c: [] for c in conditions}
    scores = {c: [] for c in conditions}
    negative_scores: list[np.ndarray] = []
    for start in Progress(range(0, len(faces), batch), desc="evaluating", unit="batch"):
        chunk = faces[start:start + batch]
        mats, crops, truth, negatives = [], [], [], []
        for j, face in enumerate(chunk):
            other = faces[(start + j + 1) % len(faces)]  # texture for the holes: another face of the split
            source = read_image(Path(faces_dir) / other.path)
            m, by_cond = occluded_crops(faces_dir, face, masks_dir, conditions, seed, source)
            mats.append(m)
            for cond in conditions:
                crops.append(by_cond[cond][2])
                truth.append(visibility_truth(face, m, by_cond[cond][1]))
            negatives.append(negative_crop(faces_dir, face, seed, source))
        out = as_outputs(predict(np.stack(crops + negatives)))
        n = len(crops)
        preds = out["landmarks"][:n].reshape(len(chunk), len(conditions), 68, 2)
        for j, face in enumerate(chunk):
            for k, cond in enumerate(conditions):
                pts = output_to_image(preds[j, k], mats[j])
                per_face[cond][start + j] = nmse_per_face(pts, face.landmarks)
        if "visibility" in out:
            vis = out["visibility"][:n].reshape(len(chunk), len(conditions), 68)
            score = out["face_score"][:n].reshape(len(chunk), len(conditions))
            true = np.stack(truth).reshape(len(chunk), len(conditions), 68)
            for k, cond in enumerate(conditions):
                vis_pred[cond].append(vis[:, k])
                vis_true[cond].append(true[:, k])
                scores[cond].append(score[:, k])
            negative_scores.append(out["face_score"][n:])
    yaws = np.array([f.yaw for f in faces])
    summary = summarise(per_face, yaws, threshold)
    if negative_scores:
        summary |= heads_summary(vis_pred, vis_true, scores, np.concatenate(negative_scores))
    return summary, per_face


def heads_summary(vis_pred: dict, vis_true: dict, scores: dict, negative_scores: np.ndarray) -> dict:
    """Visibility AUC / accuracy and face-score AUC per condition (NaN AUC, e.g. nothing hidden: None)."""
    def finite(v: float):
        return v if np.isfinite(v) else None

    visibility, face = {}, {}
    for cond in vis_pred:
        p, t = np.concatenate(vis_pred[cond]).ravel(), np.concatenate(vis_true[cond]).ravel()
        visibility[cond] = {"auc": finite(roc_auc(p, t)), "accuracy": float(((p >= VISIBLE) == (t > 0.5)).mean()),
                            "hidden_share": float(1 - t.mean())}
        pos = np.concatenate(scores[cond])
        face[cond] = finite(roc_auc(np.concatenate([pos, negative_scores]),
                                    np.r_[np.ones(len(pos)), np.zeros(len(negative_scores))]))
    return {"visibility": visibility, "face_score_auc": face, "n_negatives": int(len(negative_scores))}


def torch_predictor(model, batch: int = 8, mirror: bool = False) -> Predictor:
    """Predictor over a PyTorch landmark network (MobileNet-L, FAN*), run `batch` crops at a time;
    ``mirror``: mirror averaging (core.mirror), as LandmarkDetector does for still images.

    evaluate() hands over every condition of 64 faces at once; FAN*'s 64x64 feature maps make large
    batches memory-bound, hence small ones (docs/measurements.md).
    """
    import torch

    from core.preprocess import to_input

    @torch.no_grad()
    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        parts = [model(torch.from_numpy(x[i:i + batch])) for i in range(0, len(x), batch)]
        if not isinstance(parts[0], tuple):
            return {"landmarks": np.concatenate([p.numpy() for p in parts])}
        return {n: np.concatenate([p[k].numpy() for p in parts]) for k, n in enumerate(OUTPUTS)}

    def predict(crops: np.ndarray):
        x = to_input(crops)
        out = mirror_average(run, x) if mirror else run(x)
        return out if len(out) > 1 else out["landmarks"]  # a landmark-only network: the array, as Predictor says

    return predict


def torch_ms_per_face(model, runs: int = 50) -> float:
    """Median batch-1 forward time (ms) of a PyTorch model on this machine."""
    import torch

    x = torch.zeros(1, 3, 256, 256)
    times = []
    with torch.no_grad():
        for i in range(runs + 5):
            t = time.perf_counter()
            model(x)
            if i >= 5:
                times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def format_tables(result: dict, title: str = "MobileNet-L (ours)") -> str:
    """Tables shaped like the paper's Tables 3 (frontal) and 4 (side), plus all faces with the clean column."""
    cols = list(PAPER_CONDITIONS)
    fmt = lambda v: "  n/a" if v is None else f"{v:5.2f}"
    lines = []
    for group, paper_name in (("frontal", "Table 3"), ("side", "Table 4"), ("all", None)):
        n = result["n_faces"][group]
        head = f"{group} faces (n={n})" + (f", cf. paper {paper_name}" if paper_name else "")
        lines += ["", head, f"{'method':<24}| clean | " + " | ".join(f"{c:>8}" for c in cols)]
        row = result["nmse"][group]
        lines.append(f"{title:<24}| {fmt(row.get('clean'))} | " + " | ".join(f"{fmt(row.get(c)):>8}" for c in cols))
        if group in PAPER:
            lines.append(f"{'MobileNet-L (paper)':<24}|   -   | " + " | ".join(f"{PAPER[group][c]:8.2f}" for c in cols))
    return "\n".join(lines)


def data_arguments(ap: argparse.ArgumentParser) -> None:
    """--faces, --masks and --split, as every evaluation command takes them."""
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="face folder (default: %(default)s)")
    ap.add_argument("--masks", type=Path, default=DEFAULT_MASKS, help="Liu et al. test masks (default: %(default)s)")
    ap.add_argument("--split", default="test", help="split of splits.csv (default: %(default)s; tune on val)")


def cli() -> None:
    """Console-script entry point (pyproject.toml)."""
    main()  # returns its results for callers in Python; the exit status is 0 unless it raises


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=Path("weights/mobilenet_l.pt"))
    data_arguments(ap)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--limit", type=int, help="evaluate only the first N faces")
    ap.add_argument("--seed", type=int, default=0, help="mask selection seed (default: %(default)s)")
    ap.add_argument("--mirror", action="store_true",
                    help="average each crop's outputs with its mirror image's, as LandmarkDetector does for still "
                         "images (the paper protocol, the default, runs the network once)")
    ap.add_argument("--yaw-threshold", type=float, default=SIDE_YAW_DEG,
                    help="|yaw| in degrees from which a face counts as side (default: %(default)s)")
    args = ap.parse_args(argv)

    from .checkpoint import load_model

    model = load_model(args.checkpoint)
    if not args.masks.is_dir():
        raise SystemExit(f"{args.masks}: Liu et al. mask folder not found (--masks)")
    result, _ = evaluate(torch_predictor(model, mirror=args.mirror), args.faces, args.masks, args.split, args.limit,
                         args.seed, threshold=args.yaw_threshold)
    result["ms_per_face"] = torch_ms_per_face(model)
    print(format_tables(result))
    print(f"\nPyTorch batch-1 forward: {result['ms_per_face']:.2f} ms per face (median); "
          f"side = |yaw| >= {args.yaw_threshold:g} deg")
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
