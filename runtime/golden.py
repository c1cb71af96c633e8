"""The golden verification set: fixed test samples with PyTorch reference predictions and ground truth.

Written by ``export/export_onnx.py`` (where torch is), read by ``runtime.verify`` on
devices without torch. It stores, per face, the image path, its sha1, the face box
and the teacher landmarks, and per sample (face x condition) the occlusion mask and
the reference prediction, so a device needs only the face images to re-create
every network input bit for bit.
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.files import atomic_write_bytes, sha1_file
from core.preprocess import INPUT_SIZE, PREPROCESS_VERSION, ImageError, crop_face, crop_matrix, occlude, read_image

GOLDEN_FORMAT = "landmarks-golden-v1"  # v1 files of models with heads add reference_visibility/_score


@dataclass
class Golden:
    paths: list[str]  # per face, relative to the faces folder
    sha1: list[str]
    boxes: np.ndarray  # (F, 4) teacher boxes, image pixels
    landmarks: np.ndarray  # (F, 68, 2) ground truth, image pixels
    yaw: np.ndarray  # (F,) degrees
    face_index: np.ndarray  # (S,) face of each sample
    condition: list[str]  # (S,) clean, 10-20, ..., center25
    mask_id: list[str]  # (S,) Liu et al. file name, "center25" or ""
    masks: np.ndarray  # (S, 256, 256) bool, True = kept pixel
    reference: np.ndarray  # (S, 68, 2) PyTorch prediction, normalised crop coordinates
    reference_visibility: np.ndarray | None = None  # (S, 68) PyTorch visibility, models with heads
    reference_score: np.ndarray | None = None  # (S,) PyTorch face score, models with heads
    meta: dict = field(default_factory=dict)

    def outputs(self) -> dict[str, np.ndarray]:
        """The reference outputs by name (runtime.backends.OUTPUTS): what a model must reproduce."""
        out = {"landmarks": self.reference, "visibility": self.reference_visibility,
               "face_score": self.reference_score}
        return {k: v for k, v in out.items() if v is not None}

    def save(self, path: Path) -> None:
        arrays = dict(
            format=np.array(GOLDEN_FORMAT), meta=np.array(json.dumps(self.meta)), paths=np.array(self.paths),
            sha1=np.array(self.sha1), boxes=self.boxes.astype(np.float32), landmarks=self.landmarks.astype(np.float32),
            yaw=self.yaw.astype(np.float32), face_index=self.face_index.astype(np.int32),
            condition=np.array(self.condition), mask_id=np.array(self.mask_id),
            masks=np.packbits(self.masks.astype(bool), axis=-1), reference=self.reference.astype(np.float32),
        )
        if self.reference_visibility is not None:
            arrays.update(reference_visibility=self.reference_visibility.astype(np.float32),
                          reference_score=self.reference_score.astype(np.float32))
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> "Golden":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: golden file not found")
        try:
            with zipfile.ZipFile(path) as archive:  # numpy reads members without checking their CRC
                damaged = archive.testzip()
            z = np.load(path, allow_pickle=False)
            fmt = str(z["format"])
        except Exception as e:
            raise ValueError(f"{path}: not a golden file ({e.__class__.__name__}: {e})") from e
        if damaged:
            raise ValueError(f"{path}: damaged golden file: its member {damaged} fails the CRC check; "
                             f"export it again with export/export_onnx.py")
        if fmt != GOLDEN_FORMAT:
            raise ValueError(f"{path}: golden format {fmt!r}, expected {GOLDEN_FORMAT!r}")
        try:
            meta = json.loads(str(z["meta"]))
            if not isinstance(meta, dict):
                raise ValueError("its metadata is not a JSON object")
        except Exception as e:
            raise ValueError(f"{path}: unreadable golden metadata ({e.__class__.__name__}: {e})") from e
        if meta.get("preprocess_version") != PREPROCESS_VERSION:
            raise ValueError(f"{path}: made with preprocessing {meta.get('preprocess_version')!r}, "
                             f"this runtime has {PREPROCESS_VERSION!r}")
        try:
            return cls(
                paths=z["paths"].tolist(), sha1=z["sha1"].tolist(), boxes=z["boxes"], landmarks=z["landmarks"],
                yaw=z["yaw"], face_index=z["face_index"], condition=z["condition"].tolist(),
                mask_id=z["mask_id"].tolist(),
                masks=np.unpackbits(z["masks"], axis=-1, count=INPUT_SIZE).astype(bool),
                reference=z["reference"], meta=meta,
                reference_visibility=z["reference_visibility"] if "reference_visibility" in z.files else None,
                reference_score=z["reference_score"] if "reference_score" in z.files else None,
            )
        except Exception as e:  # a missing array, a damaged member, bad metadata: name the file and the problem
            raise ValueError(f"{path}: a damaged or incomplete golden file ({e.__class__.__name__}: {e}); "
                             f"export it again with export/export_onnx.py") from e

    def crops(self, faces_dir: Path) -> np.ndarray:
        """Re-create every sample's uint8 occluded crop (S, 256, 256, 3) from the face images."""
        faces_dir = Path(faces_dir)
        out = np.zeros((len(self.face_index), INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
        for f, rel in enumerate(self.paths):
            file = faces_dir / rel
            if not file.is_file():
                raise ImageError(f"{file}: golden image missing (is --faces the folder the golden set came from?)")
            if sha1_file(file) != self.sha1[f]:
                raise ImageError(f"{file}: differs from the image the golden set was made from")
            crop, _ = crop_face(read_image(file), self.boxes[f])
            for s in np.flatnonzero(self.face_index == f):
                out[s] = occlude(crop, self.masks[s].astype(np.uint8))
        return out

    def matrices(self) -> np.ndarray:
        """(S, 2, 3) crop matrices of the samples."""
        return np.stack([crop_matrix(self.boxes[f]) for f in self.face_index])
