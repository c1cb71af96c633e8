"""End to end (issue 14): LandmarkDetector.detect, the face-score confirmation, box refinement, the video
tracker and its One Euro filter, on real faces.

Where a test needs to control the face score or visibility, they come from a stub backend around the real
ONNX model: the logic under test is the runtime's, not the network's.
"""
import numpy as np
import pytest

from core.metrics import nmse_per_face
from core.preprocess import read_image
from runtime import LandmarkDetector
from runtime.faces import box_from_landmarks, box_iou, detect_faces
from runtime.tracking import OneEuro, PointFilter
from tests.conftest import FACES, MASKS, needs_data, needs_masks


class ScoredBackend:
    """The real model's landmarks, with a face score and visibility chosen by the test."""

    def __init__(self, inner, score=1.0, visibility=1.0):
        self.inner, self.score, self.visibility = inner, score, visibility
        self.name, self.precision, self.max_batch = inner.name, inner.precision, inner.max_batch
        self.outputs = ("landmarks", "visibility", "face_score")
        self.calls, self.batches = 0, []

    def run(self, x):
        self.calls += 1
        self.batches.append(len(x))
        out = self.inner.run(x)
        n = len(x)
        score = self.score(x) if callable(self.score) else np.full(n, self.score, np.float32)
        return {"landmarks": out["landmarks"], "visibility": np.full((n, 68), self.visibility, np.float32),
                "face_score": np.asarray(score, np.float32)}


@pytest.fixture(scope="module")
def faces_val():
    from train.evaluate import load_faces

    return load_faces(FACES, "val", 12)


def sequence(face, occluder="none", motion="steady", seed=0):
    from train.video_eval import make_sequence

    image = read_image(FACES / face.path)
    return make_sequence(image, face.landmarks, face.box, motion, occluder, np.random.default_rng(seed), MASKS,
                         face.path, image)


class LandmarksOnly:
    """The real model with its heads hidden: a model trained without them."""

    def __init__(self, inner):
        self.inner, self.outputs = inner, ("landmarks",)
        self.name, self.precision, self.max_batch = inner.name, inner.precision, inner.max_batch

    def run(self, x):
        return {"landmarks": self.inner.run(x)["landmarks"]}


@needs_data
def test_detect_finds_each_face_from_its_path(onnx_model, faces_val):
    det = LandmarkDetector(onnx_model)
    for face in faces_val:
        found = det.detect(FACES / face.path)
        assert found, f"no face in {face.path}"
        best = max(found, key=lambda f: box_iou(f.box, tuple(face.box)))
        assert best.landmarks.shape == (68, 2)
        if det.has_heads:  # the shipped model: a confident face, most of its points visible
            assert best.score > 0.8 and best.visibility.shape == (68,) and best.visibility.mean() > 0.5
        else:
            assert best.visibility is None and best.score is None
        assert box_iou(best.box, tuple(face.box)) > 0.5
        assert nmse_per_face(best.landmarks, face.landmarks) < 15


@needs_data
def test_refining_a_displaced_box_brings_it_back_onto_the_face(onnx_model, faces_val):
    """A box 25 % off the face (as YuNet's are on occluded faces): one refinement moves it back."""
    det = LandmarkDetector(onnx_model)
    before, after, err_before, err_after = [], [], [], []
    for face in faces_val:
        image = read_image(FACES / face.path)
        x0, y0, x1, y1 = face.box
        shift = 0.25 * (x1 - x0)
        off = det.predict_face(image, (x0 + shift, y0 + shift, x1 + shift, y1 + shift))
        refined = det.refine(image, [off])[0]
        before.append(box_iou(off.box, tuple(face.box)))
        after.append(box_iou(refined.box, tuple(face.box)))
        err_before.append(nmse_per_face(off.landmarks, face.landmarks))
        err_after.append(nmse_per_face(refined.landmarks, face.landmarks))
    assert np.mean(after) > np.mean(before) + 0.1
    assert np.mean(err_after) < np.mean(err_before)


@needs_data
def test_box_from_landmarks_matches_the_teacher_boxes(faces_val):
    overlaps = [box_iou(box_from_landmarks(f.landmarks), tuple(f.box)) for f in faces_val]
    assert np.mean(overlaps) > 0.7 and min(overlaps) > 0.5


@needs_data
def test_detect_on_an_image_without_a_face_is_empty(onnx_model):
    det = LandmarkDetector(onnx_model)
    assert det.detect(np.full((240, 320, 3), 90, np.uint8)) == []


@needs_data
def test_the_face_score_decides_which_candidates_are_faces(onnx_model, faces_val):
    det = LandmarkDetector(onnx_model)
    path = FACES / faces_val[0].path
    det.backend = ScoredBackend(det.backend, score=0.9)
    kept = det.detect(path)
    assert len(kept) >= 1 and all(f.score == pytest.approx(0.9) for f in kept)
    det.backend.score = 0.1  # the model says: not a face
    assert det.detect(path) == []
    # without confirmation (YuNet's own threshold) the face score does not filter
    assert det.detect(path, candidate_score=None)
    # the low threshold proposes at least what YuNet's own does
    image = read_image(path)
    assert len(detect_faces(image, "yunet", 0.3)) >= len(detect_faces(image, "yunet"))


@needs_data
@needs_masks
def test_tracker_keeps_one_id_and_detects_only_when_due(onnx_model, faces_val):
    det = LandmarkDetector(onnx_model)
    seq = sequence(faces_val[1])
    tracker = det.tracker(detect_every=25, smoothing=None)
    ids, detections = set(), []
    for t, frame in enumerate(seq.frames):
        faces = tracker.update(frame)
        assert len(faces) == 1, f"frame {t}: {len(faces)} faces"
        ids.add(faces[0].track_id)
        detections.append(tracker.ran_detection)
        assert nmse_per_face(faces[0].landmarks, seq.truth[t]) < 15
    assert ids == {1}
    assert [t for t, d in enumerate(detections) if d] == [0, 25, 50]


@needs_data
@needs_masks
def test_a_track_survives_an_occluder_that_arrives_after_the_face_was_found(onnx_model, faces_val):
    seq = sequence(faces_val[2], occluder="bar")
    assert seq.occluded.any() and not seq.occluded[0]
    det = LandmarkDetector(onnx_model)
    det.backend = ScoredBackend(det.backend, score=0.9)
    tracker = det.tracker(detect_every=1000)
    for t, frame in enumerate(seq.frames):
        faces = tracker.update(frame)
        assert [f.track_id for f in faces] == [1], f"frame {t}"
        assert nmse_per_face(faces[0].landmarks, seq.truth[t]) < 20, f"frame {t}"


@needs_data
@needs_masks
def test_a_lost_face_ends_its_track_and_detection_runs_again(onnx_model, faces_val):
    seq = sequence(faces_val[3])
    det = LandmarkDetector(onnx_model)
    det.backend = ScoredBackend(det.backend, score=0.9)
    tracker = det.tracker(detect_every=1000)
    assert [f.track_id for f in tracker.update(seq.frames[0])] == [1]
    det.backend.score = 0.2  # below lost_score: the model says the crop holds no face
    assert tracker.update(seq.frames[1]) == []  # lost, and the detection's candidates are refused too
    det.backend.score = 0.9
    faces = tracker.update(seq.frames[2])
    assert tracker.ran_detection and [f.track_id for f in faces] == [2]


@needs_data
@needs_masks
def test_without_a_face_score_a_detection_frame_with_no_face_ends_the_track(onnx_model, faces_val):
    det = LandmarkDetector(onnx_model)
    det.backend = LandmarksOnly(det.backend)
    seq = sequence(faces_val[4])
    tracker = det.tracker(detect_every=2, smoothing=None)
    assert len(tracker.update(seq.frames[0])) == 1
    assert len(tracker.update(seq.frames[1])) == 1  # tracked, no detection
    blank = np.full_like(seq.frames[0], 90)
    assert tracker.update(blank) == []  # detection frame: nothing there


def test_smoothing_steadies_a_still_face_follows_a_moving_one_and_holds_hidden_points_harder():
    rng = np.random.default_rng(0)
    truth = rng.uniform(50, 150, (68, 2))  # a face of about 100 px
    noisy = [truth + rng.normal(0, 1.0, truth.shape) for _ in range(90)]
    filt = PointFilter(OneEuro())
    out = np.array([filt(p, t / 30) for t, p in enumerate(noisy)])
    assert np.std(out[30:] - truth) < 0.5 * np.std(np.array(noisy)[30:] - truth)
    # a face moving at 3 px per frame, rotating and growing: after settling, the lag stays within a pixel
    filt = PointFilter(OneEuro())
    centre = truth.mean(0)
    moving = [(truth - centre) @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]).T * (1 + 0.002 * t)
              + centre + [3.0 * t, 0.0] for t, a in enumerate(np.linspace(0, 0.3, 90))]
    out = np.array([filt(p, t / 30) for t, p in enumerate(moving)])
    assert np.abs(out[60:] - np.array(moving)[60:]).max() < 1.0
    # hidden points are smoothed harder
    filt = PointFilter(OneEuro())
    vis = np.r_[np.ones(34), np.zeros(34)]
    out = np.array([filt(p, t / 30, vis) for t, p in enumerate(noisy)])
    err = np.linalg.norm(out[30:] - truth, axis=-1)
    assert err[:, 34:].mean() < err[:, :34].mean()


def test_with_points_hidden_the_next_crop_follows_the_visible_ones():
    """Under an occluder the crop comes from the last unoccluded shape moved onto the visible points, not from
    the hidden points' guesses; with every point visible, from the landmarks as they are."""
    from runtime.detector import FaceLandmarks
    from runtime.tracking import MIN_FIT_POINTS, Track, similarity

    rng = np.random.default_rng(0)
    shape = rng.uniform(100, 200, (68, 2))
    track = Track(1, FaceLandmarks((0, 0, 1, 1), shape, np.ones(68), 0.9), smoothing=None)
    angle, scale = 0.1, 1.05
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = shape @ rot.T + (7.5, -3.0)
    np.testing.assert_allclose(similarity(shape, moved), np.hstack([rot, np.array([[7.5], [-3.0]])]), atol=1e-9)
    guessed = moved.copy()
    hidden = np.arange(68) < 40
    guessed[hidden] += rng.normal(0, 15, (40, 2))  # the model's guesses under the occluder
    visibility = np.where(hidden, 0.1, 0.9)
    track.face = FaceLandmarks((0, 0, 1, 1), guessed, visibility, 0.9)
    np.testing.assert_allclose(track.crop_box(), box_from_landmarks(moved), atol=1e-6)
    assert np.abs(np.subtract(box_from_landmarks(guessed), box_from_landmarks(moved))).max() > 5
    track.remember_shape()  # an occluded frame is not remembered
    np.testing.assert_allclose(track.shape, shape)
    few = np.where(np.arange(68) < 68 - MIN_FIT_POINTS + 1, 0.1, 0.9)  # too few visible points to fit
    track.face = FaceLandmarks((0, 0, 1, 1), guessed, few, 0.9)
    assert track.crop_box() == box_from_landmarks(guessed)
    track.face = FaceLandmarks((0, 0, 1, 1), guessed, np.ones(68), 0.9)
    assert track.crop_box() == box_from_landmarks(guessed)
    track.remember_shape()
    np.testing.assert_allclose(track.shape, guessed)


def test_hidden_points_are_completed_from_the_remembered_shape_by_their_visibility():
    """complete_hidden: a hidden point's output leaves the model's guess for the last unoccluded shape moved
    onto the visible points, in proportion to how surely it is hidden; visible points stay the model's."""
    from runtime.detector import FaceLandmarks
    from runtime.tracking import Track

    rng = np.random.default_rng(1)
    shape = rng.uniform(100, 200, (68, 2))
    track = Track(1, FaceLandmarks((0, 0, 1, 1), shape, np.ones(68), 0.9), smoothing=None)
    moved = shape * 0.9 + (12.0, 4.0)
    guessed = moved + np.where((np.arange(68) < 30)[:, None], rng.normal(0, 10, (68, 2)), 0.0)
    visibility = np.r_[np.zeros(20), np.full(10, 0.25), np.ones(38)]
    track.face = FaceLandmarks((0, 0, 1, 1), guessed, visibility, 0.9)
    out = track.landmarks(complete_hidden=True)
    np.testing.assert_allclose(out[:20], moved[:20], atol=1e-4)  # surely hidden: the remembered shape
    np.testing.assert_allclose(out[20:30], 0.25 * guessed[20:30] + 0.75 * moved[20:30], atol=1e-4)
    np.testing.assert_allclose(out[30:], guessed[30:], atol=1e-4)
    np.testing.assert_array_equal(track.landmarks(complete_hidden=False), guessed)
    track.face = FaceLandmarks((0, 0, 1, 1), guessed, np.ones(68), 0.9)  # nothing hidden: the model's points
    np.testing.assert_array_equal(track.landmarks(complete_hidden=True), guessed)


@needs_data
def test_mirror_hidden_mirrors_only_a_track_whose_last_frame_had_a_hidden_point(onnx_model, faces_val):
    seq = sequence(faces_val[1])
    det = LandmarkDetector(onnx_model)
    det.backend = backend = ScoredBackend(det.backend, score=0.9)
    tracker = det.tracker(detect_every=1000, mirror_hidden=True)
    crops, mirrored = [], []
    for t, frame in enumerate(seq.frames[:6]):
        backend.visibility = 0.2 if t in (2, 3) else 1.0  # the model calls every point hidden on frames 2 and 3
        backend.batches.clear()
        tracker.update(frame)
        crops.append(sum(backend.batches))
        mirrored.append(tracker.mirrored)
    # frame 0 detects; a frame is mirrored (two crops: the crop and its mirror image) after a frame with hidden points
    assert mirrored == [0, 0, 0, 1, 1, 0]
    assert crops[1:] == [1, 1, 2, 2, 1]


@needs_data
def test_the_tracker_detects_at_its_own_frame_side(onnx_model, faces_val):
    import cv2

    small = cv2.resize(read_image(FACES / faces_val[0].path), None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)
    frame = np.full((480, 640, 3), 40, np.uint8)  # a face box of about 25 px: found at 640, lost at 160
    frame[200:200 + small.shape[0], 300:300 + small.shape[1]] = small
    det = LandmarkDetector(onnx_model)
    assert det.tracker(detect_max_side=640).update(frame)
    assert det.tracker(detect_max_side=160).update(frame) == []


def test_tracker_arguments_are_checked(onnx_model):
    det = LandmarkDetector(onnx_model)
    with pytest.raises(ValueError, match="detect_every"):
        det.tracker(detect_every=0)
    with pytest.raises(ValueError, match="fps"):
        det.tracker(fps=0)
    with pytest.raises(ValueError, match="batch_size"):
        LandmarkDetector(onnx_model, batch_size=0)


@needs_data
@needs_masks
def test_end_to_end_command_reports_every_pipeline_and_condition(onnx_model, tmp_path):
    from train.end_to_end import main

    doc = main(["--model", str(onnx_model), "--split", "val", "--limit", "2", "--json", str(tmp_path / "e2e.json")])
    pipelines = doc["pipelines"]
    heads = LandmarkDetector(onnx_model).has_heads  # without a face score there is nothing to confirm with
    assert set(pipelines) == {"oracle", "detector", "+refine", "detect"} | ({"+confirm"} if heads else set())
    assert pipelines["oracle"]["clean"]["found"] == 1.0 and pipelines["oracle"]["clean"]["faces"] == 2
    assert pipelines["detect"]["clean"]["found"] == 1.0 and pipelines["detect"]["clean"]["failure"] == 0.0
    assert set(pipelines["detect"]) == {"clean", "10-20", "30-40", "40-50", "50-60", "center25", "textured"}
    assert (tmp_path / "e2e.json").is_file()
    # the same faces placed in a camera-sized frame: the ground truth moves with them
    placed = main(["--model", str(onnx_model), "--split", "val", "--limit", "2", "--frame", "640x480",
                   "--face-size", "120", "--pipelines", "oracle", "detect", "--max-side", "320"])["pipelines"]
    assert set(placed) == {"oracle", "detect"} and placed["detect"]["clean"]["found"] == 1.0
    before, after = pipelines["oracle"]["clean"]["nmse_found"], placed["oracle"]["clean"]["nmse_found"]
    assert abs(after - before) < 0.25 * before


@needs_data
@needs_masks
def test_video_command_measures_jitter_and_tracking(onnx_model, tmp_path):
    from train.video_eval import main

    doc = main(["--model", str(onnx_model), "--split", "val", "--faces-per-kind", "1"])
    results = doc["results"]
    assert set(results) == {"tracker, smoothed", "tracker, no smoothing", "detect every frame"}
    smoothed, raw = results["tracker, smoothed"], results["tracker, no smoothing"]
    assert smoothed["occluded_frames"] > 0 and 0 <= smoothed["occluded_tracked"] <= 1
    assert 0 < smoothed["jitter_px"] < raw["jitter_px"] < 2.0  # the filter steadies the points
    assert results["detect every frame"]["detection_share"] == 1.0 and raw["detection_share"] < 0.1
    only = main(["--model", str(onnx_model), "--split", "val", "--faces-per-kind", "1", "--modes", "raw"])
    assert list(only["results"]) == ["tracker, no smoothing"]
    again = only["results"]["tracker, no smoothing"]
    assert all(again[k] == raw[k] for k in raw if not k.startswith("ms_"))  # the same sequences and points
    with pytest.raises(SystemExit):
        main(["--model", str(onnx_model), "--modes", "tracker,fast"])
