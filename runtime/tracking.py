"""Video: faces tracked from frame to frame, and landmarks smoothed over time.

    det = LandmarkDetector("model.onnx")
    tracker = det.tracker()                  # FaceTracker
    for frame in frames:
        for face in tracker.update(frame):   # TrackedFace: track_id, box, landmarks, visibility, score
            ...

A tracked frame crops each face from its landmarks of the previous frame (no detection): the box then
moves with the face instead of jumping with the detector, and an occluder that arrives after the face was
found cannot make the face disappear, since no detector has to find it again; while the model says points
are hidden, the crop comes from the visible ones (Track.crop_box). Detection (LandmarkDetector
.detect) runs on the first frame, every ``detect_every`` frames (to pick up new faces) and on any frame
where a track was lost. With a face score, a track is lost when the model scores its crop below
``lost_score``; a model without heads has no such signal, so its tracks end when a detection frame finds
no face on them.

Landmarks are smoothed by One Euro filters (Casiez et al., CHI 2012): low-passes whose cutoff rises with
speed, so a still face is steady and a moving one does not lag. The face's pose (centre, scale, angle)
and its shape are filtered apart (OneEuro), speeds are measured relative to the face's size, so the
parameters hold at any resolution, and points the model says are hidden are smoothed harder. The filter
only shapes the output: the next frame's crop comes from the unsmoothed landmarks, so smoothing cannot
make the tracker lag behind the face.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional

import numpy as np

from core.preprocess import ensure_bgr

from .detector import VISIBLE, FaceLandmarks, box_area, distinct
from .faces import box_from_landmarks, box_iou, load_detector

if TYPE_CHECKING:
    from .detector import LandmarkDetector

SAME_FACE_IOU = 0.4  # a detection overlapping a track this much is that track's face
# Detection frames shrink the frame to this longest side for the face detector (images use DETECT_MAX_SIDE):
# YuNet's cost grows with the pixels, and a detection frame must not stall the video (docs/end_to_end.md).
VIDEO_DETECT_MAX_SIDE = 480
MIN_FIT_POINTS = 8  # visible points a track needs to move its last unoccluded shape onto them


@dataclass
class OneEuro:
    """Parameters of the landmark smoothing. Each face is split into its pose (centre, scale, in-plane angle)
    and its shape (the points with the pose taken out), each smoothed by a One Euro filter: the pose, well
    measured (it averages 68 points) and moving fast, lightly; the shape, noisier and slower, harder. A
    single filter on the points would have to choose between lag on moving faces and jitter.

    ``min_cutoff`` (Hz): the shape's cutoff at rest (lower = steadier); ``beta``: how fast it rises with the
    shape's speed; ``pose_min_cutoff`` and ``pose_beta``: the same for the pose (speeds in face sizes, log
    scale and radians per second); ``d_cutoff`` (Hz): smoothing of the speed estimates;
    ``hidden_cutoff_factor``: a hidden point's shape cutoff is scaled by it (blended by the visibility
    probability). Defaults chosen on val sequences by ``python -m train.video_eval --sweep``."""

    min_cutoff: float = 0.25
    beta: float = 2.0
    pose_min_cutoff: float = 8.0
    pose_beta: float = 8.0
    d_cutoff: float = 1.0
    hidden_cutoff_factor: float = 0.3


def _alpha(cutoff, dt: float):
    tau = 1.0 / (2 * np.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class _Euro:
    """One Euro filter (Casiez et al. 2012) over an array: the speed of a row is its norm over the last axis
    (a scalar's, its absolute value), divided by ``scale``."""

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.t: Optional[float] = None

    def __call__(self, x, t: float, scale: float = 1.0, factor=1.0):
        x = np.asarray(x, np.float64)
        if self.t is None:
            self.t, self.x, self.dx = t, x, np.zeros_like(x)
            return x
        dt = t - self.t
        self.dx = self.dx + _alpha(self.d_cutoff, dt) * ((x - self.x) / dt - self.dx)
        speed = (np.linalg.norm(self.dx, axis=-1) if x.ndim > 1 else np.abs(self.dx)) / scale
        a = _alpha((self.min_cutoff + self.beta * speed) * factor, dt)
        self.x = self.x + (a[..., None] if x.ndim > 1 else a) * (x - self.x)
        self.t = t
        return self.x


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


class PointFilter:
    """Smoothing of one face's (68, 2) landmarks over time: pose and shape filtered apart (see OneEuro)."""

    def __init__(self, params: OneEuro):
        self.params = params
        pose = (params.pose_min_cutoff, params.pose_beta, params.d_cutoff)
        self.centre, self.log_scale, self.angle = _Euro(*pose), _Euro(*pose), _Euro(*pose)
        self.shape = _Euro(params.min_cutoff, params.beta, params.d_cutoff)
        self.t: Optional[float] = None
        self.reference = None  # the first frame's shape: angles are measured against it
        self.last_angle = 0.0

    def __call__(self, points: np.ndarray, t: float, visibility: np.ndarray | None = None) -> np.ndarray:
        points = np.asarray(points, np.float64)
        if self.t is not None and t <= self.t:  # time went backwards (a seek): start afresh
            self.__init__(self.params)
        self.t = t
        centre = points.mean(0)
        spread = float(np.sqrt(((points - centre) ** 2).sum(1).mean()))  # RMS distance from the centre
        unit = (points - centre) / max(spread, 1e-6)
        if self.reference is None:
            self.reference = unit
        ref = self.reference
        angle = np.arctan2((ref[:, 0] * unit[:, 1] - ref[:, 1] * unit[:, 0]).sum(), (ref * unit).sum())
        angle = self.last_angle + (angle - self.last_angle + np.pi) % (2 * np.pi) - np.pi  # no jump at ±180°
        self.last_angle = angle
        shape = unit @ _rotation(-angle).T
        hidden = 1.0 if visibility is None else visibility + (1 - visibility) * self.params.hidden_cutoff_factor
        out = self.centre(centre, t, spread) + np.exp(self.log_scale(np.log(max(spread, 1e-6)), t)) * (
            self.shape(shape, t, 1.0, hidden) @ _rotation(self.angle(angle, t)).T)
        return out.astype(np.float32)


@dataclass
class TrackedFace(FaceLandmarks):
    track_id: int = 0
    detected: bool = False  # this frame's result came from a detection (new face), not from tracking


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation) taking points ``src`` onto ``dst``,
    as a 2x3 matrix (Umeyama 1991)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    var = (a ** 2).sum()
    if var <= 1e-12:
        return np.hstack([np.eye(2), (md - ms)[:, None]])
    # for 2-D points the optimal similarity is (p, q) = scale * (cos, sin), solved in closed form
    p_ = (a * b).sum() / var
    q_ = (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum() / var
    rot = np.array([[p_, -q_], [q_, p_]])
    return np.hstack([rot, (md - rot @ ms)[:, None]])


class Track:
    def __init__(self, track_id: int, face: FaceLandmarks, smoothing: Optional[OneEuro]):
        self.id = track_id
        self.face = face  # the latest unsmoothed result: the next frame crops from its landmarks
        self.filter = PointFilter(smoothing) if smoothing else None
        self.shape: Optional[np.ndarray] = None  # the landmarks of its last frame with every point visible
        self.remember_shape()

    def remember_shape(self) -> None:
        vis = self.face.visibility
        if vis is not None and (vis >= VISIBLE).all():
            self.shape = np.asarray(self.face.landmarks, np.float64)

    def has_hidden(self) -> bool:
        """Whether the model called any point of the latest frame hidden."""
        vis = self.face.visibility
        return vis is not None and bool((vis < VISIBLE).any())

    def remembered(self) -> Optional[np.ndarray]:
        """The last unoccluded shape moved onto this frame's visible points (least-squares similarity), or None
        when there is none, no point is hidden or too few are visible to place it."""
        vis = self.face.visibility
        seen = None if vis is None else vis >= VISIBLE
        if self.shape is None or seen is None or seen.all() or seen.sum() < MIN_FIT_POINTS:
            return None
        m = similarity(self.shape[seen], np.asarray(self.face.landmarks, np.float64)[seen])
        return self.shape @ m[:, :2].T + m[:, 2]

    def crop_box(self):
        """The next frame's crop: the box of the landmarks, or, with points hidden, of the remembered shape:
        the hidden points are the model's guesses, and a crop built on them can drift off the face while the
        occluder stays."""
        shape = self.remembered()
        return box_from_landmarks(self.face.landmarks if shape is None else shape)

    def landmarks(self, complete_hidden: bool) -> np.ndarray:
        """This frame's output points: the model's, or with ``complete_hidden`` each point blended between the
        model's guess and the remembered shape by the probability that it is visible."""
        shape = self.remembered() if complete_hidden else None
        if shape is None:
            return self.face.landmarks
        v = np.asarray(self.face.visibility, np.float64)[:, None]
        return (v * self.face.landmarks + (1 - v) * shape).astype(np.float32)


class FaceTracker:
    """Faces of a video with stable ``track_id``s (see the module docstring).

    ``detector``: the face detector of detection frames; ``detect_every``: frames between detections
    (new faces appear at most that late); ``lost_score``: a track whose face score falls below it ends
    (models with heads); ``smoothing``: OneEuro parameters, or None for raw landmarks; ``fps``: the frame
    rate assumed when update() gets no timestamp; ``max_faces``: the most faces tracked (largest kept);
    ``detect_max_side``: the longest side frames are shrunk to for the face detector; ``mirror``: mirror
    averaging (core.mirror) on every landmark pass, off by default: it doubles a tracked frame's cost, and the
    smoothing already averages over frames; ``mirror_hidden``: mirror averaging only for tracks whose latest
    frame had a hidden point (an occluder is on the face), where one pass is least accurate;
    ``complete_hidden``: output each point blended between the model's guess and the track's remembered
    unoccluded shape by its visibility (Track.landmarks; the numbers are in docs/end_to_end.md).
    """

    def __init__(self, landmarker: "LandmarkDetector", detector: str = "auto", detect_every: int = 30,
                 lost_score: float = 0.5, smoothing: Optional[OneEuro] = OneEuro(), fps: float = 30.0,
                 max_faces: Optional[int] = None, detect_max_side: int = VIDEO_DETECT_MAX_SIDE,
                 mirror: bool = False, mirror_hidden: bool = False, complete_hidden: bool = True):
        if detect_every < 1:
            raise ValueError(f"detect_every must be at least 1, got {detect_every}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.landmarker = landmarker
        self.detector = load_detector(detector)
        self.detect_every, self.lost_score, self.smoothing = detect_every, lost_score, smoothing
        self.fps, self.max_faces, self.detect_max_side, self.mirror = fps, max_faces, detect_max_side, mirror
        self.mirror_hidden, self.complete_hidden = mirror_hidden, complete_hidden
        self.tracks: List[Track] = []
        self.frame_index = -1
        self.last_detection = None  # frame index of the last detection
        self.lost = False  # a track ended while following this frame: detect on it
        self.ran_detection = False  # whether the last update() ran the face detector
        self.mirrored = 0  # tracks the last update() followed with mirror averaging
        self._ids = itertools.count(1)

    def reset(self) -> None:
        """Forget every track (a cut in the video); the next update() detects afresh."""
        self.tracks, self.last_detection, self.lost = [], None, False

    def update(self, frame: np.ndarray, timestamp: Optional[float] = None) -> List[TrackedFace]:
        """The faces of the next frame (BGR/grey/BGRA uint8), largest first; ``timestamp`` in seconds
        (default: frame number / fps)."""
        frame = ensure_bgr(frame, f"frame {self.frame_index + 1}")
        self.frame_index += 1
        t = self.frame_index / self.fps if timestamp is None else float(timestamp)
        self._follow(frame)
        due = (not self.tracks or self.lost or self.last_detection is None
               or self.frame_index - self.last_detection >= self.detect_every)
        new_ids: set = set()
        self.ran_detection = due
        if due:
            new_ids = self._detect(frame)
        self.lost = False
        out = []
        for track in self.tracks:
            face = track.face
            points = track.landmarks(self.complete_hidden)
            if track.filter is not None:
                points = track.filter(points, t, face.visibility)
            out.append(TrackedFace(face.box, points, face.visibility, face.score, track.id, track.id in new_ids))
        return sorted(out, key=lambda f: box_area(f.box), reverse=True)

    def _follow(self, frame: np.ndarray) -> None:
        """Move every track to this frame: crop from its last landmarks (Track.crop_box), drop the ones whose
        score says lost."""
        self.mirrored = 0
        if not self.tracks:
            return
        mirrored = [self.mirror or (self.mirror_hidden and t.has_hidden()) for t in self.tracks]
        faces: List[FaceLandmarks] = [None] * len(self.tracks)  # type: ignore[list-item]
        for flag in (False, True):  # one batch per setting
            chosen = [i for i, m in enumerate(mirrored) if m == flag]
            if chosen:
                got = self.landmarker.predict_faces([frame] * len(chosen), [self.tracks[i].crop_box() for i in chosen],
                                                    flag)
                for i, face in zip(chosen, got):
                    faces[i] = face
        self.mirrored = sum(mirrored)
        kept = []
        for track, face in zip(self.tracks, faces):
            if face.score is not None and face.score < self.lost_score:
                self.lost = True
                continue
            track.face = face
            track.remember_shape()
            kept.append(track)
        # two tracks that converged onto one face: keep the older
        self.tracks = [t for i, t in enumerate(kept) if all(box_iou(t.face.box, o.face.box) < SAME_FACE_IOU
                                                            for o in kept[:i])]

    def _detect(self, frame: np.ndarray) -> set:
        """Detect; start tracks for faces no track covers; without a face score, end tracks no face covers."""
        self.last_detection = self.frame_index
        found = self.landmarker.detect(frame, self.detector, max_side=self.detect_max_side, mirror=self.mirror)
        if not self.landmarker.has_heads:  # no face score: detection is the only evidence a face is there
            self.tracks = [t for t in self.tracks if any(box_iou(t.face.box, f.box) >= SAME_FACE_IOU for f in found)]
        new = [f for f in found if all(box_iou(f.box, t.face.box) < SAME_FACE_IOU for t in self.tracks)]
        started = [Track(next(self._ids), f, self.smoothing) for f in distinct(new)]
        self.tracks += started
        if self.max_faces is not None:
            self.tracks = sorted(self.tracks, key=lambda t: box_area(t.face.box), reverse=True)[:self.max_faces]
        return {t.id for t in started}
