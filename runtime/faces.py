"""Face boxes for full images: dlib's HOG detector when installed, else OpenCV's bundled Haar cascade.

    from runtime import detect_faces
    boxes = detect_faces(image_bgr)          # [(x0, y0, x1, y1), ...], largest first

The model was trained on dlib HOG boxes (brows to chin, cheek to cheek), so dlib is preferred: its
boxes are the training boxes. Haar boxes are framed differently (larger, centred higher) and are
mapped onto dlib's framing by a measured correction (HAAR_TO_DLIB below), so the crop matches.
"""
from __future__ import annotations

import functools
import glob
import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np

from core.preprocess import Box, ensure_bgr

DETECTORS = ("auto", "dlib", "haar")

# Frames larger than this (longest side, px) are shrunk before detection: HOG and Haar cost grows with
# the pixel count, and faces smaller than about 1/20 of the frame side are too small to landmark well.
DETECT_MAX_SIDE = 640

# Haar box -> dlib box, measured on 200 CACD faces (250x250, every 19th file of ../shared/data/faces/cacd;
# 198 found by both) with haarcascade_frontalface_default (scaleFactor 1.1, minNeighbors 5, grey image)
# against dlib's frontal detector (upsample 1), largest box of each:
#   dlib width / Haar width:   geometric mean 0.855, median 0.837, mean 0.858 (sd 0.082); heights alike
#   dlib centre - Haar centre: x mean -0.022, median -0.031 (sd 0.034) Haar widths: the same sign on
#                              mirrored images, so a detector bias, not the faces' pose;
#                              y mean +0.059, median +0.059 (sd 0.027) Haar heights: dlib's box sits lower
#                              (it starts at the brows, Haar's at the forehead)
# Check on 50 Taiwanese faces (256x256, not used to fit), corrected vs raw Haar: IoU with dlib's box
# 0.71 -> 0.83, size 1.16 -> 0.99 of dlib's, vertical centre error 0.09 -> 0.03 dlib widths (horizontal
# stays 0.03); on 50 other CACD faces IoU 0.72 -> 0.87, size 1.16 -> 0.99, vertical centre error 0.07 -> 0.02.
# What is left is well inside the training jitter (scale e^±0.2, shift ±0.12 box widths: train/dataset.py).
HAAR_TO_DLIB = {"scale": 0.855, "dx": -0.025, "dy": 0.06}


def dlib_available() -> bool:
    return importlib.util.find_spec("dlib") is not None


def haar_available() -> bool:
    """OpenCV 5 moved CascadeClassifier out of the main package; 4.x (JetPack's too) has it."""
    return hasattr(cv2, "CascadeClassifier")


def load_detector(detector: str = "auto") -> str:
    """Resolve "auto" and load the detector now, so a missing one fails before any work; returns "dlib" or "haar"."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown face detector {detector!r}: use one of {', '.join(DETECTORS)}")
    if detector == "auto":
        detector = "dlib" if dlib_available() else "haar"
    if detector == "dlib":
        _dlib_detector()
    else:
        _haar_cascade()
    return detector


def detect_faces(image_bgr: np.ndarray, detector: str = "auto") -> list[Box]:
    """Face boxes (x0, y0, x1, y1) in image pixels, dlib-framed, largest first; [] when there is no face.

    ``detector``: "auto" (dlib when importable, else Haar), "dlib" or "haar". Accepts BGR, grayscale
    or BGRA uint8 images.
    """
    detector = load_detector(detector)
    image = ensure_bgr(image_bgr)
    # shrink big frames; boxes are scaled back below
    f = min(1.0, DETECT_MAX_SIDE / max(image.shape[:2]))
    small = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1.0 else image
    boxes = dlib_boxes(small) if detector == "dlib" else _haar_boxes(small)
    boxes = [tuple(float(v) / f for v in b) for b in boxes]
    return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


@functools.lru_cache(maxsize=1)
def _dlib_detector():
    try:
        import dlib
    except ImportError as e:
        raise RuntimeError("detector='dlib' needs dlib: `pip install dlib-bin` (extra: teacher), "
                           "or use detector='haar'") from e
    return dlib.get_frontal_face_detector()


def dlib_boxes(image_bgr: np.ndarray) -> list[Box]:
    """dlib HOG boxes at full resolution, as the teacher labels (train/annotate.py): RGB, upsample 1, then 2."""
    detect = _dlib_detector()
    rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
    for upsample in (1, 2):
        rects = detect(rgb, upsample)
        if len(rects):
            return [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]
    return []


@functools.lru_cache(maxsize=1)
def _haar_cascade():
    if not haar_available():
        raise RuntimeError(f"detector='haar' needs OpenCV's CascadeClassifier, which OpenCV {cv2.__version__} "
                           "does not have (it left the main package in OpenCV 5): install "
                           "'opencv-python-headless<5' or dlib (`pip install dlib-bin`)")
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"cannot load OpenCV's Haar cascade {path}")
    return cascade


def _haar_boxes(image_bgr: np.ndarray) -> list[Box]:
    # no histogram equalisation: Haar windows are variance-normalised already, and a global equalisation
    # of a frame with a large dark or bright background washes the face out (seen: faces missed)
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    found = _haar_cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30))
    return [haar_to_dlib((x, y, x + w, y + h)) for x, y, w, h in found]


def haar_to_dlib(box: Box) -> Box:
    """Map a Haar box onto dlib's framing (HAAR_TO_DLIB, measured above)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2 + HAAR_TO_DLIB["dx"] * w, (y0 + y1) / 2 + HAAR_TO_DLIB["dy"] * h
    half_w, half_h = HAAR_TO_DLIB["scale"] * w / 2, HAAR_TO_DLIB["scale"] * h / 2
    return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


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
