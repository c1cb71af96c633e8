"""End to end on still images: the face found by our own pipeline on the occluded image, no oracle box.

    python -m train.end_to_end --model model.onnx [--split test] [--limit N] [--json OUT.json]
    python -m train.end_to_end --model model.onnx --split val --sweep    # choose detect()'s thresholds

For every face of the split and every condition (clean, Liu masks by coverage, the centre square, the
textured 30-40 % masks), the condition's occluder is laid onto the whole image (core.samples
.occluded_image: the same mask, at the same place, as the paper's protocol puts on the crop). Each
pipeline must then find the face itself. A face counts as found when a returned face's box has IoU > 0.3
with the teacher's box on the clean image; it fails when it is missed or its NMSE exceeds 15 %.

Pipelines, each adding one step (LandmarkDetector.detect's arguments):
  oracle      the teacher's box from the clean image (the paper's protocol), for reference
  detector    YuNet at its own threshold, landmarks from its box
  +refine     ... predicted again from the box the landmarks imply
  +confirm    YuNet at a low threshold, candidates kept by the model's face score (models with heads)
  detect      both: LandmarkDetector.detect() as shipped
"other" counts the returned faces besides the matched one, per image: the images hold one face each, so
these are false detections (or, rarely, a second real face).

--frame WxH --face-size PX puts each (occluded) photo into a larger grey frame, scaled so the face box is PX
wide: what a camera frame looks like, for measuring the detection side (--max-side) against face size.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from core.files import write_json
from core.metrics import nmse_per_face
from core.occlusion import EVAL_CONDITIONS
from core.preprocess import crop_matrix, read_image
from core.progress import Progress
from core.samples import occluded_image, occluder
from runtime.detector import CANDIDATE_SCORE, FACE_SCORE_MIN, LandmarkDetector
from runtime.faces import DETECT_MAX_SIDE, box_iou

from .evaluate import data_arguments, load_faces

FOUND_IOU = 0.3  # a returned box overlapping the teacher's this much is that face
FAIL_NMSE = 15.0  # NMSE (%) from which a found face counts as failed

# name: LandmarkDetector.detect arguments (None: the oracle box)
PIPELINES: dict[str, dict | None] = {
    "oracle": None,
    "detector": {"candidate_score": None, "refine": False},
    "+refine": {"candidate_score": None, "refine": True},
    "+confirm": {"refine": False},
    "detect": {},
}
SWEEP_CANDIDATE = (0.15, 0.3, 0.45)
SWEEP_FACE_SCORE = (0.3, 0.5, 0.8)


FRAME_GREY = 114  # the frame around a placed photo


def place(image: np.ndarray, box, frame: tuple[int, int], face_size: float) -> tuple[np.ndarray, np.ndarray]:
    """The image scaled so ``box`` is ``face_size`` px wide, the box centred in a grey frame (W, H): the frame
    and the 2x3 matrix from image to frame pixels."""
    s = face_size / (box[2] - box[0])
    m = np.float32([[s, 0, frame[0] / 2 - s * (box[0] + box[2]) / 2],
                    [0, s, frame[1] / 2 - s * (box[1] + box[3]) / 2]])
    out = cv2.warpAffine(image, m, frame, flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                         borderValue=(FRAME_GREY,) * 3)
    return out, m


def run_pipelines(det: LandmarkDetector, faces_dir: Path, masks_dir: Path, split: str, limit: int | None,
                  pipelines: dict[str, dict | None], conditions=EVAL_CONDITIONS, seed: int = 0,
                  frame: tuple[int, int] | None = None, face_size: float = 100.0) -> dict:
    """Per pipeline and condition: per-face NMSE (NaN = missed), other faces per image, seconds per image.
    With ``frame`` each photo is placed in a grey frame of that size (W, H), its face ``face_size`` px wide."""
    faces = load_faces(faces_dir, split, limit)
    res = {p: {c: {"nmse": [], "other": [], "seconds": []} for c in conditions} for p in pipelines}
    for i, face in enumerate(Progress(faces, desc=f"end to end ({split})", unit="face")):
        image = read_image(Path(faces_dir) / face.path)
        source = read_image(Path(faces_dir) / faces[(i + 1) % len(faces)].path)  # texture: another face
        matrix = crop_matrix(face.box)
        for cond in conditions:
            _, mask, fill = occluder(face, cond, masks_dir, seed, source)
            occluded = occluded_image(image, matrix, mask, fill)
            box, truth = tuple(face.box), face.landmarks
            if frame is not None:
                occluded, m = place(occluded, box, frame, face_size)
                box = tuple((m[:, :2] @ np.reshape(box, (2, 2)).T + m[:, 2:]).T.ravel())
                truth = truth @ m[:, :2].T + m[:, 2]
            for name, options in pipelines.items():
                t0 = time.perf_counter()
                found = [det.predict_face(occluded, box)] if options is None else det.detect(occluded, **options)
                cell = res[name][cond]
                cell["seconds"].append(time.perf_counter() - t0)
                overlap = [box_iou(f.box, box) for f in found]
                hit = int(np.argmax(overlap)) if overlap and max(overlap) > FOUND_IOU else None
                cell["nmse"].append(np.nan if hit is None else float(nmse_per_face(found[hit].landmarks, truth)))
                cell["other"].append(len(found) - (hit is not None))
    return res


def summarise(res: dict) -> dict:
    out = {}
    for name, by_cond in res.items():
        out[name] = {}
        for cond, cell in by_cond.items():
            e = np.array(cell["nmse"])
            found = ~np.isnan(e)
            out[name][cond] = {
                "faces": int(len(e)),
                "found": float(found.mean()),
                "failure": float((~found | (np.nan_to_num(e, nan=np.inf) > FAIL_NMSE)).mean()),
                "nmse_found": float(e[found].mean()) if found.any() else None,
                "other_per_image": float(np.mean(cell["other"])),
                "ms_per_image": float(np.median(cell["seconds"]) * 1000),
            }
    return out


def format_table(summary: dict, key: str, fmt: str = "{:.2f}") -> str:
    conds = list(next(iter(summary.values())))
    lines = [f"| {key} | " + " | ".join(conds) + " |", "|---" * (len(conds) + 1) + "|"]
    for name, by_cond in summary.items():
        cells = [("n/a" if by_cond[c][key] is None else fmt.format(by_cond[c][key])) for c in conds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_frame(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 640x480, got {text!r}") from None
    if w < 64 or h < 64:
        raise argparse.ArgumentTypeError(f"frame {text} is smaller than 64x64")
    return w, h


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m train.end_to_end", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="ONNX model or TensorRT engine")
    data_arguments(ap)
    ap.add_argument("--limit", type=int, help="only the first N faces")
    ap.add_argument("--seed", type=int, default=0, help="mask selection seed, as train.evaluate (default: 0)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default: %(default)s)")
    ap.add_argument("--sweep", action="store_true",
                    help=f"instead of the pipelines: detect() with candidate scores {SWEEP_CANDIDATE} x face "
                         f"scores {SWEEP_FACE_SCORE} (today {CANDIDATE_SCORE}, {FACE_SCORE_MIN})")
    ap.add_argument("--pipelines", nargs="+", choices=list(PIPELINES), default=list(PIPELINES),
                    help="which pipelines to run (default: all)")
    ap.add_argument("--max-side", type=int, default=DETECT_MAX_SIDE,
                    help="longest side images are shrunk to for the face detector (default: %(default)s)")
    ap.add_argument("--frame", type=parse_frame, metavar="WxH",
                    help="place each photo into a grey frame of this size (e.g. 640x480), its face --face-size wide")
    ap.add_argument("--face-size", type=float, default=100.0, metavar="PX",
                    help="with --frame: the face box width in the frame (default: %(default)s)")
    ap.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True,
                    help="mirror averaging on every landmark pass, LandmarkDetector's default for still images "
                         "(default: on)")
    ap.add_argument("--json", type=Path, help="write the summary here")
    args = ap.parse_args(argv)
    if not args.masks.is_dir():
        sys.exit(f"error: {args.masks}: Liu et al. mask folder not found (--masks)")
    det = LandmarkDetector(args.model, mirror=args.mirror,
                           **({"threads": args.threads} if args.model.suffix == ".onnx" else {}))
    pipelines = {k: PIPELINES[k] for k in args.pipelines}
    if args.sweep:
        pipelines = {f"candidates {c} face score {s}": {"candidate_score": c, "min_face_score": s}
                     for c in SWEEP_CANDIDATE for s in SWEEP_FACE_SCORE}
    pipelines = {k: v if v is None else {**v, "max_side": args.max_side} for k, v in pipelines.items()}
    if not det.has_heads:  # nothing to confirm with: +confirm would be +refine's twin
        pipelines = {k: v for k, v in pipelines.items() if k not in ("+confirm",)}
        if args.sweep:
            sys.exit(f"error: {args.model}: --sweep needs a model with a face score")
    summary = summarise(run_pipelines(det, args.faces, args.masks, args.split, args.limit, pipelines,
                                      seed=args.seed, frame=args.frame, face_size=args.face_size))
    print(f"\n{args.model} on {args.split}, {next(iter(summary.values()))['clean']['faces']} faces")
    for key, fmt in (("failure", "{:.3f}"), ("found", "{:.3f}"), ("nmse_found", "{:.2f}"),
                     ("other_per_image", "{:.3f}"), ("ms_per_image", "{:.1f}")):
        print(f"\n{format_table(summary, key, fmt)}")
    doc = {"model": str(args.model), "split": args.split, "found_iou": FOUND_IOU, "fail_nmse": FAIL_NMSE,
           "candidate_score": CANDIDATE_SCORE, "face_score_min": FACE_SCORE_MIN, "max_side": args.max_side,
           "mirror": args.mirror, "frame": args.frame, "face_size": args.face_size if args.frame else None,
           "pipelines": summary}
    if args.json:
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    return doc


if __name__ == "__main__":
    main()
