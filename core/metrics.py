"""NMSE as the paper defines it: mean point-to-point error over inter-pupil distance, in percent."""
from __future__ import annotations

import numpy as np

from .schema import pupils


def interpupil_distance(gt: np.ndarray) -> np.ndarray:
    right, left = pupils(gt)
    return np.linalg.norm(right - left, axis=-1)


def nmse_per_face(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """NMSE (%) of each face: sum_i ||pred_i - gt_i||_2 / (N * d_ipd) * 100, for (..., 68, 2) arrays."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.shape[-2:] != (68, 2):
        raise ValueError(f"expected matching (..., 68, 2) arrays, got {pred.shape} and {gt.shape}")
    d_ipd = interpupil_distance(gt)
    if np.any(d_ipd <= 0):
        raise ValueError("ground truth with zero inter-pupil distance")
    return np.linalg.norm(pred - gt, axis=-1).mean(-1) / d_ipd * 100.0


def nmse(pred: np.ndarray, gt: np.ndarray) -> float:
    """NMSE (%) averaged over faces."""
    return float(np.mean(nmse_per_face(pred, gt)))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive), ties counted half.

    NaN when only one class is present (the AUC is undefined, not perfect).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average rank over ties (Mann-Whitney U)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
