"""Teacher labels: dlib's 68-point predictor on the unoccluded images of a face folder.

    python -m train.annotate --faces ../shared/data/faces [--split test]

Writes ``labels.json`` (box + 68 points per image) and ``report.txt`` (images that
could not be labelled, with the reason) into the folder's cache directory.
Re-runs only label images that are new or whose bytes changed. Progress is saved every
PROGRESS_EVERY images to ``labels.json.partial``, so a killed run continues where it stopped and
ends with the same labels file as an uninterrupted one; ``labels.json`` is only ever written whole.

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
from core.files import atomic_write_bytes, remove_temp_leftovers, sha1_file
from core.preprocess import ImageError, read_image
from core.progress import Progress
from core.schema import MIRROR
from runtime.faces import dlib_boxes, dlib_shape_predictor_path

TEACHER = "dlib get_frontal_face_detector + shape_predictor_68_face_landmarks"
PROGRESS_EVERY = 1000  # images labelled between progress saves: what a killed run can lose (~10-20 s of work)


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


def _labels_doc(header: dict, records: dict[str, tuple[str, dict]]) -> bytes:
    """The labels file: ``header`` plus the records (path -> (status, record)), sorted by path."""
    ok = {rel: rec for rel, (status, rec) in sorted(records.items()) if status == "ok"}
    failed = {rel: rec for rel, (status, rec) in sorted(records.items()) if status == "failed"}
    return json.dumps({**header, "entries": ok, "failed": failed}).encode()


def _records(doc: dict) -> dict[str, tuple[str, dict]]:
    """A labels (or progress) document's records, path -> ("ok" | "failed", record)."""
    return {**{rel: ("failed", rec) for rel, rec in doc.get("failed", {}).items()},
            **{rel: ("ok", rec) for rel, rec in doc.get("entries", {}).items()}}


def _read_progress(path: Path, header: dict) -> dict[str, tuple[str, dict]]:
    """The records an interrupted run of the same folder and teacher saved in ``path``; {} when none."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or any(doc.get(k) != v for k, v in header.items()):
        print(f"{path}: ignored, not the labelling progress of {header['faces_dir']} with this teacher",
              file=sys.stderr)
        return {}
    return _records(doc)


def annotate(faces_dir: Path, split: str | None = None, workers: int = 2, out: Path | None = None) -> Path:
    """Label every image of ``split`` (all when None) that is not labelled yet; return the labels file."""
    faces_dir = Path(faces_dir)
    out = Path(out) if out else labels_path(faces_dir)
    partial, report = out.with_name(f"{out.name}.partial"), out.with_name("report.txt")
    removed = remove_temp_leftovers(out.parent, (out.name, partial.name, report.name))
    if removed:
        print(f"{out.parent}: removed {len(removed)} temp file(s) a killed write left: "
              f"{', '.join(p.name for p in removed)}", file=sys.stderr)
    header = {"faces_dir": str(faces_dir.resolve()), "teacher": TEACHER}
    records = _records(json.loads(out.read_text())) if out.exists() else {}
    new = _read_progress(partial, header)  # labelled since the labels file was last written
    records.update(new)
    paths = read_split(faces_dir, split)
    jobs = []
    for rel in paths:
        sha = sha1_file(faces_dir / rel)
        status, known = records.get(rel, (None, None))
        if known is None or known["sha1"] != sha:
            jobs.append((rel, str(faces_dir / rel), sha, None))
        elif status == "ok" and "mirrored" not in known:  # labelled before mirrored points existed
            jobs.append((rel, str(faces_dir / rel), sha, known))
    resumed = f" ({len(new)} of them saved by an interrupted run)" if new else ""
    print(f"{faces_dir}: {len(paths)} images ({split or 'all'}), {len(paths) - len(jobs)} already labelled"
          f"{resumed}, {len(jobs)} to label", file=sys.stderr)
    if jobs:
        with Pool(max(1, workers), initializer=_init_worker) as pool:
            results = pool.imap_unordered(_label_one, jobs, chunksize=8)
            for done, (rel, status, rec) in enumerate(Progress(results, total=len(jobs), desc="teacher labels",
                                                               unit="img"), 1):
                records[rel] = new[rel] = (status, rec)
                if done % PROGRESS_EVERY == 0:
                    atomic_write_bytes(partial, _labels_doc(header, new))
            # let the workers finish on their own: leaving the block terminates them by signal, which hung a
            # fresh-clone CI run (a worker stayed blocked on the task queue's lock while the pool joined it)
            pool.close()
            pool.join()
    if new:
        atomic_write_bytes(out, _labels_doc(header, records))
    partial.unlink(missing_ok=True)
    failed = {rel: rec for rel, (status, rec) in sorted(records.items()) if status == "failed"}
    lines = [f"{rel}\t{rec['reason']}" for rel, rec in failed.items()]
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
