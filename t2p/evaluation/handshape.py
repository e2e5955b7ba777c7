"""Handshape: the fingers' joint angles, and a DTW distance between two sequences of them.

Shoulder-normalised position metrics (DTW-MJE) are dominated by the arm's path: a finger is a few
hundredths of a shoulder width, so a closed fist where the reference shows a flat B hand costs
almost nothing. The handshape distance looks at the fingers alone, in a way that does not change
when the hand turns, moves or is nearer the camera:

- per frame and hand, 19 angles: the bend at each of the three joints of each finger (thumb: CMC,
  MCP, IP; fingers: MCP, PIP, DIP, each the angle between the bones before and after the joint)
  and the spread between neighbouring fingers (thumb-index, index-middle, middle-ring,
  ring-little, the angles between their first bones);
- per hand, exact DTW (dtaidistance) of the predicted against the reference angle sequence, with
  the root-mean-square angle difference (radians) as the local cost, divided by the reference's
  frames (as DTW-MJE is);
- the mean over the reference's signing hands: those observed in at least half its frames (a
  one-handed letter is judged on its one hand, the idle or untracked hand is left out).

The hands and their angles come from the skeleton (`Skeleton.hands`). Validated on real
recordings in tests/test_handshape.py: the same letter signed in two languages
is closer than different letters in most pairs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from dtaidistance import dtw_ndim

from t2p.pose import Hand

SIGNING_SHARE = 0.5  # a hand observed in at least this share of the reference's frames is a signing hand


def hand_angles(data: np.ndarray, hand: Hand) -> np.ndarray:
    """The hand's joint angles in every frame, radians in [0, pi]. (frames, angles)"""
    # data: (frames, joints, dims)
    pairs = np.asarray(hand.angles)
    first = data[:, pairs[:, 1]] - data[:, pairs[:, 0]]   # (frames, angles, dims)
    second = data[:, pairs[:, 3]] - data[:, pairs[:, 2]]
    dot = (first * second).sum(-1)
    if data.shape[-1] == 2:
        cross = np.abs(first[..., 0] * second[..., 1] - first[..., 1] * second[..., 0])
    else:
        cross = np.linalg.norm(np.cross(first, second), axis=-1)
    return np.arctan2(cross, dot)  # stable near 0 and pi, unlike arccos of the cosine


def handshape_distance(predicted: np.ndarray, reference: np.ndarray, hands: Sequence[Hand],
                       reference_confidence: np.ndarray | None = None,
                       predicted_confidence: np.ndarray | None = None) -> float:
    """DTW of the joint angles of each signing hand (see the module's docstring), mean over hands;
    NaN when the reference has no signing hand. Frames where a hand is missing (any of its joints
    unobserved) are left out of that hand's sequence, on either side."""
    # predicted: (frames_p, joints, dims); reference: (frames_r, joints, dims)
    costs = []
    for hand in hands:
        in_reference = _complete_frames(reference_confidence, hand, len(reference))
        if in_reference.mean() < SIGNING_SHARE:
            continue
        in_prediction = _complete_frames(predicted_confidence, hand, len(predicted))
        if not in_prediction.any():  # a signing hand predicted absent throughout: judged as drawn
            in_prediction[:] = True
        target = hand_angles(reference[in_reference], hand) / np.sqrt(len(hand.angles))
        source = hand_angles(predicted[in_prediction], hand) / np.sqrt(len(hand.angles))
        cost = dtw_ndim.distance(np.ascontiguousarray(source, dtype=np.double),
                                 np.ascontiguousarray(target, dtype=np.double), use_c=True, inner_dist="euclidean")
        costs.append(cost / len(target))
    return float(np.mean(costs)) if costs else float("nan")


def _complete_frames(confidence: np.ndarray | None, hand: Hand, frames: int) -> np.ndarray:
    if confidence is None:
        return np.ones(frames, dtype=bool)
    return (confidence[:, list(hand.joints)] > 0).all(axis=1)
