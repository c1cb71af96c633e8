"""Teacher labels: dlib's 68-point predictor on the unoccluded images of a face folder.

    python -m train.annotate --faces ../shared/data/faces [--split test]

Writes ``labels.json`` (box + 68 points per image) and ``report.txt`` (images that
could not be labelled, with the reason) into the folder's cache directory.
Re-runs only label images that are new or whose bytes changed.

Each entry also holds ``mirrored``: the predictor's points on the horizontally flipped image
(same box, flipped), flipped back and renamed. Where the teacher is consistent the two agree;
how far apart they are is a measure of the label's quality (training may average, weight or drop).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from core.data import DEFAULT_FACES, labels_path, read_split
from core.files import atomic_write_bytes, sha1_file
from core.preprocess import ImageError, read_image
from core.progress import Progress
from core.schema import MIRROR
from runtime.faces import dlib_boxes, dlib_shape_predictor_path

TEACHER = "dlib get_frontal_face_detector + shape_predictor_68_face_landmarks"


class Teacher:
    """dlib HOG face detector (runtime.faces.dlib_boxes) + 68-point shape predictor; picks the largest face."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as e:
            raise RuntimeError("the teacher needs dlib: `pip install dlib-bin`") from e
        self.predictor = dlib.shape_predictor(str(dlib_shape_predictor_path()))

    def landmarks(self, image_bgr: np.ndarray, box) -> np.ndarray:
        import dlib

        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        shape = self.predictor(rgb, dlib.rectangle(*(int(round(v)) for v in box)))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)

    def mirrored(self, image_bgr: np.ndarray, box) -> np.ndarray:
        """The prediction on the flipped image (box flipped too), mapped back and renamed."""
        w = image_bgr.shape[1]
        x0, y0, x1, y1 = box
        pts = self.landmarks(np.ascontiguousarray(image_bgr[:, ::-1]), (w - 1 - x1, y0, w - 1 - x0, y1))
        pts[:, 0] = w - 1 - pts[:, 0]
        return pts[MIRROR]

    def label(self, image_bgr: np.ndarray):
        """(box, landmarks) of the largest face, or None when there is no face."""
        boxes = dlib_boxes(image_bgr)
        if not boxes:
            return None
        box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        return box, self.landmarks(image_bgr, box)


_teacher: Teacher | None = None


def _init_worker() -> None:
    global _teacher
    _teacher = Teacher()


def _label_one(job: tuple[str, str, str, dict | None]) -> tuple[str, str, dict]:
    """Label one image; ``known`` (an entry whose bytes are unchanged) only gets its mirrored points."""
    rel, full, sha, known = job
    try:
        image = read_image(full)
    except ImageError as e:
        return rel, "failed", {"sha1": sha, "reason": str(e)}
    if known is None:
        result = _teacher.label(image)
        if result is None:
            return rel, "failed", {"sha1": sha, "reason": "no face found by the teacher detector"}
        box, pts = result
        known = {"sha1": sha, "size": [int(image.shape[1]), int(image.shape[0])],
                 "box": [float(v) for v in box], "landmarks": np.round(pts, 2).tolist()}
    return rel, "ok", {**known, "mirrored": np.round(_teacher.mirrored(image, known["box"]), 2).tolist()}


def annotate(faces_dir: Path, split: str | None = None, workers: int = 2, out: Path | None = None) -> Path:
    """Label every image of ``split`` (all when None) that is not labelled yet; return the labels file."""
    faces_dir = Path(faces_dir)
    out = Path(out) if out else labels_path(faces_dir)
    doc = json.loads(out.read_text()) if out.exists() else {}
    entries, failed = doc.get("entries", {}), doc.get("failed", {})
    paths = read_split(faces_dir, split)
    jobs = []
    for rel in paths:
        sha = sha1_file(faces_dir / rel)
        known = entries.get(rel) or failed.get(rel)
        if known is None or known["sha1"] != sha:
            jobs.append((rel, str(faces_dir / rel), sha, None))
        elif rel in entries and "mirrored" not in known:  # labelled before mirrored points existed
            jobs.append((rel, str(faces_dir / rel), sha, known))
    print(f"{faces_dir}: {len(paths)} images ({split or 'all'}), {len(paths) - len(jobs)} already labelled, "
          f"{len(jobs)} to label", file=sys.stderr)
    if jobs:
        with Pool(max(1, workers), initializer=_init_worker) as pool:
            for rel, status, rec in Progress(pool.imap_unordered(_label_one, jobs, chunksize=8),
                                         total=len(jobs), desc="teacher labels", unit="img"):
                entries.pop(rel, None)
                failed.pop(rel, None)
                (entries if status == "ok" else failed)[rel] = rec
        doc = {"faces_dir": str(faces_dir.resolve()), "teacher": TEACHER,
               "entries": dict(sorted(entries.items())), "failed": dict(sorted(failed.items()))}
        atomic_write_bytes(out, json.dumps(doc).encode())
    report = out.with_name("report.txt")
    lines = [f"{rel}\t{rec['reason']}" for rel, rec in sorted(failed.items())]
    atomic_write_bytes(report, ("\n".join(lines) + "\n" if lines else "").encode())
    n_failed_here = sum(1 for p in paths if p in failed)
    print(f"labels: {out}\nnot labelled in this selection: {n_failed_here} (listed in {report})", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="folder of face images (default: %(default)s)")
    ap.add_argument("--split", default=None, help="only this split of splits.csv (train/val/test); default all")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=None, help="labels file (default: the folder's cache dir)")
    args = ap.parse_args(argv)
    annotate(args.faces, args.split, args.workers, args.out)


if __name__ == "__main__":
    main()
