"""Per-frame cost of our video tracker against MediaPipe's face mesh in tracking mode, on this CPU.

    python scripts/tracking_speed.py --model model.onnx --json speed.json [--frames 300] [--threads 1]
        [--face IMAGE]

Tests the claim "a tracked frame of ours costs at most what MediaPipe's face mesh costs per tracked frame".
Both follow one synthetic 640x480 video: a face photo on a smooth noise background, moved sub-pixel along
a slow sine path (+-40 px), so each really tracks (crops from the previous frame's landmarks) instead of
detecting. Ours: FaceTracker.update(BGR frame); its detection frames (tracker.ran_detection: the first and
every 30th) are counted apart. MediaPipe: the legacy ``solutions.face_mesh.FaceMesh(static_image_mode=
False)``, timed on process() including the BGR->RGB conversion; its first frame is its detection frame.

Why interleaved: on a shared, noisy CPU the load drifts over seconds. Timing one tracker after the other
would hand one of them the quiet minute; timing both on every frame, alternating which goes first, exposes
them to the same load, so their ratio holds even when the absolute times are inflated.

MediaPipe is an optional benchmark dependency, imported only here (see mediapipe_help()).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import onnxruntime

from core.data import DEFAULT_FACES, read_split
from core.files import write_json
from runtime.detector import LandmarkDetector

SIZE = (640, 480)  # video frame (width, height)
FACE_SIDE = 250  # face photo side in pixels
AMPLITUDE = 40.0  # +- pixels of the sine path
WARMUP = 10  # frames run by each tracker before timing, not counted


def mediapipe_help() -> str:
    return ("MediaPipe is an optional dependency of this benchmark, with the legacy face mesh API "
            "(mediapipe.solutions, gone from mediapipe 1.x). Install it in a separate venv, e.g.\n"
            "  pip install --no-deps mediapipe==0.10.14 'protobuf>=4.25.3,<5' absl-py attrs flatbuffers\n"
            "  pip install onnxruntime opencv-python-headless numpy matplotlib && pip install --no-deps -e .")


def load_face_mesh() -> tuple[Any, str]:
    """MediaPipe's FaceMesh in tracking mode (one face) and mediapipe's version; exits when unavailable."""
    try:
        import mediapipe as mp
    except ImportError:
        sys.exit(f"mediapipe is not installed.\n{mediapipe_help()}")
    if not hasattr(mp, "solutions"):
        sys.exit(f"mediapipe {mp.__version__} has no legacy face mesh API.\n{mediapipe_help()}")
    return mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1), mp.__version__


def default_face(faces_dir: Path = DEFAULT_FACES) -> Path:
    """The first image of the test split of faces_dir/splits.csv."""
    return faces_dir / read_split(faces_dir, "test")[0]


def video(face_path: Path, n: int, seed: int = 0) -> Iterator[np.ndarray]:
    """n BGR frames: the face (FACE_SIDE px) at the centre of a smooth noise background, the whole canvas
    shifted sub-pixel along a Lissajous sine path of +-AMPLITUDE px (one x period in 150 frames)."""
    face = cv2.imread(str(face_path))
    if face is None:
        raise FileNotFoundError(f"{face_path}: cannot read the face image")
    w, h = SIZE
    noise = np.random.default_rng(seed).uniform(60, 180, (h // 40, w // 40, 3)).astype(np.uint8)
    canvas = cv2.resize(noise, SIZE, interpolation=cv2.INTER_CUBIC)
    x0, y0 = (w - FACE_SIDE) // 2, (h - FACE_SIDE) // 2
    canvas[y0:y0 + FACE_SIDE, x0:x0 + FACE_SIDE] = cv2.resize(face, (FACE_SIDE, FACE_SIDE))
    for i in range(n):
        dx = AMPLITUDE * np.sin(2 * np.pi * i / 150)
        dy = 0.5 * AMPLITUDE * np.sin(2 * np.pi * i / 110 + 1.0)
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        yield cv2.warpAffine(canvas, shift, SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def timed(fn: Callable[[], Any]) -> tuple[tuple[float, float], Any]:
    """((wall ms, process CPU ms: all threads), fn())."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return ((time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3), out


def stats(ms: np.ndarray) -> dict[str, float | int | None]:
    """Of an (n, 2) array of (wall, CPU) ms: wall median and p90, CPU median."""
    if not len(ms):
        return {"n": 0, "median_ms": None, "p90_ms": None, "cpu_median_ms": None}
    return {"n": len(ms), "median_ms": float(np.median(ms[:, 0])), "p90_ms": float(np.percentile(ms[:, 0], 90)),
            "cpu_median_ms": float(np.median(ms[:, 1]))}


def ratio_ci(ours: np.ndarray, theirs: np.ndarray, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95% paired bootstrap interval of median(ours) / median(theirs) over frames both tracked."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ours), (n_boot, len(ours)))
    r = np.median(ours[idx], axis=1) / np.median(theirs[idx], axis=1)
    return [float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    mesh, mp_version = load_face_mesh()
    tracker = LandmarkDetector(args.model, threads=args.threads).tracker()

    def ours(frame: np.ndarray) -> tuple[tuple[float, float], list]:
        return timed(lambda: tracker.update(frame))

    def mediapipe(frame: np.ndarray) -> tuple[tuple[float, float], Any]:
        return timed(lambda: mesh.process(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))

    for frame in video(args.face, WARMUP):  # warm-up, then start both afresh (detection on frame 0)
        ours(frame)
        mediapipe(frame)
    tracker.reset()
    mediapipe(np.zeros((SIZE[1], SIZE[0], 3), np.uint8))  # no face: FaceMesh drops its track

    load_start = os.getloadavg()
    rows = []  # per frame: ours (wall, CPU) ms, ours detected, ours faces, mp ms, mp found, mp landmarks inside our box
    for i, frame in enumerate(video(args.face, args.frames)):
        if i % 2 == 0:
            (t_ours, faces), (t_mp, res) = ours(frame), mediapipe(frame)
        else:
            (t_mp, res), (t_ours, faces) = mediapipe(frame), ours(frame)
        found = bool(res.multi_face_landmarks)
        inside = False
        if found and faces:
            pts = res.multi_face_landmarks[0].landmark
            cx, cy = np.mean([p.x for p in pts]) * SIZE[0], np.mean([p.y for p in pts]) * SIZE[1]
            x0, y0, x1, y1 = faces[0].box
            inside = bool(x0 <= cx <= x1 and y0 <= cy <= y1)
        rows.append((t_ours, tracker.ran_detection, len(faces), t_mp, found, inside))
    load_end = os.getloadavg()

    t_ours = np.array([r[0] for r in rows])  # (frames, 2): wall, CPU
    detected = np.array([r[1] for r in rows])
    t_mp = np.array([r[3] for r in rows])
    both = ~detected
    both[0] = False  # MediaPipe's detection frame
    ratio = float(np.median(t_ours[both, 0]) / np.median(t_mp[both, 0]))
    cpu_ratio = float(np.median(t_ours[both, 1]) / np.median(t_mp[both, 1]))
    return {
        "claim": "median ms per tracked frame: ours <= MediaPipe face mesh (tracking mode)",
        "ours": {"tracked": stats(t_ours[~detected]), "detection": stats(t_ours[detected]),
                 "frames_with_face": sum(r[2] > 0 for r in rows)},
        "mediapipe": {"tracked": stats(t_mp[1:]), "first_frame_ms": float(t_mp[0, 0]),
                      "frames_with_landmarks": sum(r[4] for r in rows),
                      "frames_landmarks_inside_our_box": sum(r[5] for r in rows),
                      "api": "mediapipe.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1)"},
        "ratio_ours_over_mediapipe": {"median": ratio, "ci95_paired_bootstrap": ratio_ci(t_ours[both, 0], t_mp[both, 0]),
                                      "cpu_median": cpu_ratio, "frames": int(both.sum()), "claim_holds": ratio <= 1.0},
        "load_start": load_start, "load_end": load_end,
        "frames": args.frames, "warmup": WARMUP, "threads": args.threads, "model": str(args.model),
        "face": str(args.face), "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "cv2_threads": cv2.getNumThreads(),
        "versions": {"mediapipe": mp_version, "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
    }


def print_table(r: dict[str, Any]) -> None:
    def fmt(s: dict) -> str:
        if not s["n"]:
            return f"{'-':>8} {'-':>8} {'-':>8} {0:6d}"
        return f"{s['median_ms']:8.2f} {s['p90_ms']:8.2f} {s['cpu_median_ms']:8.2f} {s['n']:6d}"

    print(f"{'':34} {'median':>8} {'p90':>8} {'cpu med':>8} {'frames':>6}   (ms)")
    print(f"{'ours, tracked frame':34} {fmt(r['ours']['tracked'])}")
    print(f"{'ours, detection frame':34} {fmt(r['ours']['detection'])}")
    print(f"{'MediaPipe face mesh, tracked':34} {fmt(r['mediapipe']['tracked'])}")
    print(f"{'MediaPipe face mesh, first frame':34} {r['mediapipe']['first_frame_ms']:8.2f}")
    q = r["ratio_ours_over_mediapipe"]
    print(f"ratio ours/MediaPipe (tracked): {q['median']:.3f}  95% CI [{q['ci95_paired_bootstrap'][0]:.3f}, "
          f"{q['ci95_paired_bootstrap'][1]:.3f}] over {q['frames']} frames -> claim "
          f"{'holds' if q['claim_holds'] else 'fails'}; CPU-time ratio {q['cpu_median']:.3f}")
    print(f"faces: ours {r['ours']['frames_with_face']}/{r['frames']} frames, MediaPipe "
          f"{r['mediapipe']['frames_with_landmarks']}/{r['frames']} "
          f"({r['mediapipe']['frames_landmarks_inside_our_box']} centred inside our box)")
    print("load avg start {:.2f} {:.2f} {:.2f}, end {:.2f} {:.2f} {:.2f}; threads {}, cpus {}".format(
        *r["load_start"], *r["load_end"], r["threads"], r["cpus_usable"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="ONNX landmark model")
    p.add_argument("--frames", type=int, default=300, help="timed frames (default 300)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for ours (default 1)")
    p.add_argument("--json", type=Path, required=True, help="output JSON")
    p.add_argument("--face", type=Path, default=None,
                   help="face photo (default: the first test image of ../shared/data/faces/splits.csv)")
    args = p.parse_args()
    if args.frames < 2:
        p.error("--frames must be at least 2")
    args.face = args.face or default_face()
    result = run(args)
    print_table(result)
    write_json(args.json, result, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
