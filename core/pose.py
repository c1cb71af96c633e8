"""Head yaw from 68 landmarks (solvePnP against a generic 3D face), to split frontal from side faces."""
from __future__ import annotations

import cv2
import numpy as np

SIDE_YAW_DEG = 25.0  # |yaw| at or above this is a side face

# A generic face in model units (x right, y up, z towards the camera): nose tip, chin, eye outer
# corners, mouth corners -- the usual six-point head-pose model.
_MODEL_POINTS = np.array([
    (0.0, 0.0, 0.0), (0.0, -330.0, -65.0), (-225.0, 170.0, -135.0),
    (225.0, 170.0, -135.0), (-150.0, -150.0, -125.0), (150.0, -150.0, -125.0),
])
_LANDMARK_IDS = [30, 8, 36, 45, 48, 54]


def yaw_degrees(landmarks: np.ndarray) -> float:
    """Absolute head yaw in degrees estimated from (68, 2) image-pixel landmarks."""
    pts = np.asarray(landmarks, dtype=np.float64)[_LANDMARK_IDS]
    span = np.ptp(np.asarray(landmarks, dtype=np.float64), axis=0).max()
    focal = 3.0 * span  # a typical portrait field of view; yaw is insensitive to it
    centre = pts[0]
    camera = np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1]])
    ok, rvec, _ = cv2.solvePnP(_MODEL_POINTS, pts, camera, None, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return float("nan")
    rot, _ = cv2.Rodrigues(rvec)
    angles = cv2.RQDecomp3x3(rot)[0]  # degrees about x, y, z
    return float(abs(angles[1]))
