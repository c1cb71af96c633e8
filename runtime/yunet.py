"""YuNet-n, the default face detector, run by ONNX Runtime with OpenCV's FaceDetectorYN decoding.

OpenCV's ``cv2.FaceDetectorYN`` runs the same file, but OpenCV 4.14's new DNN engine ran it at half ONNX
Runtime's speed here (docs/end_to_end.md), JetPack 5's OpenCV 4.5 has no FaceDetectorYN at all, and ONNX
Runtime is a runtime dependency already. Rows are FaceDetectorYN's: (x, y, w, h, five landmarks x/y, score);
the decoding follows OpenCV's modules/objdetect/src/face_detect.cpp, and tests/test_faces.py checks that
both give the same faces.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np

DIVISOR = 32  # the input is zero-padded right and bottom to a multiple of this (OpenCV does the same)
STRIDES = (8, 16, 32)


class YuNet:
    def __init__(self, path: Path, threads: Optional[int] = None):
        import onnxruntime as ort

        if not Path(path).is_file():
            raise RuntimeError(f"{path}: YuNet model missing (it ships with the package; reinstall it)")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise RuntimeError(f"{path}: ONNX Runtime cannot load the YuNet model (corrupt?): {e}") from e
        self.outputs = [f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES]
        missing = set(self.outputs) - {o.name for o in self.session.get_outputs()}
        if missing:
            raise RuntimeError(f"{path}: not a YuNet model (no outputs {sorted(missing)})")

    def detect(self, image_bgr: np.ndarray, score_threshold: float, nms_threshold: float,
               top_k: int = 5000) -> np.ndarray:
        """(F, 15) float32 faces of a BGR uint8 image, best first."""
        h, w = image_bgr.shape[:2]
        pad_h, pad_w = -(-h // DIVISOR) * DIVISOR, -(-w // DIVISOR) * DIVISOR
        x = np.zeros((1, 3, pad_h, pad_w), np.float32)  # raw BGR values, as cv2.dnn.blobFromImage makes them
        x[0, :, :h, :w] = image_bgr.transpose(2, 0, 1)
        out = dict(zip(self.outputs, self.session.run(self.outputs, {"input": x})))
        faces = [self._decode(out, s, pad_w // s, score_threshold) for s in STRIDES]
        faces = np.concatenate(faces)
        if len(faces) > 1:
            # OpenCV runs NMS on the boxes truncated to integers
            keep = cv2.dnn.NMSBoxes(faces[:, :4].astype(np.int32).tolist(), faces[:, 14].tolist(),
                                    score_threshold, nms_threshold, top_k=top_k)
            faces = faces[np.asarray(keep, dtype=np.int64).reshape(-1)]
        return faces

    @staticmethod
    def _decode(out: dict, stride: int, cols: int, score_threshold: float) -> np.ndarray:
        cls = np.clip(out[f"cls_{stride}"].reshape(-1), 0, 1)
        obj = np.clip(out[f"obj_{stride}"].reshape(-1), 0, 1)
        score = np.sqrt(cls * obj)
        idx = np.flatnonzero(score >= score_threshold)
        cell = np.stack([idx % cols, idx // cols], 1).astype(np.float32)  # (c, r)
        box = out[f"bbox_{stride}"].reshape(-1, 4)[idx]
        kps = out[f"kps_{stride}"].reshape(-1, 5, 2)[idx]
        size = np.exp(box[:, 2:]) * stride
        top_left = (cell + box[:, :2]) * stride - size / 2
        points = ((kps + cell[:, None]) * stride).reshape(-1, 10)
        return np.concatenate([top_left, size, points, score[idx, None]], 1).astype(np.float32)
