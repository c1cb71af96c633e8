"""Cost of face detection per 640x480 frame: our YuNet (ONNX Runtime, runtime.yunet) against OpenCV's
cv2.FaceDetectorYN on the same network, at each detection side, interleaved.

    python scripts/detection_speed.py --json detection_speed.json [--sides 640,480,320] [--threads 1,2]
        [--calls 40]

Tests the claim "detection costs at most 10 ms per 640x480 frame". A frame is a test face photo (250 px) on a
grey 640x480 background; each side S shrinks it to longest side S first, as detect_faces(max_side=S) does,
and the timed call is the whole detect_faces (resize, network, decoding, NMS, framing correction). OpenCV's
call is timed on the same shrunk frame, without the framing correction (microseconds). Every call of one
setting alternates the two, which goes first alternating too, so both see the same load; reported: medians,
90th percentiles, the median of the per-call ratios ours/OpenCV, and the machine's load.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from core.data import DEFAULT_FACES, read_split
from core.files import write_json
from runtime import faces

FRAME = (640, 480)
FACE_SIDE = 250
WARMUP = 3


def test_frame(faces_dir: Path) -> np.ndarray:
    paths = read_split(faces_dir, "test")
    if not paths:
        sys.exit(f"{faces_dir}: no test-split images (splits.csv)")
    frame = np.full((FRAME[1], FRAME[0], 3), 110, np.uint8)
    face = cv2.resize(cv2.imread(str(faces_dir / paths[0])), (FACE_SIDE, FACE_SIDE))
    y, x = (FRAME[1] - FACE_SIDE) // 2, (FRAME[0] - FACE_SIDE) // 2
    frame[y:y + FACE_SIDE, x:x + FACE_SIDE] = face
    return frame


def measure(frame: np.ndarray, side: int, threads: int, calls: int) -> dict:
    cv2.setNumThreads(threads)  # OpenCV's own and, through it, our YuNet's threads (runtime.faces._yunet)
    faces._local.detectors = {}  # a fresh YuNet with this thread count
    f = min(1.0, side / max(frame.shape[:2]))
    small = cv2.resize(frame, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    ours = lambda: faces.detect_faces(frame, "yunet", max_side=side)  # noqa: E731
    opencv = None
    if hasattr(cv2, "FaceDetectorYN"):
        net = cv2.FaceDetectorYN.create(str(faces.YUNET_MODEL), "", (small.shape[1], small.shape[0]),
                                        faces.YUNET_SCORE, faces.YUNET_NMS, 5000)
        opencv = lambda: net.detect(small)  # noqa: E731
    times: dict[str, list[float]] = {"ours": [], "opencv": []}
    for i in range(WARMUP + calls):
        order = [("ours", ours), ("opencv", opencv)][:: 1 if i % 2 else -1]
        for name, fn in order:
            if fn is None:
                continue
            t = time.perf_counter()
            fn()
            if i >= WARMUP:
                times[name].append(1e3 * (time.perf_counter() - t))
    row = {"side": side, "threads": threads, "faces_found": len(ours())}
    for name, ms in times.items():
        if ms:
            row[name] = {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90))}
    if times["opencv"]:
        row["ratio_ours_opencv"] = float(np.median(np.array(times["ours"]) / np.array(times["opencv"])))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="faces folder with splits.csv")
    ap.add_argument("--sides", default="640,480,320", help="detection sides (default: %(default)s)")
    ap.add_argument("--threads", default="1,2", help="thread counts (default: %(default)s)")
    ap.add_argument("--calls", type=int, default=40, help="timed calls per setting (default: %(default)s)")
    ap.add_argument("--json", type=Path, required=True, help="where to write the results")
    args = ap.parse_args(argv)
    frame = test_frame(args.faces)
    load_before = os.getloadavg()
    rows = []
    print(f"{'side':>5} {'threads':>7} {'ours ms':>8} {'p90':>6} {'OpenCV ms':>9} {'p90':>6} {'ratio':>6} faces")
    for threads in (int(t) for t in args.threads.split(",")):
        for side in (int(s) for s in args.sides.split(",")):
            row = measure(frame, side, threads, args.calls)
            rows.append(row)
            cv = row.get("opencv", {})
            print(f"{side:>5} {threads:>7} {row['ours']['median_ms']:>8.2f} {row['ours']['p90_ms']:>6.2f} "
                  f"{cv.get('median_ms', float('nan')):>9.2f} {cv.get('p90_ms', float('nan')):>6.2f} "
                  f"{row.get('ratio_ours_opencv', float('nan')):>6.2f} {row['faces_found']}")
    load_after = os.getloadavg()
    print(f"load avg start {' '.join(f'{v:.2f}' for v in load_before)}, end "
          f"{' '.join(f'{v:.2f}' for v in load_after)}; cpus {os.cpu_count()}; OpenCV {cv2.__version__}")
    import onnxruntime

    write_json(args.json, {"frame": list(FRAME), "face_side": FACE_SIDE, "calls": args.calls, "rows": rows,
                           "load_before": load_before, "load_after": load_after, "cpus": os.cpu_count(),
                           "opencv": cv2.__version__, "onnxruntime": onnxruntime.__version__,
                           "cpu": platform.processor() or platform.machine()})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
