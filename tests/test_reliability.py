"""Issue 15, items 7 and 9: every bad input answers with a clear error naming the file and the problem (or is
handled as documented), and nothing a killed run leaves behind is lost or left lying about."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.fake_tensorrt import install, synthetic_faces, tiny_onnx

CHW = (3, 256, 256)
UNWRITABLE = Path("/sys")  # no file can be created there, not even by root


def fixed_batch_onnx(path: Path, batch: int) -> Path:
    """``tiny_onnx`` exported with a fixed batch instead of a dynamic one."""
    import onnx

    model = onnx.load(str(tiny_onnx(path)))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(model, str(path))
    return path


def unwritable() -> Path:
    try:
        open(UNWRITABLE / "probe", "wb").close()
    except OSError:
        return UNWRITABLE
    pytest.skip(f"{UNWRITABLE} is writable here")


# --------------------------------------------------------------------------------------- fixed-batch ONNX


def test_fixed_batch_onnx_runs_every_batch_size(tmp_path):
    from runtime import LandmarkDetector
    from runtime.onnxruntime_backend import OnnxRuntimeBackend

    x = np.random.default_rng(0).normal(size=(5, *CHW)).astype(np.float32)
    dynamic = OnnxRuntimeBackend(tiny_onnx(tmp_path / "dynamic.onnx"))
    assert dynamic.max_batch is None
    want = dynamic.run(x)["landmarks"]
    for batch in (1, 2, 8):  # split (5 = 1+1+1+1+1, 2+2+1) and padded (5 of 8)
        fixed = OnnxRuntimeBackend(fixed_batch_onnx(tmp_path / f"fixed{batch}.onnx", batch))
        assert fixed.max_batch == batch
        got = fixed.run(x)["landmarks"]
        assert got.shape == (5, 68, 2)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # the case: a batch-1 export under LandmarkDetector with several faces
    images = [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(3)]
    expected = LandmarkDetector(tmp_path / "dynamic.onnx").predict_batch(images)
    for got, want_pts in zip(LandmarkDetector(tmp_path / "fixed1.onnx").predict_batch(images), expected):
        np.testing.assert_allclose(got, want_pts, rtol=1e-6, atol=1e-4)


def test_onnx_input_of_the_wrong_shape_names_the_model(tmp_path):
    from runtime.onnxruntime_backend import OnnxRuntimeBackend

    path = tiny_onnx(tmp_path / "model.onnx")
    backend = OnnxRuntimeBackend(path)
    for bad in (np.zeros((2, 3, 128, 128), np.float32), np.zeros((0, *CHW), np.float32)):
        with pytest.raises(ValueError, match=rf"{path}: expected input \(N, 3, 256, 256\) with N >= 1"):
            backend.run(bad)


# ---------------------------------------------------------------------------------------------- boxes


@pytest.mark.parametrize("box, message", [
    ((0, 0, float("inf"), 50), "finite and within"),
    ((float("nan"), 0, 50, 50), "finite and within"),
    ((0, 0, 1e30, 1e30), "finite and within"),
    ((-2e6, 0, 50, 50), "finite and within"),
    ((10, 10, 5, 50), "need x1 > x0 and y1 > y0"),
    ((1, 2, 3), "need four numbers"),
    (None, "need four numbers"),
])
def test_absurd_face_boxes_are_named(box, message):
    from core.preprocess import crop_matrix

    with pytest.raises(ValueError, match="invalid face box") as err:
        crop_matrix(box)
    assert message in str(err.value)


def test_huge_but_finite_box_gives_a_crop_not_an_opencv_error():
    from core.preprocess import crop_face

    image = np.full((48, 64, 3), 200, np.uint8)
    for box in [(0, 0, 9e5, 9e5), (-1e6, -1e6, 1e6, 1e6)]:
        crop, _ = crop_face(image, box)  # the image shrinks to a dot in the middle of a black crop
        assert crop.shape == (256, 256, 3) and crop[0, 0].sum() == 0


# -------------------------------------------------------------------------------------------- sidecar


@pytest.mark.parametrize("text, message", [("[1, 2]", "a JSON list, not an object"),
                                           ('"fp16"', "a JSON str, not an object"),
                                           ("{not json", "not a readable engine sidecar"),
                                           ("", "not a readable engine sidecar")])
def test_engine_sidecar_that_is_not_a_json_object(monkeypatch, tmp_path, text, message):
    from runtime.backends import load_backend

    install(monkeypatch, "10.x")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    sidecar = tmp_path / "model.engine.json"
    sidecar.write_text(text)
    with pytest.raises(ValueError) as err:
        load_backend(engine)
    assert str(err.value).startswith(f"{sidecar}: ") and message in str(err.value)
    assert "export/build_engine.py" in str(err.value)


# ---------------------------------------------------------------------------------------- output paths


def test_output_path_check(tmp_path):
    from core.files import check_output_path

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    check_output_path(tmp_path / "new" / "deeper" / "m.onnx")  # folders to create are fine
    check_output_path(tmp_path / "run", folder=True)
    check_output_path(tmp_path, folder=True)
    check_output_path(a_file)  # replacing a file is the caller's --force question
    cases = [(tmp_path, False, f"{tmp_path}: is a folder, not a file"),
             (a_file, True, f"{a_file}: is a file, not a folder"),
             (a_file / "m.onnx", False, f"{a_file / 'm.onnx'}: cannot be written, {a_file} is a file, not a folder"),
             (a_file / "run" / "x", True, (f"{a_file / 'run' / 'x'}: cannot be written, {a_file} is a file, not a "
                                           f"folder")),
             (unwritable() / "run", True, (f"{UNWRITABLE / 'run'}: cannot be written, no write access to "
                                           f"{UNWRITABLE} (Permission denied)"))]
    for path, folder, message in cases:
        with pytest.raises(ValueError) as err:
            check_output_path(path, folder)
        assert str(err.value) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # the check creates nothing


def bad_outputs(tmp_path: Path, name: str) -> list[tuple[Path, str]]:
    """(--out, what the error says) for a folder, a path under a file and an unwritable folder."""
    folder = tmp_path / name
    folder.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return [(folder, "is a folder, not a file"), (a_file / name, f"{a_file} is a file, not a folder"),
            (unwritable() / name, "no write access to /sys")]


def test_export_onnx_refuses_an_unwritable_out(tmp_path, capsys):
    from export.export_onnx import main

    for out, message in bad_outputs(tmp_path, "m.onnx"):
        with pytest.raises(SystemExit) as exit_:
            main(["--checkpoint", str(tmp_path / "unused.pt"), "--out", str(out), "--force"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"error: {out}: " in err and message in err, err
        assert "Traceback" not in err


def test_build_engine_refuses_an_unwritable_out(monkeypatch, tmp_path, capsys):
    from export.build_engine import main

    fake = install(monkeypatch, "10.x")
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    for out, message in bad_outputs(tmp_path, "m.engine"):
        assert main(["--onnx", str(onnx_path), "--precision", "fp32", "--out", str(out), "--force"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out}: ") and message in err and err.count("\n") == 1, err
    assert not fake.named("Builder")  # refused before any work


def test_quantize_refuses_an_unwritable_output(monkeypatch, tmp_path, capsys):
    from export import quantize

    made = []
    monkeypatch.setattr(quantize, "make_fp16", lambda src, dst: made.append(dst) or tiny_onnx(dst, "fp16"))
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    for out, message in bad_outputs(tmp_path, "m.fp16.onnx"):
        with pytest.raises(SystemExit) as exit_:
            quantize.main(["--onnx", str(onnx_path), "--fp16", str(out)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"error: {out}: " in err and message in err, err
    assert not made


def assert_refuses_unwritable_run_folders(parse_args, tmp_path, capsys) -> Path:
    """``parse_args(["--out", X])`` exits 2 naming X for a file, a folder under a file and an unwritable folder;
    returns the file it made."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, message in [(a_file, "is a file, not a folder"), (a_file / "run", f"{a_file} is a file"),
                         (unwritable() / "run", "no write access to /sys")]:
        with pytest.raises(SystemExit) as exit_:
            parse_args(["--out", str(out)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"error: {out}: " in err and message in err, err
    return a_file


def test_train_refuses_an_unwritable_run_folder(tmp_path, capsys):
    from train.train import parse_args

    assert_refuses_unwritable_run_folders(parse_args, tmp_path, capsys)


# ------------------------------------------------------------------------------------- leftovers: train


def killed_write(path: Path) -> Path:
    """What core.files.atomic_write_bytes leaves when the process dies just before the rename."""
    code = ("import os, sys; import core.files as f; os.replace = lambda *a: os._exit(9); "
            "f.atomic_write_bytes(sys.argv[1], b'half a checkpoint')")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, check=False)
    assert proc.returncode == 9
    (tmp,) = path.parent.glob(f".{path.name}.*.tmp")
    return tmp


def test_run_folder_temp_files_of_a_killed_write_are_removed_on_the_next_start(tmp_path, capsys):
    from train.loop import open_run

    run = tmp_path / "run"
    leftovers = [killed_write(run / "last.pt"), killed_write(run / "history.json")]
    (run / ".best.pt.abc_x123.tmp").write_bytes(b"x")
    leftovers.append(run / ".best.pt.abc_x123.tmp")
    others = [".last.pt.tmp", "last.pt.abcd1234.tmp", ".last.pt.ABCD1234.tmp", ".other.pt.abcd1234.tmp",
              ".last.pt.abcd1234.tmp.keep", "notes.txt"]
    for name in others:
        (run / name).write_bytes(b"mine")
    (run / ".last.pt.dir12345.tmp").mkdir()
    others.append(".last.pt.dir12345.tmp")

    (run / "last.pt").write_bytes(b"a run")  # a fresh start that is refused touches nothing
    with pytest.raises(SystemExit, match="holds a run already"):
        open_run(run, resume=False, force=False, epochs=2, load=None)
    assert all(p.exists() for p in leftovers)
    (run / "last.pt").unlink()

    capsys.readouterr()
    assert open_run(run, resume=False, force=False, epochs=2, load=None) is None
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in run.iterdir()) == sorted(others)
    logged = capsys.readouterr().err.splitlines()
    assert len(logged) == 1 and logged[0].startswith(f"{run}: removed 3 temp file(s)")
    assert all(p.name in logged[0] for p in leftovers)


# ---------------------------------------------------------------------------------- leftovers: annotate


class FakeTeacher:
    """A fast, deterministic stand-in for dlib: a box and 68 points that depend on the pixels (no face in
    some images); ``stop_at``: the label() call that raises KeyboardInterrupt, as a kill would stop the run."""

    calls = 0
    stop_at: int | None = None

    def label(self, image):
        FakeTeacher.calls += 1
        if FakeTeacher.calls == FakeTeacher.stop_at:
            raise KeyboardInterrupt
        if image[0, 0, 0] % 4 == 0:
            return None
        mean = image.reshape(-1, 3).mean(0) / 7.0
        box = (mean[0], mean[1], mean[0] + 40.3, mean[1] + 41.7)
        return box, self.mirrored(image, box)[::-1].copy()

    def mirrored(self, image, box):
        return (np.sqrt(np.arange(136.0)).reshape(68, 2) + image[:68, :2, 1] / 3.0 + box[0]).astype(np.float32)


class InlinePool:
    """multiprocessing.Pool in this process, so the fake teacher and its counter are the ones used."""

    def __init__(self, processes, initializer):
        initializer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, fn, jobs, chunksize=1):
        return map(fn, jobs)

    def close(self):
        pass

    def join(self):
        pass


def test_annotate_continues_a_killed_run_and_ends_with_identical_labels(monkeypatch, tmp_path):
    from train import annotate

    monkeypatch.setattr(annotate, "Teacher", FakeTeacher)
    monkeypatch.setattr(annotate, "Pool", InlinePool)
    monkeypatch.setattr(annotate, "PROGRESS_EVERY", 3, raising=False)
    faces = synthetic_faces(tmp_path / "faces", 12)
    (faces / "corrupt.jpg").write_bytes(b"garbage")  # failed without the teacher: 13 jobs, 12 teacher calls

    reference = annotate.annotate(faces, workers=1, out=tmp_path / "reference" / "labels.json")
    doc = json.loads(reference.read_text())
    assert len(doc["entries"]) >= 6 and len(doc["failed"]) >= 2  # both kinds of record are compared

    out = tmp_path / "resumed" / "labels.json"
    partial = out.with_name("labels.json.partial")
    FakeTeacher.calls, FakeTeacher.stop_at = 0, 8  # killed while labelling the 9th job: 8 done, 6 saved
    with pytest.raises(KeyboardInterrupt):
        annotate.annotate(faces, workers=1, out=out)
    assert not out.exists()  # nothing under the final name
    saved = json.loads(partial.read_text())
    assert len(saved["entries"]) + len(saved["failed"]) == 6
    killed_write(partial)  # and a progress write that was killed halfway

    FakeTeacher.calls, FakeTeacher.stop_at = 0, None
    annotate.annotate(faces, workers=1, out=out)
    assert FakeTeacher.calls == 12 - 5  # the corrupt file and 5 labelled images were saved
    assert out.read_bytes() == reference.read_bytes()
    assert out.with_name("report.txt").read_bytes() == reference.with_name("report.txt").read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.json", "report.txt"]


def test_annotate_ignores_progress_of_another_folder(monkeypatch, tmp_path, capsys):
    from train import annotate

    monkeypatch.setattr(annotate, "Teacher", FakeTeacher)
    monkeypatch.setattr(annotate, "Pool", InlinePool)
    from core.files import sha1_file

    faces = synthetic_faces(tmp_path / "faces", 3)
    out = tmp_path / "labels.json"
    record = {"sha1": sha1_file(faces / "face_00.png"), "reason": "saved for another folder"}
    out.with_name("labels.json.partial").write_text(json.dumps(
        {"faces_dir": str(tmp_path / "elsewhere"), "teacher": annotate.TEACHER, "entries": {},
         "failed": {"face_00.png": record}}))
    FakeTeacher.calls, FakeTeacher.stop_at = 0, None
    annotate.annotate(faces, workers=1, out=out)
    assert FakeTeacher.calls == 3 and "labels.json.partial: ignored" in capsys.readouterr().err
    assert not out.with_name("labels.json.partial").exists()


# ------------------------------------------------------------------------- leftovers and overwrites: export

KILLED_EXPORT = """
import os, sys
import export.export_onnx as e
from core.files import atomic_write_bytes

def killed(args, onnx_path, golden_path):  # killed halfway through writing the model into its temp file
    os.replace = lambda *a: os._exit(9)
    atomic_write_bytes(onnx_path, b"half a model")

e.export_checked = killed
e.main(["--checkpoint", "unused.pt", "--out", sys.argv[1]])
"""


def test_export_onnx_removes_the_temp_files_of_a_killed_export(monkeypatch, tmp_path, capsys):
    from export import export_onnx

    out = tmp_path / "m.onnx"
    proc = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(out)], cwd=ROOT, check=False)
    assert proc.returncode == 9 and not out.exists()
    leftovers = sorted(tmp_path.iterdir())
    assert len(leftovers) == 3  # the model's and the golden set's temp files, and the temp of the model's
    others = [".m.onnx.tmp", "m.onnx.abc123.tmp", ".m.onnx.ABC123.tmp", ".other.onnx.abc123.tmp",
              ".m.onnx.abc123.tmp.keep", "..m.onnx.tmp.abc123.tmp", "notes.txt"]
    for name in others:
        (tmp_path / name).write_bytes(b"mine")
    (tmp_path / ".m.onnx.dir12345.tmp").mkdir()
    others.append(".m.onnx.dir12345.tmp")

    def export_checked(args, onnx_path, golden_path):
        onnx_path.write_bytes(b"a model")
        return {}

    monkeypatch.setattr(export_onnx, "export_checked", export_checked)
    capsys.readouterr()
    export_onnx.main(["--checkpoint", str(tmp_path / "unused.pt"), "--out", str(out)])
    assert out.read_bytes() == b"a model"
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, "m.onnx"])
    removed = [line for line in capsys.readouterr().out.splitlines() if "temp file" in line]
    assert len(removed) == 1 and removed[0].startswith(f"{tmp_path}: removed 3 temp file(s) a killed export left")
    assert all(p.name in removed[0] for p in leftovers)


def test_quantize_overwrites_only_with_force_and_never_its_source(monkeypatch, tmp_path, capsys):
    from export import quantize

    made = []
    monkeypatch.setattr(quantize, "make_fp16", lambda src, dst: made.append(dst) or tiny_onnx(dst, "fp16"))
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    source = onnx_path.read_bytes()
    link = tmp_path / "link.onnx"
    link.symlink_to(onnx_path.name)
    earlier = tmp_path / "m.fp16.onnx"
    earlier.write_bytes(b"an earlier run")
    new = tmp_path / "new.onnx"
    for args, message in [(["--fp16", earlier], f"{earlier} exists; pass --force to replace it"),
                          (["--fp16", onnx_path, "--force"], f"{onnx_path}: is the --onnx file"),
                          (["--fp16", link, "--force"], f"{link}: is the --onnx file"),  # resolved paths
                          (["--int8", link, "--force"], f"{link}: is the --onnx file; give --int8"),
                          (["--fp16", new, "--int8", new], f"{new}: given as both --fp16 and --int8")]:
        with pytest.raises(SystemExit) as exit_:
            quantize.main(["--onnx", str(onnx_path), *map(str, args)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"error: {message}" in err, err
    assert not made and onnx_path.read_bytes() == source and earlier.read_bytes() == b"an earlier run"
    quantize.main(["--onnx", str(onnx_path), "--fp16", str(earlier), "--force"])
    assert made == [earlier] and quantize.read_metadata(earlier)["precision"] == "fp16"


def test_build_engine_checks_its_cache_paths_before_any_work(monkeypatch, tmp_path, capsys):
    from export import quantize
    from export.build_engine import main

    fake = install(monkeypatch, "10.x")
    made = []
    monkeypatch.setattr(quantize, "make_fp16", lambda src, dst: made.append(dst) or tiny_onnx(dst, "fp16"))
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    out = tmp_path / "m.engine"
    for option, precision in [("--timing-cache", ["--precision", "fp16"]),
                              ("--calib-cache", ["--precision", "int8", "--calibrator", "entropy"])]:
        cases = [*bad_outputs(tmp_path, option.strip("-")), (onnx_path, "is the ONNX file or OUT")]
        for cache, message in cases:
            assert main(["--onnx", str(onnx_path), *precision, "--out", str(out), option, str(cache)]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and str(cache) in err and message in err and err.count("\n") == 1, err
    assert not made and not fake.named("Builder") and not out.exists()  # refused before any work


def test_fan_refuses_an_unwritable_run_folder(tmp_path, capsys):
    from train.fan import parse_args

    a_file = assert_refuses_unwritable_run_folders(parse_args, tmp_path, capsys)
    assert parse_args(["--out", str(a_file), "--size"]).size  # --size writes nothing: no folder to check
