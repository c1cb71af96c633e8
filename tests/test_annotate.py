import json
import shutil

import cv2
import numpy as np

from tests.conftest import FACES, needs_data, needs_dlib


@needs_data
@needs_dlib
def test_teacher_labels_real_faces_and_reports_failures(tmp_path, tmp_cache):
    from core.data import load_labels
    from train.annotate import annotate

    faces = tmp_path / "faces"
    faces.mkdir()
    for name in ("cacd/0000_0.jpg", "taiwanese/0101a02.jpg"):
        shutil.copy(FACES / name, faces / name.replace("/", "_"))
    (faces / "corrupt.jpg").write_bytes(b"garbage")
    cv2.imwrite(str(faces / "blank.png"), np.full((200, 200), 127, np.uint8))  # grayscale, no face
    rgba = cv2.cvtColor(cv2.imread(str(FACES / "cacd/0001_0.jpg")), cv2.COLOR_BGR2BGRA)
    cv2.imwrite(str(faces / "rgba.png"), rgba)

    out = annotate(faces, workers=1)
    doc = json.loads(out.read_text())
    assert set(doc["entries"]) == {"cacd_0000_0.jpg", "taiwanese_0101a02.jpg", "rgba.png"}
    assert "corrupt" in doc["failed"]["corrupt.jpg"]["reason"]
    assert "no face" in doc["failed"]["blank.png"]["reason"]
    report = out.with_name("report.txt").read_text()
    assert "corrupt.jpg" in report and "blank.png" in report

    labels = load_labels(faces)
    assert labels.landmarks.shape == (3, 68, 2)
    for box, pts in zip(labels.boxes, labels.landmarks):
        # the points lie around the detected box, eyes above the mouth
        assert box[0] - 20 < pts[:, 0].mean() < box[2] + 20
        assert pts[36:48, 1].mean() < pts[48:68, 1].mean()

    # re-runs only label what changed
    before = out.stat().st_mtime_ns
    annotate(faces, workers=1)
    assert out.stat().st_mtime_ns == before
    shutil.copy(FACES / "cacd/0002_0.jpg", faces / "corrupt.jpg")  # fixed file
    doc = json.loads(annotate(faces, workers=1).read_text())
    assert "corrupt.jpg" in doc["entries"] and "corrupt.jpg" not in doc["failed"]
