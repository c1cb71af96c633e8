"""Find faces, predict their 68 landmarks and write annotated images or video, plus landmarks.json.

    python -m runtime.predict --model model.onnx --input photo.jpg --out out/
    python -m runtime.predict --model model.onnx --input photos/ --out out/        # every image of a folder
    python -m runtime.predict --model model.engine --input clip.mp4 --out out/     # -> out/clip.mp4
    python -m runtime.predict --model model.engine --input 0 --out out/ --max-frames 300   # camera 0
    python -m runtime.predict --model model.engine --out out/ --max-frames 300 --input \\
        "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! \\
         nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1"

--input is an image, a folder of images (not recursive), a video file, a camera index (digits) or a
GStreamer pipeline (any string with '!', opened with cv2.CAP_GSTREAMER and ending in appsink; the
example above is a Jetson CSI camera). Images are written to OUT under their own names; a video,
camera or pipeline becomes OUT/<name>.mp4. OUT/landmarks.json holds every face's box and 68 points
(image pixels). Unreadable images are reported and skipped; images or frames without a face are
listed. Faces/s (face detection + landmarks) is shown on the progress bar; --show-fps also draws it
onto the annotated output. Ctrl-C ends a stream cleanly, keeping what was written.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from core.data import IMAGE_EXTENSIONS
from core.files import atomic_write_bytes
from core.preprocess import ImageError, ensure_bgr, read_image
from core.progress import Progress
from core.schema import GROUPS

from .detector import LandmarkDetector
from .faces import DETECTORS, detect_faces, load_detector

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}

# BGR colour of each landmark group
COLOURS = {
    "jaw": (255, 200, 0), "right_eyebrow": (0, 165, 255), "left_eyebrow": (0, 165, 255),
    "nose_bridge": (255, 0, 255), "nostrils": (255, 0, 255), "right_eye": (0, 255, 0),
    "left_eye": (0, 255, 0), "outer_lips": (0, 0, 255), "inner_lips": (80, 80, 255),
}
BOX_COLOUR = (255, 255, 255)


class InputError(Exception):
    """Input that cannot be used at all (exit status 2)."""


def draw_landmarks(image: np.ndarray, points: np.ndarray, box=None) -> np.ndarray:
    """Draw one face's 68 points (coloured by group) and its box onto ``image`` in place; returns it."""
    size = (box[2] - box[0]) if box is not None else min(image.shape[:2]) / 2
    radius = max(1, int(round(size / 100)))
    if box is not None:
        cv2.rectangle(image, (int(round(box[0])), int(round(box[1]))), (int(round(box[2])), int(round(box[3]))),
                      BOX_COLOUR, max(1, radius // 2), cv2.LINE_AA)
    for group, idx in GROUPS.items():
        for x, y in points[idx]:
            cv2.circle(image, (int(round(x)), int(round(y))), radius, COLOURS[group], -1, cv2.LINE_AA)
    return image


def put_text(image: np.ndarray, text: str) -> None:
    scale = max(0.4, image.shape[1] / 1200)
    for colour, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined, readable on any background
        cv2.putText(image, text, (8, int(24 * scale + 6)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def find_faces(det: LandmarkDetector, images: list[np.ndarray], detector: str, whole: bool) -> list[list[dict]]:
    """Boxes and landmarks of every face of every image, the faces of all images batched together."""
    boxes = [[None] if whole else detect_faces(im, detector) for im in images]
    flat_images = [im for im, bs in zip(images, boxes) for _ in bs]
    flat_boxes = [b for bs in boxes for b in bs]
    points = iter(det.predict_batch(flat_images, flat_boxes) if flat_images else [])
    return [[{"box": None if b is None else [round(float(v), 2) for v in b], "landmarks": next(points)} for b in bs]
            for bs in boxes]


def annotate(image: np.ndarray, faces: list[dict], text: str | None = None) -> np.ndarray:
    out = image.copy()
    for face in faces:
        draw_landmarks(out, face["landmarks"], face["box"])
    if text or not faces:
        put_text(out, text or "no face")
    return out


def to_json(faces: list[dict]) -> list[dict]:
    return [{"box": f["box"], "landmarks": np.round(f["landmarks"].astype(np.float64), 2).tolist()} for f in faces]


def image_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise InputError(f"{path}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
    return files


def run_images(det: LandmarkDetector, files: list[Path], out: Path, detector: str, whole: bool) -> tuple[dict, int]:
    """Annotate image files into ``out``; returns (landmarks.json document, exit status)."""
    images, no_face, unreadable = [], [], {}
    n_faces, busy = 0, 0.0
    bar = Progress(total=len(files), unit="img", desc="images", disable=len(files) < 2)
    for start in range(0, len(files), det.batch_size):  # a chunk of images: their faces form one batch
        chunk = []
        for path in files[start:start + det.batch_size]:
            try:
                chunk.append((path, read_image(path)))
            except ImageError as e:
                unreadable[path.name] = str(e)
                bar.write(f"skipped {e}", file=sys.stderr)
        t0 = time.perf_counter()
        found = find_faces(det, [im for _, im in chunk], detector, whole)
        busy += time.perf_counter() - t0
        for (path, image), faces in zip(chunk, found):
            ok, data = cv2.imencode(path.suffix, annotate(image, faces))
            if not ok:
                raise InputError(f"{path.name}: OpenCV cannot encode {path.suffix} images")
            atomic_write_bytes(out / path.name, data.tobytes())
            images.append({"file": path.name, "size": [image.shape[1], image.shape[0]], "faces": to_json(faces)})
            n_faces += len(faces)
            if not faces:
                no_face.append(path.name)
        bar.update(len(files[start:start + det.batch_size]))
        bar.set_postfix_str(f"{n_faces / max(busy, 1e-9):.1f} faces/s")
    bar.close()
    print(f"{len(files)} image{'s' if len(files) != 1 else ''}: {len(images)} annotated with {n_faces} faces into {out}"
          f"{f', {len(no_face)} without a face' if no_face else ''}"
          f"{f', {len(unreadable)} unreadable (skipped)' if unreadable else ''}")
    if no_face:
        print("no face found in: " + ", ".join(no_face))
    for reason in unreadable.values():
        print(f"unreadable: {reason}")
    return {"images": images, "no_face": no_face, "unreadable": unreadable}, (0 if images else 1)


def open_stream(spec: str) -> tuple[cv2.VideoCapture, str]:
    """A VideoCapture for a camera index, GStreamer pipeline or video file, and the output's base name."""
    if "!" in spec:
        cap, name = cv2.VideoCapture(spec, cv2.CAP_GSTREAMER), "gstreamer"
    elif spec.isdigit() and not Path(spec).exists():
        cap, name = cv2.VideoCapture(int(spec)), f"camera{spec}"
    else:
        cap, name = cv2.VideoCapture(spec), Path(spec).stem
    if not cap.isOpened():
        hint = ""
        if "!" in spec and re.search(r"GStreamer:\s+NO", cv2.getBuildInformation()):
            hint = " (this OpenCV was built without GStreamer: use the system's python3-opencv, e.g. JetPack's)"
        what = "pipeline" if "!" in spec else "camera" if spec.isdigit() else "video"
        raise InputError(f"{spec}: cannot open this {what}{hint}")
    return cap, name


def run_stream(det: LandmarkDetector, spec: str, out: Path, detector: str, whole: bool,
               max_frames: int | None, show_fps: bool) -> tuple[dict, int]:
    """Annotate every frame of a video, camera or pipeline into OUT/<name>.mp4."""
    cap, name = open_stream(spec)
    ok, frame = cap.read()
    if not ok:
        raise InputError(f"{spec}: no frame could be read")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if 1 <= fps <= 240 else 30.0  # cameras and pipelines often report 0
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    total = min(count, max_frames) if count > 0 and max_frames else (count if count > 0 else max_frames)
    height, width = frame.shape[:2]
    final = out / f"{name}.mp4"
    tmp = out / f".{name}.partial.mp4"  # renamed at the end: no half-written video under the real name
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise InputError(f"{final}: OpenCV cannot write mp4 video here")
    frames, no_face = [], []
    window = collections.deque(maxlen=30)  # (faces, seconds) of the last frames: a rate that follows the scene
    n_faces, busy, index = 0, 0.0, 0
    bar = Progress(total=total, unit="frame", desc=name)
    try:
        while ok and (max_frames is None or index < max_frames):
            frame = ensure_bgr(frame, f"{spec} frame {index}")
            t0 = time.perf_counter()
            faces = find_faces(det, [frame], detector, whole)[0]
            dt = time.perf_counter() - t0
            busy += dt
            window.append((len(faces), dt))
            n_faces += len(faces)
            secs = sum(s for _, s in window)
            rate = f"{sum(n for n, _ in window) / secs:.1f} faces/s, {len(window) / secs:.1f} frames/s"
            writer.write(annotate(frame, faces, rate if show_fps else None))
            frames.append({"frame": index, "time_s": round(index / fps, 3), "faces": to_json(faces)})
            if not faces:
                no_face.append(index)
            bar.update(1)
            bar.set_postfix_str(rate)
            index += 1
            ok, frame = cap.read()
    except KeyboardInterrupt:
        bar.write("interrupted: keeping the frames done so far")
    finally:
        bar.close()
        cap.release()
        writer.release()
    os.replace(tmp, final)
    print(f"{index} frames, {n_faces} faces ({len(no_face)} frames without a face) -> {final}; "
          f"detection + landmarks: {n_faces / max(busy, 1e-9):.1f} faces/s, {index / max(busy, 1e-9):.1f} frames/s")
    return {"video": final.name, "fps": fps, "size": [width, height], "frames": frames, "no_face": no_face}, 0


def cli() -> None:
    """Console-script entry point (pyproject.toml)."""
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model file: .onnx (ONNX Runtime) or .engine/.plan/.trt (TensorRT)")
    ap.add_argument("--input", required=True, metavar="PATH",
                    help="image, folder of images, video file, camera index (e.g. 0) or GStreamer pipeline")
    ap.add_argument("--out", required=True, type=Path, metavar="DIR",
                    help="folder for the annotated output and landmarks.json")
    ap.add_argument("--backend", choices=["onnxruntime", "tensorrt"], help="override the backend chosen by extension")
    ap.add_argument("--detector", choices=list(DETECTORS), default="auto",
                    help="face detector: auto = yunet (shipped, finds occluded faces best); dlib (HOG, the training "
                         "boxes; needs dlib) or haar; yunet and haar boxes are corrected to dlib's framing "
                         "(default: %(default)s)")
    ap.add_argument("--whole", action="store_true",
                    help="no face detection: each image/frame is already a face crop "
                         "(face centred, about half the side)")
    ap.add_argument("--batch-size", type=int, default=32, help="faces per backend call (default: %(default)s)")
    ap.add_argument("--max-frames", type=int, metavar="N", help="stop a video, camera or pipeline after N frames")
    ap.add_argument("--show-fps", action="store_true", help="draw faces/s and frames/s onto the annotated video")
    args = ap.parse_args(argv)

    def fail(message: str, status: int = 2) -> int:
        print(f"error: {message}", file=sys.stderr)
        return status

    spec = args.input
    stream = "!" in spec or (spec.isdigit() and not Path(spec).exists())
    path = Path(spec)
    if not stream and not path.exists():
        return fail(f"{spec}: no such file or folder")
    if not stream and path.is_file() and path.suffix.lower() not in IMAGE_EXTENSIONS | VIDEO_SUFFIXES:
        return fail(f"{spec}: unknown file type {path.suffix!r}: images are {', '.join(sorted(IMAGE_EXTENSIONS))}, "
                    f"videos {', '.join(sorted(VIDEO_SUFFIXES))}")
    stream = stream or path.suffix.lower() in VIDEO_SUFFIXES
    if not stream and (path if path.is_dir() else path.parent).resolve() == args.out.resolve():
        return fail(f"--out {args.out} is the input's own folder: the annotated images would replace the originals")
    try:
        det = LandmarkDetector(args.model, backend=args.backend, batch_size=args.batch_size)
        detector = "whole image" if args.whole else load_detector(args.detector)
        args.out.mkdir(parents=True, exist_ok=True)
        if stream:
            doc, status = run_stream(det, spec, args.out, detector, args.whole, args.max_frames, args.show_fps)
        else:
            doc, status = run_images(det, image_files(path), args.out, detector, args.whole)
    except (InputError, ImageError, FileNotFoundError, ValueError, RuntimeError) as e:
        return fail(str(e))
    doc = {"model": str(args.model), "backend": det.backend.name, "precision": det.backend.precision,
           "detector": detector, "input": spec, "points": "68 iBUG landmarks (x, y) in image pixels", **doc}
    atomic_write_bytes(args.out / "landmarks.json", json.dumps(doc).encode())
    return status


if __name__ == "__main__":
    sys.exit(main())
