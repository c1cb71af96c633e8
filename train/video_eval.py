"""Video: jitter, accuracy and tracking through occlusion on synthetic sequences built from real faces.

    python -m train.video_eval --model model.onnx [--split test] [--faces-per-kind 24] [--json OUT.json]
    python -m train.video_eval --model model.onnx --split val --sweep     # choose the One Euro defaults

Each sequence puts one face of the split (its whole image, feathered at the edges) onto a noise
background and moves it along a smooth trajectory with sub-pixel steps: ``steady`` (constant velocity,
1-2.5 px per frame) or ``wander`` (sinusoidal translation, scale 0.9-1.1, rotation within ±8 degrees).
Ground truth is the teacher's landmarks moved with the face. An occluder arrives once the face has been
seen for a quarter of the sequence, sweeps across it and leaves: a black ``bar``, a ``textured`` patch
(of another face) or a ``liu`` mask (30-40 % bin, holes black); ``none`` has no occluder.

Measured per mode (the tracker with smoothing on, with smoothing off, and detection on every frame
without a tracker, as before tracking existed):
  jitter        mean over points and frame pairs of |(p_t - p_t-1) - (g_t - g_t-1)|: how much the points'
                motion departs from the face's, in px and in % of the inter-pupil distance; unoccluded
                frames of steady sequences
  nmse          mean NMSE (%) over the frames where the face was returned (nmse_occluded: the occluded ones)
  tracked       share of occluded frames (the occluder covers >= 10 % of the face box) with the face
                returned and NMSE < 15 (also per occluder in the JSON); returned: with the face returned
  ms tracked / ms detection   median time of an update without / with face detection
  mirrored_share              share of the updates without detection that ran mirror averaging
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.augment import texture
from core.files import write_json
from core.metrics import interpupil_distance, nmse_per_face
from core.occlusion import pick_liu_mask
from core.preprocess import apply_matrix, read_image
from core.progress import Progress
from runtime.detector import LandmarkDetector
from runtime.faces import box_iou
from runtime.tracking import OneEuro, PointFilter

from .evaluate import data_arguments, load_faces

CANVAS = (480, 360)  # width, height
FRAMES = 60
MOTIONS = ("steady", "wander")
OCCLUDERS = ("none", "bar", "textured", "liu")
OCCLUDED_SHARE = 0.10  # an occluder covering this share of the face box makes the frame occluded
FAIL_NMSE = 15.0
# what each mode runs: the tracker with smoothing, without, and detection on every frame with no tracker
MODES = {"tracker": "tracker, smoothed", "raw": "tracker, no smoothing", "detect": "detect every frame"}
SWEEP_SHAPE = ((0.25, 2.0), (0.5, 2.0), (1.0, 2.0), (0.5, 8.0))  # (min_cutoff, beta)
SWEEP_POSE = ((4.0, 2.0), (8.0, 2.0), (8.0, 8.0), (16.0, 8.0))  # (pose_min_cutoff, pose_beta)
SWEEP_HIDDEN = (1.0, 0.3)
# --sweep's choice: the least jitter among parameters whose NMSE (which grows with lag) stays within this
# factor of the unsmoothed tracker's and which track no fewer occluded frames
SWEEP_NMSE_TOLERANCE = 1.02


@dataclass
class Sequence:
    name: str
    motion: str
    occluder: str
    frames: list  # BGR uint8 canvases
    truth: np.ndarray  # (T, 68, 2) image pixels
    occluded: np.ndarray  # (T,) bool


def similarity(scale: float, angle_deg: float, centre_from, centre_to) -> np.ndarray:
    m = cv2.getRotationMatrix2D(tuple(float(v) for v in centre_from), angle_deg, scale)
    m[:, 2] += np.asarray(centre_to, float) - np.asarray(centre_from, float)
    return m


def trajectory(motion: str, rng: np.random.Generator, frames: int) -> list[tuple[float, float, float, float]]:
    """(dx, dy, scale, angle) per frame, relative to the canvas centre."""
    if motion == "steady":
        speed, heading = rng.uniform(1.0, 2.5), rng.uniform(0, 2 * np.pi)
        start = -speed * (frames - 1) / 2
        return [((start + speed * t) * np.cos(heading), (start + speed * t) * np.sin(heading), 1.0, 0.0)
                for t in range(frames)]
    periods, phases = rng.uniform(40, 90, 4), rng.uniform(0, 2 * np.pi, 4)
    return [(40 * np.sin(2 * np.pi * t / periods[0] + phases[0]), 25 * np.sin(2 * np.pi * t / periods[1] + phases[1]),
             1 + 0.1 * np.sin(2 * np.pi * t / periods[2] + phases[2]), 8 * np.sin(2 * np.pi * t / periods[3] + phases[3]))
            for t in range(frames)]


def occluder_patch(kind: str, side: float, rng: np.random.Generator, masks_dir: Path, key: str,
                   source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(BGR patch, alpha 0/1) of an occluder for a face box of ``side`` px."""
    if kind == "bar":
        w, h = int(0.35 * side), int(1.3 * side)
        return np.zeros((h, w, 3), np.uint8), np.ones((h, w), np.float32)
    if kind == "textured":
        w, h = int(0.5 * side), int(0.6 * side)
        return cv2.resize(texture(rng, 128, source), (w, h)), np.ones((h, w), np.float32)
    _, mask = pick_liu_mask(masks_dir, "30-40", key)  # 1 = kept
    n = int(side)
    return np.zeros((n, n, 3), np.uint8), cv2.resize(1 - mask, (n, n), interpolation=cv2.INTER_NEAREST)


def make_sequence(image: np.ndarray, landmarks: np.ndarray, box: np.ndarray, motion: str, occluder: str,
                  rng: np.random.Generator, masks_dir: Path, key: str, source: np.ndarray,
                  frames: int = FRAMES) -> Sequence:
    """One synthetic sequence of a face (see the module docstring)."""
    h, w = image.shape[:2]
    alpha = np.zeros((h, w), np.float32)
    cv2.ellipse(alpha, (w // 2, h // 2), (int(w * 0.46), int(h * 0.46)), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(w, h) * 0.04)
    background = cv2.resize(texture(rng, 128), CANVAS, interpolation=cv2.INTER_CUBIC)
    centre = np.array(CANVAS, float) / 2
    face_centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    side = float(max(box[2] - box[0], box[3] - box[1]))
    patch, patch_alpha = (None, None) if occluder == "none" else occluder_patch(occluder, side, rng, masks_dir, key,
                                                                                source)
    canvases, truth, occluded = [], [], []
    for t, (dx, dy, scale, angle) in enumerate(trajectory(motion, rng, frames)):
        m = similarity(scale, angle, face_centre, centre + (dx, dy))
        face = cv2.warpAffine(image, m, CANVAS, flags=cv2.INTER_LINEAR)
        a = cv2.warpAffine(alpha, m, CANVAS, flags=cv2.INTER_LINEAR)[:, :, None]
        frame = (face * a + background * (1 - a)).astype(np.uint8)
        pts = apply_matrix(landmarks, m)
        cover = 0.0
        if patch is not None:
            # the occluder sweeps left to right across the face between 1/4 and 3/4 of the sequence
            progress = (t - frames / 4) / (frames / 2)
            fx, fy = apply_matrix(face_centre[None], m)[0]
            half = side * scale / 2
            ph, pw = patch_alpha.shape
            x0 = int(round(fx - half - pw + progress * (2 * half + pw)))
            y0 = int(round(fy - ph / 2))
            cover = paste(frame, patch, patch_alpha, x0, y0, (fx - half, fy - half, fx + half, fy + half))
        canvases.append(frame)
        truth.append(pts)
        occluded.append(cover >= OCCLUDED_SHARE)
    return Sequence(f"{key}:{motion}:{occluder}", motion, occluder, canvases, np.array(truth), np.array(occluded))


def paste(frame: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x0: int, y0: int, face_box) -> float:
    """Paste an occluder in place (clipped to the frame); returns the share of the face box it covers."""
    H, W = frame.shape[:2]
    ph, pw = alpha.shape
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + pw, W), min(y0 + ph, H)
    if fx1 <= fx0 or fy1 <= fy0:
        return 0.0
    a = alpha[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0, None]
    region = frame[fy0:fy1, fx0:fx1]
    frame[fy0:fy1, fx0:fx1] = (patch[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] * a + region * (1 - a)).astype(np.uint8)
    covered = np.zeros((H, W), bool)
    covered[fy0:fy1, fx0:fx1] = a[:, :, 0] > 0.5
    bx0, by0, bx1, by1 = (int(round(v)) for v in face_box)
    box_region = covered[max(by0, 0):max(by1, 0), max(bx0, 0):max(bx1, 0)]
    return float(box_region.sum() / max((bx1 - bx0) * (by1 - by0), 1))


def build_sequences(faces_dir: Path, masks_dir: Path, split: str, per_kind: int, seed: int = 0) -> list[Sequence]:
    faces = load_faces(faces_dir, split)
    picked = faces[::max(1, len(faces) // per_kind)][:per_kind]
    out = []
    for i, face in enumerate(Progress(picked, desc="building sequences", unit="face")):
        image = read_image(Path(faces_dir) / face.path)
        source = read_image(Path(faces_dir) / faces[(faces.index(face) + 1) % len(faces)].path)
        for occluder in OCCLUDERS:
            rng = np.random.default_rng([seed, i, OCCLUDERS.index(occluder)])
            out.append(make_sequence(image, face.landmarks, face.box, MOTIONS[i % 2], occluder, rng, masks_dir,
                                     face.path, source))
    return out


@dataclass
class Track:
    """What a mode returned for one sequence: per frame the face's landmarks (NaN = none), and timings."""
    points: np.ndarray  # (T, 68, 2)
    visibility: np.ndarray  # (T, 68), 1 when the model has no heads
    seconds: np.ndarray  # (T,)
    detection: np.ndarray  # (T,) bool: the frame ran the face detector
    mirrored: np.ndarray  # (T,) bool: the frame followed its track with mirror averaging


def pick(faces, truth: np.ndarray):
    """The returned face that is the sequence's face (best IoU with the truth's box), or None."""
    gt = (*truth.min(0), *truth.max(0))
    overlap = [box_iou((*f.landmarks.min(0), *f.landmarks.max(0)), gt) for f in faces]
    return faces[int(np.argmax(overlap))] if overlap and max(overlap) > 0.3 else None


def run_mode(det: LandmarkDetector, seq: Sequence, mode: str, smoothing: OneEuro, mirror: bool = False,
             mirror_hidden: bool = False, complete_hidden: bool = True) -> Track:
    tracker = None if mode == "detect" else det.tracker(
        smoothing=smoothing if mode == "tracker" else None, mirror=mirror, mirror_hidden=mirror_hidden,
        complete_hidden=complete_hidden)
    T = len(seq.frames)
    pts, vis = np.full((T, 68, 2), np.nan), np.ones((T, 68))
    secs, detection, mirrored = np.zeros(T), np.zeros(T, bool), np.zeros(T, bool)
    for t, frame in enumerate(seq.frames):
        t0 = time.perf_counter()
        faces = det.detect(frame, mirror=mirror) if tracker is None else tracker.update(frame)
        secs[t] = time.perf_counter() - t0
        detection[t] = tracker is None or tracker.ran_detection
        mirrored[t] = mirror if tracker is None else tracker.mirrored > 0
        face = pick(faces, seq.truth[t])
        if face is not None:
            pts[t] = face.landmarks
            if face.visibility is not None:
                vis[t] = face.visibility
    return Track(pts, vis, secs, detection, mirrored)


def smooth(raw: Track, params: OneEuro, fps: float = 30.0) -> np.ndarray:
    """The smoothed points of a raw (unsmoothed tracker) run, as the tracker's own filter makes them: the
    filter only shapes the output, so this is exact (a new filter after a frame without the face)."""
    out, filt = np.full_like(raw.points, np.nan), None
    for t, p in enumerate(raw.points):
        if np.isnan(p).any():
            filt = None
            continue
        filt = filt or PointFilter(params)
        out[t] = filt(p, t / fps, raw.visibility[t])
    return out


def metrics(seqs: list[Sequence], points: list[np.ndarray], tracks: list[Track] | None = None) -> dict:
    jit_px, jit_pct, errors, occluded_errors, tracked, returned = [], [], [], [], [], []
    by_occluder: dict = {}
    for seq, p in zip(seqs, points):
        e = np.array([nmse_per_face(p[t], seq.truth[t]) if not np.isnan(p[t]).any() else np.nan
                      for t in range(len(p))])
        errors += list(e[~np.isnan(e)])
        occluded_errors += list(e[seq.occluded & ~np.isnan(e)])
        ok = list(np.nan_to_num(e[seq.occluded], nan=np.inf) < FAIL_NMSE)
        tracked += ok
        by_occluder.setdefault(seq.occluder, []).extend(ok)
        returned += list(~np.isnan(e[seq.occluded]))
        if seq.motion == "steady":
            ok = ~np.isnan(e) & ~seq.occluded
            pair = ok[1:] & ok[:-1]
            dev = np.linalg.norm(np.diff(p, axis=0) - np.diff(seq.truth, axis=0), axis=-1).mean(-1)[pair]
            jit_px += list(dev)
            jit_pct += list(dev / interpupil_distance(seq.truth[1:][pair]) * 100)
    out = {"jitter_px": float(np.mean(jit_px)) if jit_px else None,
           "jitter_pct_ipd": float(np.mean(jit_pct)) if jit_pct else None,
           "nmse": float(np.mean(errors)) if errors else None,
           "nmse_occluded": float(np.mean(occluded_errors)) if occluded_errors else None,
           "occluded_frames": len(tracked),
           "occluded_tracked": float(np.mean(tracked)) if tracked else None,
           "occluded_returned": float(np.mean(returned)) if returned else None}
    if tracks is not None:
        secs = np.concatenate([t.seconds for t in tracks])
        det = np.concatenate([t.detection for t in tracks])
        out["ms_tracked"] = float(np.median(secs[~det]) * 1000) if (~det).any() else None
        out["ms_detection"] = float(np.median(secs[det]) * 1000) if det.any() else None
        out["detection_share"] = float(det.mean())
        mirrored = np.concatenate([t.mirrored for t in tracks])[~det]
        out["mirrored_share"] = float(mirrored.mean()) if mirrored.size else None
    out["occluded_tracked_by_occluder"] = {k: float(np.mean(v)) for k, v in by_occluder.items() if v}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m train.video_eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="ONNX model or TensorRT engine")
    data_arguments(ap)
    ap.add_argument("--faces-per-kind", type=int, default=24,
                    help=f"faces; each makes one {FRAMES}-frame sequence per occluder {OCCLUDERS} (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default: %(default)s)")
    ap.add_argument("--sweep", action="store_true",
                    help="One Euro parameters on the unsmoothed tracker's output instead of the modes")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="modes to measure, comma-separated, of %(default)s ('detect' is the slow one)")
    ap.add_argument("--mirror", action="store_true",
                    help="mirror averaging on every landmark pass (core.mirror): twice the network's cost per frame; "
                         "off by default, as in the tracker")
    ap.add_argument("--mirror-hidden", action="store_true",
                    help="mirror averaging only on frames whose track had a hidden point (FaceTracker mirror_hidden)")
    ap.add_argument("--no-complete-hidden", dest="complete_hidden", action="store_false",
                    help="output the model's guesses for hidden points instead of blending them with the track's "
                         "remembered shape (FaceTracker complete_hidden)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    chosen = [m for m in args.modes.split(",") if m]
    if not chosen or set(chosen) - set(MODES):
        ap.error(f"--modes {args.modes!r}: choose from {','.join(MODES)}")
    if not args.masks.is_dir():
        sys.exit(f"error: {args.masks}: Liu et al. mask folder not found (--masks)")
    det = LandmarkDetector(args.model, **({"threads": args.threads} if args.model.suffix == ".onnx" else {}))
    seqs = build_sequences(args.faces, args.masks, args.split, args.faces_per_kind)
    modes = ("raw",) if args.sweep else chosen
    runs = {m: [run_mode(det, s, m, OneEuro(), args.mirror, args.mirror_hidden, args.complete_hidden)
                for s in Progress(seqs, desc=m, unit="seq")] for m in modes}
    if args.sweep:
        results = {}
        for mc, beta in SWEEP_SHAPE:
            for pose_mc, pose_beta in SWEEP_POSE:
                for hidden in SWEEP_HIDDEN:
                    params = OneEuro(mc, beta, pose_mc, pose_beta, hidden_cutoff_factor=hidden)
                    results[f"shape {mc}/{beta} pose {pose_mc}/{pose_beta} hidden {hidden}"] = metrics(
                        seqs, [smooth(r, params) for r in runs["raw"]])
        results["no smoothing"] = raw = metrics(seqs, [r.points for r in runs["raw"]])
        ok = {k: r for k, r in results.items() if r["nmse"] <= raw["nmse"] * SWEEP_NMSE_TOLERANCE
              and r["occluded_tracked"] >= raw["occluded_tracked"]}
        best = min(ok, key=lambda k: ok[k]["jitter_px"])
        print(f"least jitter with NMSE within {SWEEP_NMSE_TOLERANCE}x of no smoothing and no fewer occluded frames "
              f"tracked: {best}")
    else:
        results = {MODES[m]: metrics(seqs, [r.points for r in rs], rs) for m, rs in runs.items()}
    keys = [k for k, v in next(iter(results.values())).items() if not isinstance(v, dict)]
    print(f"\n{args.model} on {len(seqs)} {args.split} sequences of {FRAMES} frames "
          f"({sum(int(s.occluded.sum()) for s in seqs)} occluded frames)")
    print("| mode | " + " | ".join(keys) + " |\n" + "|---" * (len(keys) + 1) + "|")
    for name, row in results.items():
        print(f"| {name} | " + " | ".join("n/a" if row[k] is None else f"{row[k]:.3f}" for k in keys) + " |")
    doc = {"model": str(args.model), "split": args.split, "sequences": len(seqs), "frames": FRAMES,
           "mirror": args.mirror, "mirror_hidden": args.mirror_hidden, "complete_hidden": args.complete_hidden,
           "defaults": OneEuro().__dict__, "results": results}
    if args.json:
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    return doc


if __name__ == "__main__":
    main()
