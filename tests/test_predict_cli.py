"""python -m runtime.predict on real faces: images, folders with bad files, missing paths, video."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import faces
from runtime.predict import main
from tests.conftest import FACES, ROOT, needs_data

needs_detector = pytest.mark.skipif(not (faces.dlib_available() or faces.haar_available()),
                                    reason="no face detector: neither dlib nor OpenCV's Haar cascade (OpenCV < 5)")


def real(n: int) -> list[Path]:
    return sorted((FACES / "cacd").glob("*.jpg"))[:n - 1] + sorted((FACES / "taiwanese").glob("*.jpg"))[:1]


def link_faces(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for src in real(n):
        (folder / src.name).symlink_to(src)
    return sorted(folder.iterdir())


def assert_points_inside(face: dict, width: int, height: int) -> None:
    pts = np.array(face["landmarks"])
    assert pts.shape == (68, 2)
    assert (pts >= 0).all() and (pts[:, 0] < width).all() and (pts[:, 1] < height).all()


@needs_data
@needs_detector
def test_folder_of_real_faces(onnx_model, tmp_path, capsys):
    inputs = link_faces(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["--model", str(onnx_model), "--input", str(tmp_path / "in"), "--out", str(out)]) == 0
    doc = json.loads((out / "landmarks.json").read_text())
    assert [e["file"] for e in doc["images"]] == [p.name for p in inputs]
    assert doc["no_face"] == [] and doc["unreadable"] == {}
    for entry, src in zip(doc["images"], inputs):
        original, annotated = cv2.imread(str(src)), cv2.imread(str(out / src.name))
        assert annotated.shape == original.shape and entry["size"] == [original.shape[1], original.shape[0]]
        assert not np.array_equal(annotated, original)  # points and box drawn
        assert len(entry["faces"]) >= 1
        assert_points_inside(entry["faces"][0], *entry["size"])
    assert "3 images: 3 annotated" in capsys.readouterr().out


@needs_data
def test_single_image_whole_crop(onnx_model, tmp_path):
    src = link_faces(tmp_path / "in", 1)[0]
    out = tmp_path / "out"
    assert main(["--model", str(onnx_model), "--input", str(src), "--out", str(out), "--whole"]) == 0
    doc = json.loads((out / "landmarks.json").read_text())
    assert doc["detector"] == "whole image" and len(doc["images"]) == 1
    face = doc["images"][0]["faces"][0]
    assert face["box"] is None
    assert_points_inside(face, *doc["images"][0]["size"])
    assert (out / src.name).is_file()
    assert doc["mirror"] is True  # still images are mirror-averaged by default
    single = tmp_path / "single"
    assert main(["--model", str(onnx_model), "--input", str(src), "--out", str(single), "--whole", "--no-mirror"]) == 0
    one_pass = json.loads((single / "landmarks.json").read_text())
    assert one_pass["mirror"] is False
    assert np.abs(np.subtract(one_pass["images"][0]["faces"][0]["landmarks"], face["landmarks"])).max() > 0.01


@needs_data
@needs_detector
def test_corrupt_and_blank_images_are_reported_and_the_rest_done(onnx_model, tmp_path, capsys):
    folder = tmp_path / "in"
    link_faces(folder, 2)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    cv2.imwrite(str(folder / "blank.png"), np.full((200, 300, 3), 128, np.uint8))
    (folder / "notes.txt").write_text("not an image: ignored")
    out = tmp_path / "out"
    assert main(["--model", str(onnx_model), "--input", str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "corrupt.jpg" in printed.out + printed.err and "blank.png" in printed.out
    assert "1 without a face" in printed.out and "1 unreadable" in printed.out
    doc = json.loads((out / "landmarks.json").read_text())
    assert doc["no_face"] == ["blank.png"] and list(doc["unreadable"]) == ["corrupt.jpg"]
    assert sorted(e["file"] for e in doc["images"]) == sorted([*(p.name for p in real(2)), "blank.png"])
    assert (out / "blank.png").is_file() and not (out / "corrupt.jpg").exists()


def test_missing_path_exits_non_zero_with_a_clear_message(onnx_model, tmp_path):
    missing = tmp_path / "nope.jpg"
    run = subprocess.run([sys.executable, "-m", "runtime.predict", "--model", str(onnx_model), "--input", str(missing),
                          "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: {missing}: no such file or folder"


def test_output_folder_may_not_be_the_input_folder(onnx_model, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((64, 64, 3), 128, np.uint8))
    assert main(["--model", str(onnx_model), "--input", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "replace the originals" in capsys.readouterr().err


@needs_data
@needs_detector
def test_video_is_annotated(onnx_model, tmp_path):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (250, 250))
    for src in real(3):
        for _ in range(2):
            writer.write(cv2.resize(cv2.imread(str(src)), (250, 250)))
    writer.release()
    out = tmp_path / "out"
    assert main(["--model", str(onnx_model), "--input", str(clip), "--out", str(out), "--show-fps",
                 "--max-frames", "5"]) == 0
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = []
    while (ok := cap.read())[0]:
        frames.append(ok[1])
    assert len(frames) == 5 and frames[0].shape == (250, 250, 3)
    assert signal.getsignal(signal.SIGTERM) is before  # the stream's SIGTERM handling ends with the stream
    doc = json.loads((out / "landmarks.json").read_text())
    assert doc["mirror"] is False  # video: one pass per frame by default
    assert [f["frame"] for f in doc["frames"]] == list(range(5))
    for f in doc["frames"]:
        assert f["faces"], f"no face in frame {f['frame']}"
        assert_points_inside(f["faces"][0], 250, 250)
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4", "landmarks.json"]  # no partial file left


@needs_data
def test_tiny_grey_and_bgra_images_are_skipped_and_the_rest_of_the_folder_done(onnx_model, tmp_path, capsys):
    folder = tmp_path / "in"
    link_faces(folder, 2)
    cv2.imwrite(str(folder / "dot.png"), np.zeros((1, 1), np.uint8))  # 1x1 grayscale
    cv2.imwrite(str(folder / "tiny.png"), np.zeros((8, 8, 4), np.uint8))  # 8x8 BGRA
    out = tmp_path / "out"
    assert main(["--model", str(onnx_model), "--input", str(folder), "--out", str(out)]) == 0
    doc = json.loads((out / "landmarks.json").read_text())
    assert sorted(doc["unreadable"]) == ["dot.png", "tiny.png"]
    assert "too small" in doc["unreadable"]["dot.png"] and "dot.png" in doc["unreadable"]["dot.png"]
    assert len(doc["images"]) == 2 and all(im["faces"] for im in doc["images"])


def test_out_that_is_a_file_is_refused_by_name(onnx_model, tmp_path, capsys):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 128, np.uint8))
    taken = tmp_path / "taken"
    taken.write_text("a user's file")
    assert main(["--model", str(onnx_model), "--input", str(image), "--out", str(taken)]) == 2
    assert str(taken) in capsys.readouterr().err and taken.read_text() == "a user's file"


def numbered_video(path: Path, n: int = 40, fps: int = 20) -> None:
    """A face moving back and forth across a grey frame."""
    face = cv2.resize(cv2.imread(str(real(1)[0])), (150, 150))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (320, 240))
    for i in range(n):
        frame = np.full((240, 320, 3), 120, np.uint8)
        x = 40 + abs((2 * i) % 160 - 80)
        frame[45:195, x:x + 150] = face
        writer.write(frame)
    writer.release()


@needs_data
def test_a_damaged_video_keeps_true_frame_numbers_and_reports_the_missing_ones(onnx_model, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    numbered_video(clip)
    data = bytearray(clip.read_bytes())
    start = int(len(data) * 0.45)
    data[start:start + len(data) // 6] = bytes(len(data) // 6)  # a damaged stretch in the middle
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert main(["--model", str(onnx_model), "--input", str(broken), "--out", str(out)]) == 0
    doc = json.loads((out / "landmarks.json").read_text())
    numbers = [f["frame"] for f in doc["frames"]]
    assert len(numbers) < 40 and numbers == sorted(set(numbers)) and numbers[-1] == 39  # true numbers, not 0..n-1
    assert sorted(numbers + doc["missing_frames"]) == list(range(40))
    assert all(f["time_s"] == pytest.approx(f["frame"] / 20) for f in doc["frames"])
    assert "could not be read" in capsys.readouterr().err


@needs_data
def test_video_is_tracked_and_a_stale_partial_file_is_removed(onnx_model, tmp_path):
    clip = tmp_path / "clip.mp4"
    numbered_video(clip, 12)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".clip.partial.mp4").write_bytes(b"left by a killed run")
    assert main(["--model", str(onnx_model), "--input", str(clip), "--out", str(out), "--detect-every", "5"]) == 0
    doc = json.loads((out / "landmarks.json").read_text())
    assert [f["frame"] for f in doc["frames"]] == list(range(12)) and doc["missing_frames"] == []
    assert {face["track_id"] for f in doc["frames"] for face in f["faces"]} == {1}
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4", "landmarks.json"]


@needs_data
def test_sigterm_ends_a_video_keeping_what_was_written(onnx_model, tmp_path):
    import signal
    import time

    clip = tmp_path / "clip.mp4"
    numbered_video(clip, 400)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "runtime.predict", "--model", str(onnx_model), "--input", str(clip),
                             "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(out.glob(".clip.partial.mp4")) and time.time() < deadline:  # writing has begun
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    doc = json.loads((out / "landmarks.json").read_text())
    assert 0 < len(doc["frames"]) < 400
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4", "landmarks.json"]
