"""Thin, torch-free runtime: landmark schema, preprocessing, metrics, inference backends and the one-line API.

    from runtime import LandmarkDetector, detect_faces
    det = LandmarkDetector("model.onnx")   # or "model.engine"
    pts = det.predict(image_bgr)           # (68, 2) image pixels
    faces = det.detect("photo.jpg")        # every face: box, landmarks, visibility, score
    tracker = det.tracker(smoothing=OneEuro(min_cutoff=0.5))   # video: tracker.update(frame)
"""
from .detector import FaceLandmarks, LandmarkDetector
from .tracking import OneEuro, TrackedFace

__all__ = ["FaceLandmarks", "LandmarkDetector", "OneEuro", "TrackedFace", "detect_faces"]


def __getattr__(name: str):
    if name == "detect_faces":  # imported on first use: it may load dlib
        from .faces import detect_faces

        return detect_faces
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
