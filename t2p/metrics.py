"""Metrics for generated pose sequences against references.

Arrays are `(frames, joints, dims)` with a confidence `(frames, joints)` where 0 means missing.
"""
from __future__ import annotations

import numpy as np
from dtaidistance import dtw_ndim


def mje(predicted: np.ndarray, reference: np.ndarray, reference_confidence: np.ndarray | None = None) -> float:
    """Mean per-joint Euclidean error over frames and joints (equal lengths); masked reference joints skipped."""
    if predicted.shape != reference.shape:
        raise ValueError(f"MJE needs equal shapes, got {predicted.shape} and {reference.shape}")
    distances = np.linalg.norm(predicted - reference, axis=-1)  # (frames, joints)
    if reference_confidence is None:
        return float(distances.mean())
    observed = reference_confidence > 0
    return float(distances[observed].mean()) if observed.any() else float("nan")


def dtw_mje(predicted: np.ndarray, reference: np.ndarray, reference_confidence: np.ndarray | None = None,
            per_frame: bool = True) -> float:
    """DTW-MJE: per keypoint, exact DTW (dtaidistance's C implementation, Euclidean local cost) of
    the predicted against the reference trajectory; mean over keypoints.

    Reference frames where a keypoint is missing are dropped from that keypoint's trajectory; a
    keypoint never observed in the reference is skipped. `per_frame=True` divides each keypoint's
    DTW path cost by the reference length (frames), `False` reports the path sum.
    """
    # predicted: (frames_p, joints, dims); reference: (frames_r, joints, dims)
    costs = []
    for joint in range(reference.shape[1]):
        observed = slice(None) if reference_confidence is None else reference_confidence[:, joint] > 0
        target = np.ascontiguousarray(reference[observed, joint], dtype=np.double)
        if len(target) == 0:
            continue
        source = np.ascontiguousarray(predicted[:, joint], dtype=np.double)
        cost = dtw_ndim.distance(source, target, use_c=True, inner_dist="euclidean")  # sum along the path
        costs.append(cost / len(target) if per_frame else cost)
    return float(np.mean(costs)) if costs else float("nan")
