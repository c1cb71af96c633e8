"""Face boxes for full images: YuNet (shipped with the package) by default, dlib's HOG detector or OpenCV's
Haar cascade on request.

    from runtime import detect_faces
    boxes = detect_faces(image_bgr)          # [(x0, y0, x1, y1), ...], largest first

The model was trained on dlib HOG boxes (brows to chin, cheek to cheek). YuNet and Haar frame faces
differently and are mapped onto dlib's framing by a measured correction (YUNET_TO_DLIB, HAAR_TO_DLIB
below; `python scripts/detector_framing.py` measures them), so the crop matches. YuNet is the default
because it keeps finding faces under occlusion where HOG and Haar do not (../shared/models/README.md).

Each thread gets its own detector objects: neither dlib's detector nor OpenCV's cascade may serve two
threads at once (dlib crashed, Haar handed one thread the other's boxes); YuNet follows the same rule.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import threading
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np

from core.preprocess import Box, ensure_bgr

from .yunet import YuNet

DETECTORS = ("auto", "yunet", "dlib", "haar")

# Images larger than this (longest side, px) are shrunk before detection: detection cost grows with the
# pixel count, and faces smaller than about 1/20 of the image side are too small to landmark well. Video
# detects at a smaller side, for speed (runtime.tracking.VIDEO_DETECT_MAX_SIDE).
DETECT_MAX_SIDE = 640

# YuNet-n (the network of OpenCV's cv2.FaceDetectorYN, run by runtime.yunet), Apache-2.0:
# runtime/models/yunet/README.md says where it came from and what scripts/yunet_dynamic.py changed.
YUNET_MODEL = Path(__file__).resolve().parent / "models" / "yunet" / "yunet_n_dynamic.onnx"
YUNET_SCORE = 0.6  # its confidence threshold
YUNET_NMS = 0.3

# Detector box -> dlib box: dlib width / detector width (sx) and height / height (sy), geometric means, and
# the centre offset in detector box widths (dx) and heights (dy), medians, measured on 200 CACD faces (every 19th file of faces/cacd, largest box of
# each) by scripts/detector_framing.py, and checked on 50 Taiwanese faces not used to fit.
# Haar (haarcascade_frontalface_default, scaleFactor 1.1, minNeighbors 5, grey): 198 of 200 found by both;
#   Taiwanese check: IoU with dlib's box 0.71 -> 0.83, size 1.16 -> 0.99 of dlib's.
# YuNet-n 640 (score 0.6; its boxes are taller than dlib's): 199 of 200 found by both; IoU with dlib's box
#   0.67 -> 0.82 on the fit set, 0.73 -> 0.77 on the Taiwanese check, crop side 1.02 / 1.08 of dlib's.
# What is left is well inside the training jitter (scale e^±0.2, shift ±0.12 box widths: train/dataset.py).
HAAR_TO_DLIB = {"sx": 0.855, "sy": 0.855, "dx": -0.025, "dy": 0.06}
YUNET_TO_DLIB = {"sx": 1.048, "sy": 0.744, "dx": -0.039, "dy": 0.053}
CORRECTIONS = {"haar": HAAR_TO_DLIB, "yunet": YUNET_TO_DLIB}
# The bounding box of the 68 landmarks -> dlib box, the same kind of correction: fitted on the teacher labels of
# the 14,027 train faces, checked on the 192 val faces (IoU with dlib's box 0.77 / 0.79). Tracking and box
# refinement crop from predicted landmarks through it (box_from_landmarks).
LANDMARKS_TO_DLIB = {"sx": 0.986, "sy": 1.055, "dx": -0.036, "dy": -0.133}

_local = threading.local()  # this thread's detector objects


def dlib_available() -> bool:
    return importlib.util.find_spec("dlib") is not None


def haar_available() -> bool:
    """OpenCV 5 moved CascadeClassifier out of the main package; 4.x (JetPack's too) has it."""
    return hasattr(cv2, "CascadeClassifier")


def _per_thread(name: str, make):
    """This thread's instance of a detector object, made on first use."""
    cache: Optional[Dict[str, object]] = getattr(_local, "detectors", None)
    if cache is None:
        cache = _local.detectors = {}
    if name not in cache:
        cache[name] = make()
    return cache[name]


def load_detector(detector: str = "auto") -> str:
    """Resolve "auto" (YuNet) and load the detector now, so a missing one fails before any work; its name."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown face detector {detector!r}: use one of {', '.join(DETECTORS)}")
    if detector == "auto":
        detector = "yunet"
    {"yunet": _yunet, "dlib": _dlib_detector, "haar": _haar_cascade}[detector]()
    return detector


def detect_faces(image_bgr: np.ndarray, detector: str = "auto", min_score: Optional[float] = None,
                 max_side: int = DETECT_MAX_SIDE) -> List[Box]:
    """Face boxes (x0, y0, x1, y1) in image pixels, dlib-framed, largest first; [] when there is no face.

    ``detector``: "auto" (YuNet), "yunet", "dlib" or "haar". Accepts BGR, grayscale or BGRA uint8 images.
    ``min_score``: YuNet's confidence threshold (default YUNET_SCORE); lower finds more occluded faces and
    more false ones (LandmarkDetector.detect confirms them with the model's face score). YuNet only.
    ``max_side``: larger images are shrunk to this longest side for detection (faster; small faces lost).
    """
    detector = load_detector(detector)
    if min_score is not None and detector != "yunet":
        raise ValueError(f"min_score is YuNet's confidence threshold; detector {detector!r} has none")
    if max_side < 32:
        raise ValueError(f"max_side must be at least 32 px, got {max_side}")
    image = ensure_bgr(image_bgr)
    # shrink big frames; boxes are scaled back below
    f = min(1.0, max_side / max(image.shape[:2]))
    small = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1.0 else image
    boxes = raw_boxes(small, detector, min_score)
    if detector in CORRECTIONS:
        boxes = [to_dlib_framing(b, CORRECTIONS[detector]) for b in boxes]
    boxes = [tuple(float(v) / f for v in b) for b in boxes]
    return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def raw_boxes(image_bgr: np.ndarray, detector: str, min_score: Optional[float] = None) -> List[Box]:
    """The detector's own boxes, before the framing correction (BGR uint8 image)."""
    if detector == "dlib":
        return dlib_boxes(image_bgr)
    if detector == "haar":
        # no histogram equalisation: Haar windows are variance-normalised already, and a global equalisation
        # of a frame with a large dark or bright background washes the face out (seen: faces missed)
        grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        found = _haar_cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30))
        return [(float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in found]
    if detector == "yunet":
        found = _yunet().detect(image_bgr, YUNET_SCORE if min_score is None else min_score, YUNET_NMS)
        return [(float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in found[:, :4]]
    raise ValueError(f"unknown face detector {detector!r}: use one of {', '.join(DETECTORS[1:])}")


def to_dlib_framing(box: Box, correction: dict) -> Box:
    """Map a detector's box onto dlib's framing with a measured correction (sx, sy, dx, dy)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2 + correction["dx"] * w, (y0 + y1) / 2 + correction["dy"] * h
    half_w, half_h = correction["sx"] * w / 2, correction["sy"] * h / 2
    return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def box_from_landmarks(points: np.ndarray) -> Box:
    """The dlib-framed face box of 68 landmarks (image pixels): the crop the model expects for that face."""
    pts = np.asarray(points, dtype=np.float64)
    return to_dlib_framing((*pts.min(0), *pts.max(0)), LANDMARKS_TO_DLIB)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    inter, area_a, area_b = _overlap(a, b)
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def box_overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area: 1 when one box lies inside the other."""
    inter, area_a, area_b = _overlap(a, b)
    smaller = min(area_a, area_b)
    return float(inter / smaller) if smaller > 0 else 0.0


def _overlap(a: Box, b: Box) -> tuple:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return max(0.0, x1 - x0) * max(0.0, y1 - y0), (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])


def _yunet() -> YuNet:
    # as many threads as OpenCV is set to use (cv2.setNumThreads), which governed YuNet when OpenCV ran it
    return _per_thread("yunet", lambda: YuNet(YUNET_MODEL, threads=cv2.getNumThreads()))


def _dlib_detector():
    def make():
        try:
            import dlib
        except ImportError as e:
            raise RuntimeError("detector='dlib' needs dlib: `pip install dlib-bin` (extra: teacher), "
                               "or use detector='yunet'") from e
        return dlib.get_frontal_face_detector()
    return _per_thread("dlib", make)


def dlib_boxes(image_bgr: np.ndarray) -> List[Box]:
    """dlib HOG boxes at full resolution, as the teacher labels (train/annotate.py): RGB, upsample 1, then 2."""
    detect = _dlib_detector()
    rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
    for upsample in (1, 2):
        rects = detect(rgb, upsample)
        if len(rects):
            return [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]
    return []


def _haar_cascade():
    def make():
        if not haar_available():
            raise RuntimeError(f"detector='haar' needs OpenCV's CascadeClassifier, which OpenCV {cv2.__version__} "
                               "does not have (it left the main package in OpenCV 5): install "
                               "'opencv-python-headless<5' or use detector='yunet'")
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"cannot load OpenCV's Haar cascade {path}")
        return cascade
    return _per_thread("haar", make)


def dlib_shape_predictor_path() -> Path:
    """dlib's 68-point model inside face-recognition-models, found by path: importing that package
    needs pkg_resources, which current setuptools no longer ships."""
    spec = importlib.util.find_spec("face_recognition_models")
    hits = glob.glob(os.path.join(os.path.dirname(spec.origin), "models", "shape_predictor_68_face_landmarks.dat")) \
        if spec and spec.origin else []
    if not hits:
        raise RuntimeError("dlib's 68-point model not found: `pip install dlib-bin face-recognition-models` "
                           "(extra: teacher)")
    return Path(hits[0])
