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
onto the annotated output. Ctrl-C or SIGTERM ends a stream cleanly, keeping what was written.

Video, cameras and pipelines are tracked (runtime.tracking): faces keep a track_id, frames between
detections crop from the previous landmarks, and points are smoothed (--no-smoothing for raw points).
Frame numbers and times come from the container's timestamps: frames a damaged file cannot deliver are
skipped, reported, and listed in landmarks.json ("missing_frames"), and later frames keep their true numbers.
Points the model says are hidden are drawn as rings.

Exit status: 0 done (unreadable images or missing frames are reported, not fatal), 1 nothing could be
annotated, 2 unusable input or arguments.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from core.data import IMAGE_EXTENSIONS
from core.files import atomic_write_bytes, write_json, check_output_path
from core.preprocess import ImageError, ensure_bgr, read_image
from core.progress import Progress
from core.schema import GROUPS

from .detector import VISIBLE, LandmarkDetector
from .faces import DETECT_MAX_SIDE, DETECTORS, load_detector
from .tracking import VIDEO_DETECT_MAX_SIDE, OneEuro

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


def draw_landmarks(image: np.ndarray, points: np.ndarray, box=None, visibility: np.ndarray | None = None) -> np.ndarray:
    """Draw one face's 68 points (coloured by group; rings where ``visibility`` < 0.5) and its box onto
    ``image`` in place; returns it."""
    size = (box[2] - box[0]) if box is not None else min(image.shape[:2]) / 2
    radius = max(1, int(round(size / 100)))
    if box is not None:
        cv2.rectangle(image, (int(round(box[0])), int(round(box[1]))), (int(round(box[2])), int(round(box[3]))),
                      BOX_COLOUR, max(1, radius // 2), cv2.LINE_AA)
    hidden = np.zeros(len(points), bool) if visibility is None else np.asarray(visibility) < VISIBLE
    for group, idx in GROUPS.items():
        for (x, y), h in zip(points[idx], hidden[idx]):
            cv2.circle(image, (int(round(x)), int(round(y))), radius, COLOURS[group], 1 if h else -1, cv2.LINE_AA)
    return image


def put_text(image: np.ndarray, text: str) -> None:
    scale = max(0.4, image.shape[1] / 1200)
    for colour, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined, readable on any background
        cv2.putText(image, text, (8, int(24 * scale + 6)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def find_faces(det: LandmarkDetector, images: list[np.ndarray], detector: str, whole: bool) -> list[list[dict]]:
    """Faces of every image: detected (LandmarkDetector.detect), or, with ``whole``, each image is one face
    crop (the images batched together)."""
    if whole:
        return [[face_dict(f, whole=True)] for f in det.predict_faces(images)]
    return [[face_dict(f) for f in det.detect(image, detector)] for image in images]


def face_dict(face, whole: bool = False, track_id: int | None = None) -> dict:
    out = {"box": None if whole else [round(float(v), 2) for v in face.box], "landmarks": face.landmarks,
           "visibility": face.visibility, "score": face.score}
    if track_id is not None:
        out["track_id"] = track_id
    return out


def annotate(image: np.ndarray, faces: list[dict], text: str | None = None) -> np.ndarray:
    out = image.copy()
    for face in faces:
        draw_landmarks(out, face["landmarks"], face["box"], face["visibility"])
        if face.get("track_id") is not None and face["box"] is not None:
            cv2.putText(out, f"#{face['track_id']}", (int(face["box"][0]), int(face["box"][1]) - 4),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, BOX_COLOUR, 1, cv2.LINE_AA)
    if text or not faces:
        put_text(out, text or "no face")
    return out


def to_json(faces: list[dict]) -> list[dict]:
    out = []
    for f in faces:
        doc = {"box": f["box"], "landmarks": np.round(f["landmarks"].astype(np.float64), 2).tolist()}
        if f["visibility"] is not None:
            doc["visibility"] = np.round(f["visibility"].astype(np.float64), 3).tolist()
            doc["score"] = round(float(f["score"]), 4)
        if "track_id" in f:
            doc["track_id"] = f["track_id"]
        out.append(doc)
    return out


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
        if whole:
            found = find_faces(det, [im for _, im in chunk], detector, whole)
        else:  # one image at a time, so one image the detector or the model refuses skips only itself
            found, kept = [], []
            for path, image in chunk:
                try:
                    found.append(find_faces(det, [image], detector, whole)[0])
                    kept.append((path, image))
                except (ImageError, ValueError) as e:
                    unreadable[path.name] = f"{path}: {e}"
                    bar.write(f"skipped {path}: {e}", file=sys.stderr)
            chunk = kept
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


class FrameReader:
    """Frames of a capture with their true numbers: a file's from its timestamps (OpenCV's own frame count
    runs on past frames it could not decode), a camera's or pipeline's counted. Frames a damaged file
    cannot deliver are skipped (up to MAX_BAD_READS in a row) and their numbers kept in ``missing``."""

    MAX_BAD_READS = 30

    def __init__(self, cap: cv2.VideoCapture, fps: float, is_file: bool):
        self.cap, self.fps, self.is_file = cap, fps, is_file
        self.count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if is_file else 0
        self.missing: list[int] = []
        self.read = 0
        self.last = -1
        self.finished = False  # the capture ran to its end (not stopped early)

    def __iter__(self):
        bad = 0
        while True:
            ok, frame = self.cap.read()
            if not ok:
                # a file may continue after damage; a camera or a file at its end does not
                bad += 1
                if not self.is_file or bad > self.MAX_BAD_READS or (0 < self.count <= self.last + 1):
                    break
                continue
            bad = 0
            index = self.last + 1
            if self.is_file:
                msec = self.cap.get(cv2.CAP_PROP_POS_MSEC)
                index = max(index, int(round(msec * self.fps / 1000))) if msec >= 0 else index
            self.missing += range(self.last + 1, index)
            self.last = index
            self.read += 1
            yield index, index / self.fps, frame
        self.finished = True

    def unaccounted(self) -> int:
        """Frames the container announced that were neither read nor placed by a timestamp gap (damage in a
        file without timestamps, or a truncated end); known only once the capture ran to its end."""
        return max(0, self.count - self.read - len(self.missing)) if self.finished and self.is_file else 0


@contextlib.contextmanager
def stop_on_sigterm():
    """While streaming, SIGTERM ends the stream like Ctrl-C: the video written so far is kept under its final
    name. The caller's own SIGTERM handling comes back afterwards (left in place, it was inherited by processes
    forked later, e.g. a multiprocessing pool, which its terminate() then could not stop)."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stream(det: LandmarkDetector, spec: str, out: Path, detector: str, whole: bool,
               max_frames: int | None, show_fps: bool, tracker_options: dict) -> tuple[dict, int]:
    """Annotate every frame of a video, camera or pipeline into OUT/<name>.mp4, tracking faces
    (``tracker_options``: LandmarkDetector.tracker's)."""
    cap, name = open_stream(spec)
    is_file = "!" not in spec and not spec.isdigit()
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if 1 <= fps <= 240 else 30.0  # cameras and pipelines often report 0
    reader = FrameReader(cap, fps, is_file)
    total = min(reader.count, max_frames) if reader.count > 0 and max_frames else (reader.count or max_frames)
    final = out / f"{name}.mp4"
    tmp = out / f".{name}.partial.mp4"  # renamed at the end: no half-written video under the real name
    if tmp.exists():
        print(f"removing {tmp}, left by an earlier run that was killed")
        tmp.unlink()
    tracker = None if whole else det.tracker(detector=detector, fps=fps, **tracker_options)
    writer, frames, no_face = None, [], []
    window = collections.deque(maxlen=30)  # (faces, seconds) of the last frames: a rate that follows the scene
    n_faces, busy, done = 0, 0.0, 0
    bar = Progress(total=total, unit="frame", desc=name)
    with stop_on_sigterm():
        try:
            for index, time_s, frame in reader:
                frame = ensure_bgr(frame, f"{spec} frame {index}")
                if writer is None:
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, frame.shape[1::-1])
                    if not writer.isOpened():
                        raise InputError(f"{final}: OpenCV cannot write mp4 video here")
                t0 = time.perf_counter()
                if tracker is None:
                    faces = find_faces(det, [frame], detector, whole)[0]
                else:
                    faces = [face_dict(f, track_id=f.track_id) for f in tracker.update(frame, time_s)]
                dt = time.perf_counter() - t0
                busy += dt
                window.append((len(faces), dt))
                n_faces += len(faces)
                secs = sum(s for _, s in window)
                rate = f"{sum(n for n, _ in window) / secs:.1f} faces/s, {len(window) / secs:.1f} frames/s"
                writer.write(annotate(frame, faces, rate if show_fps else None))
                frames.append({"frame": index, "time_s": round(time_s, 3), "faces": to_json(faces)})
                if not faces:
                    no_face.append(index)
                bar.update(1)
                bar.set_postfix_str(rate)
                done += 1
                if max_frames is not None and done >= max_frames:
                    break
        except KeyboardInterrupt:
            bar.write("interrupted: keeping the frames done so far")
        finally:
            bar.close()
            cap.release()
            if writer is not None:
                writer.release()
    if writer is None:
        raise InputError(f"{spec}: no frame could be read")
    os.replace(tmp, final)
    print(f"{done} frames, {n_faces} faces ({len(no_face)} frames without a face) -> {final}; "
          f"detection + landmarks: {n_faces / max(busy, 1e-9):.1f} faces/s, {done / max(busy, 1e-9):.1f} frames/s")
    missing = reader.missing
    if missing or reader.unaccounted():
        print(f"warning: {spec}: {len(missing) + reader.unaccounted()} frame(s) could not be read (damaged or "
              f"truncated file)" + (f"; missing frame numbers: {compact(missing)}" if missing else "")
              + (f"; {reader.unaccounted()} more without timestamps to place them" if reader.unaccounted() else ""),
              file=sys.stderr)
    return {"video": final.name, "fps": fps, "size": list(frame.shape[1::-1]), "frames": frames,
            "no_face": no_face, "missing_frames": missing, "unplaced_missing_frames": reader.unaccounted()}, 0


def compact(numbers: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


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
    ap.add_argument("--detect-every", type=int, default=30, metavar="N",
                    help="video: run the face detector every N frames to find new faces (tracked faces need no "
                         "detection; it also runs when a track is lost) (default: %(default)s)")
    ap.add_argument("--detect-max-side", type=int, default=VIDEO_DETECT_MAX_SIDE, metavar="PX",
                    help="video: frames are shrunk to this longest side for the face detector; larger finds smaller "
                         "faces and costs more per detection frame (default: %(default)s; still images: "
                         f"{DETECT_MAX_SIDE})")
    ap.add_argument("--no-smoothing", action="store_true", help="video: raw landmarks, no One Euro filter")
    ap.add_argument("--min-cutoff", type=float, default=OneEuro.min_cutoff,
                    help="video: the face shape's One Euro cutoff at rest in Hz; lower = steadier (default: %(default)s)")
    ap.add_argument("--beta", type=float, default=OneEuro.beta,
                    help="video: how fast that cutoff rises with the shape's speed; higher = less lag on expressions "
                         "(default: %(default)s; the pose has its own filter: runtime.tracking.OneEuro)")
    mirror = ap.add_mutually_exclusive_group()  # not BooleanOptionalAction: the runtime supports Python 3.8
    mirror.add_argument("--mirror", dest="mirror", action="store_const", const=True,
                        help="average each face's outputs with its mirror image's: more accurate, twice the network's "
                             "cost (default: on for images, off for video, cameras and pipelines)")
    mirror.add_argument("--no-mirror", dest="mirror", action="store_const", const=False,
                        help="one network pass per face")
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
    mirror = not stream if args.mirror is None else args.mirror
    if not stream and (path if path.is_dir() else path.parent).resolve() == args.out.resolve():
        return fail(f"--out {args.out} is the input's own folder: the annotated images would replace the originals")
    try:
        check_output_path(args.out, folder=True)
        det = LandmarkDetector(args.model, backend=args.backend, batch_size=args.batch_size, mirror=mirror)
        detector = "whole image" if args.whole else load_detector(args.detector)
        args.out.mkdir(parents=True, exist_ok=True)
        if stream:
            smoothing = None if args.no_smoothing else OneEuro(min_cutoff=args.min_cutoff, beta=args.beta)
            doc, status = run_stream(det, spec, args.out, detector, args.whole, args.max_frames, args.show_fps,
                                     {"smoothing": smoothing, "detect_every": args.detect_every,
                                      "detect_max_side": args.detect_max_side, "mirror": mirror})
        else:
            doc, status = run_images(det, image_files(path), args.out, detector, args.whole)
    except (InputError, ImageError, FileNotFoundError, ValueError, RuntimeError) as e:
        return fail(str(e))
    doc = {"model": str(args.model), "backend": det.backend.name, "precision": det.backend.precision,
           "detector": detector, "mirror": mirror, "input": spec,
           "points": "68 iBUG landmarks (x, y) in image pixels", **doc}
    write_json(args.out / "landmarks.json", doc, indent=None)
    return status


if __name__ == "__main__":
    sys.exit(main())
