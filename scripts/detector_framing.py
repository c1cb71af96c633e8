"""Measure how a face detector's boxes sit against dlib's (the training framing) and print the correction.

    python scripts/detector_framing.py --detector yunet [--faces ../shared/data/faces]
    python scripts/detector_framing.py --detector landmarks    # runtime.faces.LANDMARKS_TO_DLIB

--detector landmarks fits the box of the teacher's 68 points against the teacher's dlib box instead:
on the train split's labels, checked on the val split's.

Fits on 200 CACD faces (every 19th file of faces/cacd), checks on 50 Taiwanese faces not used to fit:
dlib width / detector width and height / height (geometric means) and the centre offset in detector box
widths / heights,
the largest box of each. These are the constants of runtime.faces (YUNET_TO_DLIB, HAAR_TO_DLIB).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from core.data import DEFAULT_FACES, load_labels, read_split
from core.preprocess import read_image
from runtime import faces
from runtime.faces import box_iou as iou


def landmark_pairs(faces_dir: Path, split: str) -> list[tuple[tuple, tuple]]:
    """(bounding box of the teacher's 68 points, the teacher's dlib box) for every labelled face of a split."""
    labels = load_labels(faces_dir, read_split(faces_dir, split))
    return [((*pts.min(0), *pts.max(0)), tuple(box)) for pts, box in zip(labels.landmarks, labels.boxes)]


def pairs(files: list[Path], detector: str) -> list[tuple[tuple, tuple]]:
    """(raw detector box, dlib box) for every image where both find a face."""
    out = []
    for f in files:
        image = read_image(f)
        raw, ref = faces.raw_boxes(image, detector), faces.dlib_boxes(image)
        if raw and ref:
            big = lambda bs: max(bs, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))  # noqa: E731
            out.append((big(raw), big(ref)))
    return out


def fit(found: list[tuple[tuple, tuple]]) -> dict:
    raw, ref = np.array([p[0] for p in found], float), np.array([p[1] for p in found], float)
    w, h = raw[:, 2] - raw[:, 0], raw[:, 3] - raw[:, 1]
    sx = float(np.exp(np.mean(np.log((ref[:, 2] - ref[:, 0]) / w))))
    sy = float(np.exp(np.mean(np.log((ref[:, 3] - ref[:, 1]) / h))))
    dx = float(np.median(((ref[:, 0] + ref[:, 2]) - (raw[:, 0] + raw[:, 2])) / 2 / w))
    dy = float(np.median(((ref[:, 1] + ref[:, 3]) - (raw[:, 1] + raw[:, 3])) / 2 / h))
    return {"sx": round(sx, 3), "sy": round(sy, 3), "dx": round(dx, 3), "dy": round(dy, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", choices=["yunet", "haar", "landmarks"], default="yunet")
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES)
    args = ap.parse_args()
    if args.detector == "landmarks":
        found, check = landmark_pairs(args.faces, "train"), landmark_pairs(args.faces, "val")
        correction = fit(found)
        print(f"landmarks: fitted on {len(found)} train faces: {correction}")
    else:
        fit_files = sorted((args.faces / "cacd").glob("*.jpg"))[::19][:200]
        check_files = sorted((args.faces / "taiwanese").glob("*.jpg"))[::20][:50]
        found = pairs(fit_files, args.detector)
        correction = fit(found)
        print(f"{args.detector}: fitted on {len(found)} of {len(fit_files)} CACD faces: {correction}")
        check = pairs(check_files, args.detector)
    corrected = [faces.to_dlib_framing(raw, correction) for raw, _ in check]
    for name, group, boxes in (("fit", found, [faces.to_dlib_framing(r, correction) for r, _ in found]),
                               ("check", check, corrected)):
        before = np.mean([iou(raw, ref) for raw, ref in group])
        after = np.mean([iou(c, ref) for c, (_, ref) in zip(boxes, group)])
        side = np.median([max(c[2] - c[0], c[3] - c[1]) / max(ref[2] - ref[0], ref[3] - ref[1])
                          for c, (_, ref) in zip(boxes, group)])
        print(f"{name} ({len(group)} faces): IoU with dlib's box {before:.2f} raw -> {after:.2f} corrected; "
              f"crop side {side:.2f} of dlib's (median)")


if __name__ == "__main__":
    main()
