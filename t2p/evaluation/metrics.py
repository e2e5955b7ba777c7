"""Metrics for generated pose sequences against references.

Arrays are `(frames, joints, dims)` with a confidence `(frames, joints)` where 0 means missing.
Each metric says which published definition it reproduces, so that numbers compare with papers:

| name | what | source |
|---|---|---|
| `mje` | mean per-joint Euclidean error | the standard MJE / MPJPE |
| `dtw_mje`, `dtw_mje_sum` | per-keypoint exact DTW, mean over keypoints | DTW-MJE (Huang et al. 2021), exact DTW by dtaidistance's C code |
| `ndtw_mje` | Ham2Pose's nDTW-MJE on shoulder-normalised poses, without its per-sequence `focus` (`focus=True` restores it; see `ndtw_mje`) | `metrics.py` of github.com/rotem-shalev/Ham2Pose (commit 2e269c5) |
| `dtwp`, `ndtwp` | pose-evaluation's DTWp / nDTWp | github.com/sign-language-processing/pose-evaluation at d812923 (README, `dtw_metric.py`, `create_metrics.py`, `examples/Pose_Evaluation_Example.ipynb`); the trimming span is spoken-to-signed's `active_signing_span` |
| `displacement_ratio` | motion of the prediction / motion of the reference | t2p's motion health check |
| `length_error` | frames predicted minus frames in the reference, absolute | t2p's motion health check |
| `presence_error` | share of (frame, joint) whose presence differs from the reference's | t2p |
| `handshape` | DTW of the fingers' joint angles of the reference's signing hands (rotation, size and position invariant) | t2p (`t2p.evaluation.handshape`) |

`dtw_mje_matrix` and `back_retrieval_ranks` score a whole set: how often an output is closer
(DTW-MJE) to its own reference than to the others, which a text-blind system cannot do.

`score` computes all of them for a pair of `PoseSequence`s; evaluation, `t2p compare` and the
validation inside training call these same functions. The join metrics of composed sentences
(speed and jerk where two signs meet, fluent-pose-synthesis's) are in `t2p.evaluation.joins`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from dtaidistance import dtw_ndim

from t2p.evaluation.handshape import handshape_distance
from t2p.pose import (
    ALIASES,
    Hand,
    Keypoints,
    PoseSequence,
    Skeleton,
    component_pose,
    frame_motion,
    resample_to_frames,
    shoulder_normalize,
)


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
            per_frame: bool = True, predicted_confidence: np.ndarray | None = None) -> float:
    """DTW-MJE: per keypoint, exact DTW (dtaidistance's C implementation, Euclidean local cost) of
    the predicted against the reference trajectory; mean over keypoints.

    Reference frames where a keypoint is missing are dropped from that keypoint's trajectory; a
    keypoint never observed in the reference is skipped. `per_frame=True` divides each keypoint's
    DTW path cost by the reference length (frames), `False` reports the path sum. With
    `predicted_confidence` (a prediction that has gaps, e.g. another recording), the prediction's
    missing frames are dropped likewise and a keypoint it never has is skipped: DTW-MJE measures
    trajectories that exist on both sides.
    """
    # predicted: (frames_p, joints, dims); reference: (frames_r, joints, dims)
    costs = []
    for joint in range(reference.shape[1]):
        observed = slice(None) if reference_confidence is None else reference_confidence[:, joint] > 0
        target = np.ascontiguousarray(reference[observed, joint], dtype=np.double)
        if len(target) == 0:
            continue
        present = slice(None) if predicted_confidence is None else predicted_confidence[:, joint] > 0
        source = np.ascontiguousarray(predicted[present, joint], dtype=np.double)
        if len(source) == 0:
            continue
        cost = dtw_ndim.distance(source, target, use_c=True, inner_dist="euclidean")  # sum along the path
        costs.append(cost / len(target) if per_frame else cost)
    return float(np.mean(costs)) if costs else float("nan")


# --- Joint selections, resolved from names once per skeleton ----------------------------------

# Ham2Pose keeps OpenPose BODY_25 points 0-8 and both hands (`get_idx2weight`): no legs, no face.
_HAM2POSE_BODY_POINTS = frozenset(
    [("pose_keypoints_2d", name) for name in
     ("Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip")]
    + [("POSE_LANDMARKS", name) for name in
       ("NOSE", "RIGHT_SHOULDER", "RIGHT_ELBOW", "RIGHT_WRIST", "LEFT_SHOULDER", "LEFT_ELBOW", "LEFT_WRIST")])


@dataclass(frozen=True)
class JointGroups:
    """The joints each metric looks at, found by point names (any layout's spelling) on a skeleton."""
    hands: tuple[int, ...]                     # both hands: DTWp, nDTWp
    upper_body_and_hands: tuple[int, ...]      # Ham2Pose's selection: no legs, no face
    shoulders: tuple[int, int] | None          # (right, left): shoulder normalisation
    signing_arms: tuple[tuple[int, int], ...]  # (wrist, elbow) per side: pose-evaluation's trimming
    hand_shapes: tuple[Hand, ...] = ()         # the hands whose joint angles the handshape distance compares

    @classmethod
    def of(cls, skeleton: Skeleton) -> "JointGroups":
        skeleton_hands = skeleton.hands()
        hands = [joint for hand in skeleton_hands for joint in hand.joints]
        body = [i for i, joint in enumerate(skeleton.joints)
                if any(name in _HAM2POSE_BODY_POINTS for name in ALIASES.get(joint, (joint,)))]
        right, left = _find(skeleton, "POSE_LANDMARKS", "RIGHT_SHOULDER"), _find(skeleton, "POSE_LANDMARKS", "LEFT_SHOULDER")
        arms: list[tuple[int, int]] = []
        # pose-evaluation trims MediaPipe Holistic poses only (spoken-to-signed's `trim_pose`)
        if any(c.name == "POSE_LANDMARKS" for c in skeleton.components):
            for side in ("LEFT", "RIGHT"):
                wrist, elbow = _find(skeleton, "POSE_LANDMARKS", f"{side}_WRIST"), _find(skeleton, "POSE_LANDMARKS", f"{side}_ELBOW")
                if wrist is not None and elbow is not None:
                    arms.append((wrist, elbow))
        return cls(hands=tuple(hands), upper_body_and_hands=tuple(sorted(set(body) | set(hands))),
                   shoulders=(right, left) if right is not None and left is not None else None,
                   signing_arms=tuple(arms), hand_shapes=tuple(hand for hand in skeleton_hands if hand.angles))


def _find(skeleton: Skeleton, component: str, point: str) -> int | None:
    try:
        return skeleton.joint_index(component, point)
    except KeyError:
        return None


# --- Ham2Pose's nDTW-MJE ----------------------------------------------------------------------

HAM2POSE_LOW_CONFIDENCE = 0.2  # Ham2Pose's `pose_hide_low_conf` hides points with confidence <= 0.2


def ndtw_mje(predicted: np.ndarray, reference: np.ndarray, joints: Sequence[int],
             predicted_confidence: np.ndarray | None = None, reference_confidence: np.ndarray | None = None,
             focus: bool = False) -> float:
    """Ham2Pose's nDTW-MJE, `compare_poses(pred, label, distance_function=fastdtw)` of Ham2Pose's
    `metrics.py` (github.com/rotem-shalev/Ham2Pose, commit 2e269c5), without its `Pose.focus` step
    unless `focus=True`.

    Inputs are shoulder-normalised (as every `PoseSequence` is, with the shoulders Ham2Pose's
    `pose_normalization_info` uses; pose-format 0.1.2, which Ham2Pose pins, centres on the mean
    shoulder midpoint and scales to a mean shoulder width of 1, as t2p does). Points with confidence
    <= 0.2 are hidden (`pose_hide_low_conf`). Only `joints` are compared
    (`JointGroups.upper_body_and_hands`: Ham2Pose's `get_idx2weight` keeps OpenPose body points 0-8
    and both hands, no legs, no face) and only x and y, since Ham2Pose's keypoints are 2D. Per
    keypoint, the trajectories are aligned by `fastdtw` (radius 1, Ham2Pose's default, so the
    approximation is part of the definition) with the local cost of Ham2Pose's `masked_euclidean`:
    0 where the reference point is missing, ‖reference‖ / 2 where only the prediction's is missing,
    else the Euclidean distance. The result is the path sum (not divided by any length, as in
    Ham2Pose) averaged over the keypoints.

    Why no focus by default: Ham2Pose's `get_pose` (metrics.py lines 37-39) calls `pose.focus()`
    after normalising, which moves each pose on its own so that its smallest x and smallest y over
    all frames and points become 0. That origin is set by the single most extreme point of the whole
    recording (for a sign made above the head: the highest fingertip and the furthest elbow), so two
    recordings of one sign that differ in reach are shifted against each other in every frame and
    every keypoint, after the shoulder normalisation had already put both in one frame of reference.
    This is Ham2Pose's own definition, not a slip of t2p's: run exactly as Ham2Pose runs it (masked
    arrays, focus over all points before hiding, pose-format's normalise and focus) on the MediaPipe
    recordings `colin-1-HOUSE`, `colin-2-HOUSE`, `colin-SAD` of pose-evaluation's test data, with
    `colin-2-HOUSE` as the label it puts the other sign closer (SAD 12.8) than the second recording
    of HOUSE (18.0); without the focus step, HOUSE is closer (5.9 against 6.5). On fingerspelled
    letters of the spoken-to-signed lexicon (tests/test_metrics.py) the focus likewise ranks other
    letters above a second recording of the same letter where DTW-MJE, DTWp and nDTWp do not.
    t2p therefore reports nDTW-MJE on the shoulder-normalised coordinates and keeps every other step
    of Ham2Pose's, as pose-evaluation's own recreation of Ham2Pose's preprocessing does (its
    `get_standard_pose_processors` normalises by the shoulders and leaves the focus out). One
    consequence: the ‖reference‖ / 2 cost of a missing predicted point is measured from the
    shoulder midpoint rather than from the focus corner.

    `focus=True` adds Ham2Pose's step: each sequence minus its smallest x and y over the points
    Ham2Pose sees then (confidence > 0, before the <= 0.2 points are hidden: `focus` comes before
    `pose_hide_low_conf` in `get_pose`). It spans the joints given to it, so on a skeleton without
    the face or legs the origin can differ from Ham2Pose's full OpenPose layout.

    Like Ham2Pose's, the value of a sequence against itself is 0 only when no point is hidden: a
    hidden reference point costs 0, so fastdtw's coarse path may leave the diagonal there and the
    finer window may then miss it.

    Not reproduced: Ham2Pose's dataset-specific steps (mirroring left-handed PJM videos, pruning
    leading/trailing frames without face or hands).

    Not for ranking outputs of different lengths against one reference. The path sum grows with
    the prediction's length (the warping path has at least max(predicted, reference) pairs): on
    206 held-out fingerspelling triplets where SignWriting spells a second recording as the same
    letter (docs/quality.md, "nDTW-MJE on real recordings"), it put that recording closer than
    another letter in 39% of the triplets where the other letter was shorter and in 65% where it
    was longer. Dividing each path sum by its path length reverses the bias (60% / 34%) and is no
    better overall (47% against 51%), so t2p keeps Ham2Pose's number for comparison with papers
    and does not rank with it. DTW-MJE, which `t2p evaluate` ranks with, shares the dependence
    (48% / 64%): its division by the reference's length is the same for every output scored
    against that reference; read it beside `length_error`.
    """
    from fastdtw import fastdtw

    # predicted: (frames_p, joints, dims); reference: (frames_r, joints, dims)
    prediction = _ham2pose_points(predicted, predicted_confidence, focus)  # (frames_p, joints, 2), NaN = hidden
    label = _ham2pose_points(reference, reference_confidence, focus)
    total = 0.0
    for joint in joints:
        # NaN stands for a masked point: fastdtw's halving averages it into NaN exactly as a masked
        # array's mask spreads, so the result equals Ham2Pose's masked-array computation
        total += fastdtw(prediction[:, joint], label[:, joint], radius=1, dist=_ham2pose_masked_euclidean)[0]
    return total / len(joints) if len(joints) else float("nan")


def _ham2pose_points(data: np.ndarray, confidence: np.ndarray | None, focus: bool) -> np.ndarray:
    """x and y as float64, NaN where Ham2Pose hides a point (confidence <= 0.2); with `focus`, first
    moved so that the smallest observed (confidence > 0) x and y are 0, as `Pose.focus` then
    `pose_hide_low_conf` in Ham2Pose's `get_pose`."""
    # data: (frames, joints, dims); confidence: (frames, joints)
    points = np.array(data[..., :2], dtype=np.float64)  # (frames, joints, 2)
    if focus:
        observed = np.ones(points.shape[:2], dtype=bool) if confidence is None else confidence > 0
        if observed.any():
            points -= points[observed].min(axis=0)
    if confidence is not None:
        points[confidence <= HAM2POSE_LOW_CONFIDENCE] = np.nan
    return points


def _ham2pose_masked_euclidean(point: np.ndarray, reference_point: np.ndarray) -> float:
    """Ham2Pose's `masked_euclidean` (metrics.py lines 65-71) on NaN-marked points: 0 when the
    reference point is hidden, half the reference point's norm when only the predicted one is,
    else the Euclidean distance."""
    px, py = point
    rx, ry = reference_point
    if rx != rx or ry != ry:  # the reference point is missing
        return 0.0
    if px != px or py != py:  # only the predicted point is missing
        return math.hypot(rx, ry) / 2
    return math.hypot(px - rx, py - ry)


# --- pose-evaluation's DTWp and nDTWp ---------------------------------------------------------
#
# Checked line by line against pose-evaluation at commit d8129232615f540b3ad332298a8ba6a309c08e0b
# (github.com/sign-language-processing/pose-evaluation; the package is not on PyPI):
# `DistanceMetric.score` (metrics/base_pose_metric.py, distance_metric.py) runs the preprocessors in
# order, then `DTWDTAIImplementationDistanceMeasure.get_distance` (metrics/dtw_metric.py). DTWp and
# nDTWp are the README's / examples/Pose_Evaluation_Example.ipynb's pipelines (what
# `construct_metric` in evaluation/create_metrics.py builds for those names):
#   DTWp:  TrimMeaninglessFrames -> GetHandsOnlyHolistic -> FillMaskedOrInvalid(10.0) -> ReducePosesToCommonComponents,
#          measure default_distance 0.0
#   nDTWp: NormalizePoses -> GetHandsOnlyHolistic -> FillMaskedOrInvalid(1.0) -> ReducePosesToCommonComponents,
#          measure default_distance 1.0
# Step by step (metrics/pose_processors.py, utils/pose_utils.py), and what t2p does:
# - TrimMeaninglessFramesPoseProcessor: spoken-to-signed's `trim_pose` when pose-format's
#   `detect_known_pose_format` says "holistic", else nothing. t2p: `active_signing_span`, which calls
#   spoken-to-signed's function of that name (the span `trim_pose` cuts to), when the skeleton has
#   POSE_LANDMARKS wrists and elbows (`JointGroups.signing_arms`, MediaPipe layouts only).
# - NormalizePosesProcessor: pose-format's `Pose.normalize()` with its shoulders (POSE_LANDMARKS
#   RIGHT/LEFT_SHOULDER, OpenPose RShoulder/LShoulder): minus the mean shoulder midpoint over frames
#   with both shoulders, divided by the mean shoulder distance over all dims. t2p:
#   `shoulder_normalize`, the same in float64 (pose-format stays in float32: about 1e-8 relative).
#   Where the shoulders are never seen pose-format masks everything, and the metric then compares
#   fill values only; t2p raises instead of reporting such a number.
# - GetHandsOnlyHolisticPoseProcessor: components LEFT_HAND_LANDMARKS and RIGHT_HAND_LANDMARKS,
#   all dims (x, y, z). t2p: `JointGroups.hands`, the 42 hand points found by name; on OpenPose
#   files t2p finds the hands through its alias table, where pose-evaluation's selection is empty
#   (its metric is not defined there): an extension, not a difference on MediaPipe files.
# - FillMaskedOrInvalidValuesPoseProcessor: masked (confidence 0, as pose-format reads a file) and
#   non-finite coordinates become the fill value. t2p: the same, per coordinate.
# - ReducePosesToCommonComponentsProcessor: keeps the points both poses have (sorted by name; the
#   mean over keypoints does not depend on order). t2p maps both onto one skeleton instead, so a
#   hand point only one file has is filled on the other side rather than dropped; two MediaPipe
#   files always have all 42.
# - DTWDTAIImplementationDistanceMeasure(use_fast=True): per keypoint, `dtw_ndim.distance_fast` of the
#   (frames, dims) float64 trajectories (squared Euclidean local cost, square root of the path sum),
#   mean over keypoints; the default distance only when that mean is NaN or infinite. t2p: the same.
# tests/test_metrics.py holds DTWp and nDTWp that pose-evaluation's own code computed on the
# recordings of tests/data/poses and checks t2p reproduces them.


def dtwp(predicted: np.ndarray, reference: np.ndarray, groups: JointGroups,
         predicted_confidence: np.ndarray | None = None, reference_confidence: np.ndarray | None = None) -> float:
    """DTWp of pose-evaluation (github.com/sign-language-processing/pose-evaluation, "Meaningful
    Pose-Based Sign Language Evaluation", Jiang et al. 2025): "DTW + Trim + Default 0.0 + Hands-Only",
    masked points filled with 10.0, metric name
    `startendtrimmed_unnormalized_hands_defaultdist0.0_nointerp_dtw_fillmasked10.0_dtaiDTWAggregatedDistanceMetricFast`.

    Inputs are in the pose files' own (unnormalised) coordinates: DTWp does not normalise.
    Each sequence is trimmed to its active signing span (MediaPipe Holistic skeletons only, as
    spoken-to-signed's `trim_pose` that pose-evaluation calls: from 5 frames before a wrist first
    rises above its elbow to 5 frames after the last time; computed by spoken-to-signed's
    `active_signing_span`, see `active_signing_span` here), only the hands are kept, missing points
    become 10.0 in every coordinate, and per hand keypoint `dtaidistance.dtw_ndim.distance_fast`
    (squared-Euclidean local cost, square root of the path sum) aligns the trajectories; the result
    is their mean, or 0.0 when that is not finite.
    """
    # predicted: (frames_p, joints, dims); reference: (frames_r, joints, dims)
    return _pose_evaluation_dtw(predicted, reference, groups, predicted_confidence, reference_confidence,
                                trim=True, normalize=False, masked_fill_value=10.0, default_distance=0.0)


def ndtwp(predicted: np.ndarray, reference: np.ndarray, groups: JointGroups,
          predicted_confidence: np.ndarray | None = None, reference_confidence: np.ndarray | None = None) -> float:
    """nDTWp of pose-evaluation (same source as `dtwp`): "DTW + Default 1.0 + MaskFill 1.0 + Norm. +
    Hands-Only", metric name
    `untrimmed_normalizedbyshoulders_hands_defaultdist1.0_nointerp_dtw_fillmasked1.0_dtaiDTWAggregatedDistanceMetricFast`.

    Each sequence is shoulder-normalised by its own shoulders (pose-format's `Pose.normalize`:
    centre = mean shoulder midpoint, scale = 1 / mean shoulder width), not trimmed; only the
    hands, missing points filled with 1.0; per keypoint `dtw_ndim.distance_fast`, mean over
    keypoints, 1.0 when not finite. Inputs may be in any coordinates (own normalisation is applied).
    """
    # predicted: (frames_p, joints, dims); reference: (frames_r, joints, dims)
    return _pose_evaluation_dtw(predicted, reference, groups, predicted_confidence, reference_confidence,
                                trim=False, normalize=True, masked_fill_value=1.0, default_distance=1.0)


def _pose_evaluation_dtw(predicted: np.ndarray, reference: np.ndarray, groups: JointGroups,
                         predicted_confidence: np.ndarray | None, reference_confidence: np.ndarray | None,
                         *, trim: bool, normalize: bool, masked_fill_value: float, default_distance: float) -> float:
    prepared = []
    for data, confidence in ((predicted, predicted_confidence), (reference, reference_confidence)):
        data = np.asarray(data, dtype=np.float64)
        confidence = np.ones(data.shape[:2]) if confidence is None else np.asarray(confidence)
        if trim and groups.signing_arms:
            first, last = active_signing_span(data, confidence, groups.signing_arms)
            data, confidence = data[first:last], confidence[first:last]
        if normalize:
            if groups.shoulders is None:
                raise ValueError("nDTWp normalises by the shoulders, which this skeleton lacks")
            data = shoulder_normalize(data, confidence, *groups.shoulders)
        hands = data[:, list(groups.hands)]  # (frames, hand joints, dims)
        missing = (confidence[:, list(groups.hands)] <= 0)[..., None] | ~np.isfinite(hands)
        prepared.append(np.where(missing, masked_fill_value, hands))
    hypothesis, label = prepared
    distances = [dtw_ndim.distance_fast(np.ascontiguousarray(hypothesis[:, k]), np.ascontiguousarray(label[:, k]))
                 for k in range(len(groups.hands))]
    distance = float(np.mean(distances)) if distances else float("nan")
    return distance if math.isfinite(distance) else default_distance


_SPAN_ARM_POINTS = ("LEFT_WRIST", "LEFT_ELBOW", "RIGHT_WRIST", "RIGHT_ELBOW")


def active_signing_span(data: np.ndarray, confidence: np.ndarray,
                        arms: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The [first, last) frames in which a hand signs, computed by spoken-to-signed's own
    `active_signing_span` (`spoken_to_signed.gloss_to_pose.concatenate`, 0.4.0; the span that
    upstream's `trim_pose`, which pose-evaluation calls, cuts to): from 5 frames before a wrist is
    first above its elbow (image y grows downwards) to 5 frames after the last time, within the
    frames where that wrist is seen; the whole sequence when no wrist ever rises. Frames where the
    wrist or elbow is missing never count as raised.

    spoken-to-signed reads the four points `POSE_LANDMARKS` LEFT/RIGHT_WRIST/ELBOW of a pose-format
    `Pose`, so the given (wrist, elbow) pairs (at most two; which side is which does not matter, the
    sides are treated alike) are handed to it as such a `Pose`, masked where confidence is 0; a side
    not given is never seen, hence never raised."""
    # data: (frames, joints, dims); confidence: (frames, joints)
    frames = len(data)
    if frames == 0 or not arms:  # spoken-to-signed's argmax needs a frame; no arm: nothing to trim by
        return 0, frames
    if len(arms) > 2:
        raise ValueError(f"a signer has two arms, got {len(arms)} (wrist, elbow) pairs")
    from spoken_to_signed.gloss_to_pose.concatenate import active_signing_span as spoken_to_signed_span

    joints = [joint for arm in arms for joint in arm]  # wrist, elbow, wrist, elbow
    points = np.zeros((frames, 1, len(_SPAN_ARM_POINTS), 2), dtype=np.float64)
    seen = np.zeros((frames, 1, len(_SPAN_ARM_POINTS)), dtype=np.float32)
    points[:, 0, :len(joints)] = data[:, joints, :2]
    seen[:, 0, :len(joints)] = confidence[:, joints] > 0  # NumPyPoseBody masks confidence 0
    first, last = spoken_to_signed_span(component_pose("POSE_LANDMARKS", _SPAN_ARM_POINTS, points[:, 0], seen[:, 0]))
    return int(first), int(last)


# --- Motion health ----------------------------------------------------------------------------

def displacement_ratio(predicted: np.ndarray, reference: np.ndarray, predicted_confidence: np.ndarray | None = None,
                       reference_confidence: np.ndarray | None = None) -> float:
    """Mean frame-to-frame motion of the prediction divided by the reference's: about 1 is healthy,
    about 0 is a frozen output, far above 1 is jitter."""
    # predicted: (frames_p, joints, dims); reference: (frames_r, joints, dims)
    reference_motion = frame_motion(reference, reference_confidence)
    if not reference_motion > 0:
        return float("nan")
    return frame_motion(predicted, predicted_confidence) / reference_motion


def length_error(predicted: np.ndarray, reference: np.ndarray) -> int:
    """How many frames the predicted length is off from the reference's (absolute)."""
    return abs(len(predicted) - len(reference))


def presence_error(predicted_presence: np.ndarray, reference_confidence: np.ndarray) -> float:
    """Share of (frame, joint) pairs whose presence differs from the reference's, the prediction
    resampled in time to the reference length: a hand drawn where the reference has none counts,
    and so does a hand left out where the reference has one."""
    # predicted_presence: (frames_p, joints); reference_confidence: (frames_r, joints)
    present = np.asarray(predicted_presence, dtype=np.float32)
    frames = len(reference_confidence)
    if len(present) != frames:
        position = np.linspace(0, len(present) - 1, frames) if frames > 1 else np.zeros(1)
        present = present[np.rint(position).astype(int)]  # nearest frame: presence is not interpolated
    return float(np.mean((present > 0) != (reference_confidence > 0)))


def dtw_mje_matrix(predictions: Sequence[tuple[np.ndarray, np.ndarray]],
                   references: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """`dtw_mje` of every prediction against every reference, (predictions, references): the same
    per-keypoint exact DTW, frame handling and mean over keypoints, with dtaidistance's C matrix."""
    # predictions, references: (data (frames, joints, dims), confidence (frames, joints)) pairs
    joints = references[0][0].shape[1]
    total = np.zeros((len(predictions), len(references)))
    counted = np.zeros((len(predictions), len(references)))
    for joint in range(joints):
        sources = [np.ascontiguousarray(data[confidence[:, joint] > 0, joint], dtype=np.double)
                   for data, confidence in predictions]
        targets = [np.ascontiguousarray(data[confidence[:, joint] > 0, joint], dtype=np.double)
                   for data, confidence in references]
        rows = [i for i, series in enumerate(sources) if len(series)]
        columns = [j for j, series in enumerate(targets) if len(series)]
        if not rows or not columns:
            continue
        series = [sources[i] for i in rows] + [targets[j] for j in columns]
        block = ((0, len(rows)), (len(rows), len(series)))
        matrix = dtw_ndim.distance_matrix_fast(series, series[0].shape[1], block=block, compact=False,
                                               inner_dist="euclidean")[:len(rows), len(rows):]
        lengths = np.array([len(targets[j]) for j in columns], dtype=np.double)
        total[np.ix_(rows, columns)] += matrix / lengths  # per reference frame, as dtw_mje
        counted[np.ix_(rows, columns)] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, total / counted, np.nan)


def back_retrieval_ranks(distances: np.ndarray) -> np.ndarray:
    """For each output i, how many other references are at least as close to it as its own
    reference i (0 = its own reference is the strictly closest). Ties count against the output, so
    identical outputs for every text never retrieve anything."""
    # distances: (outputs, references), square, output i belongs to reference i
    own = np.diag(distances)[:, None]
    others = ~np.eye(len(distances), dtype=bool)
    return ((distances <= own) & others).sum(axis=1)


# --- Every metric for one pair ----------------------------------------------------------------

@dataclass(frozen=True)
class MetricInfo:
    description: str
    source: str
    better: str  # "lower" or "closer to 1"


METRICS: dict[str, MetricInfo] = {
    "mje": MetricInfo("mean per-joint Euclidean error, shoulder widths (prediction linearly resampled to the "
                      "reference length when they differ)", "standard MJE/MPJPE", "lower"),
    "dtw_mje": MetricInfo("per-keypoint exact DTW (Euclidean cost) divided by the reference frames, mean over "
                          "keypoints; masked reference points skipped", "DTW-MJE (Huang et al. 2021), dtaidistance C",
                          "lower"),
    "dtw_mje_sum": MetricInfo("as dtw_mje, the DTW path sum", "DTW-MJE, dtaidistance C", "lower"),
    "ndtw_mje": MetricInfo("Ham2Pose's nDTW-MJE: shoulder-normalised (no focus, see ndtw_mje), upper body and hands, "
                           "fastdtw with masked_euclidean; a path sum that grows with the output's length, reported "
                           "for comparison with papers, not for ranking outputs of different lengths",
                           "rotem-shalev/Ham2Pose metrics.py@2e269c5", "lower"),
    "dtwp": MetricInfo("pose-evaluation's DTWp: trimmed, unnormalised, hands only, masked = 10.0",
                       "sign-language-processing/pose-evaluation", "lower"),
    "ndtwp": MetricInfo("pose-evaluation's nDTWp: shoulder-normalised, hands only, masked = 1.0",
                        "sign-language-processing/pose-evaluation", "lower"),
    "displacement_ratio": MetricInfo("mean frame-to-frame motion of the prediction / of the reference "
                                     "(~1 healthy, ~0 frozen)", "t2p motion health", "closer to 1"),
    "length_error": MetricInfo("|predicted frames - reference frames|", "t2p motion health", "lower"),
    "handshape": MetricInfo("DTW of the fingers' 19 joint angles (RMS radians per reference frame) of the "
                            "reference's signing hands, mean over hands: invariant to the hand's rotation, size "
                            "and place", "t2p", "lower"),
    "presence_error": MetricInfo("share of (frame, joint) whose presence (e.g. a hand in view) differs from the "
                                 "reference's", "t2p", "lower"),
}


def score(predicted: PoseSequence, reference: PoseSequence, groups: JointGroups,
          metrics: Sequence[str] | None = None) -> dict[str, float]:
    """Every metric (or the named ones) of a prediction against a reference on the same skeleton.

    Both are shoulder-normalised `PoseSequence`s; their `normalization` leads back to the files'
    own coordinates, which DTWp needs. A prediction that starts from the reference's first pose
    carries the reference's normalisation.

    A joint with confidence 0 is absent, in the prediction as in the reference (a hand out of
    view, the idle hand of a one-handed sign): trajectory metrics (DTW-MJE, nDTW-MJE) compare the
    frames where a joint is there on both sides, and presence is judged by presence_error and by
    DTWp/nDTWp, whose fill value for an absent point makes a hand drawn where the reference has
    none (or left out where it has one) cost.
    """
    names = list(METRICS) if metrics is None else list(metrics)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if predicted.data.shape[1:] != reference.data.shape[1:]:
        raise ValueError(f"prediction joints/dims {predicted.data.shape[1:]} differ from the reference's "
                         f"{reference.data.shape[1:]}: map both onto one skeleton first")
    p, pc = predicted.data, predicted.confidence
    r, rc = reference.data, reference.confidence
    results: dict[str, float] = {}
    for name in names:
        if name == "mje":
            aligned, aligned_confidence = (p, pc) if len(p) == len(r) else _stretched(predicted, len(r))
            value = mje(aligned, r, rc * (aligned_confidence > 0))  # joints there on both sides
        elif name == "dtw_mje":
            value = dtw_mje(p, r, rc, predicted_confidence=pc)
        elif name == "dtw_mje_sum":
            value = dtw_mje(p, r, rc, per_frame=False, predicted_confidence=pc)
        elif name == "ndtw_mje":
            value = ndtw_mje(p, r, groups.upper_body_and_hands, pc, rc)
        elif name == "dtwp":
            value = dtwp(_file_coordinates(predicted), _file_coordinates(reference), groups, pc, rc)
        elif name == "ndtwp":
            value = ndtwp(p, r, groups, pc, rc)
        elif name == "displacement_ratio":
            value = displacement_ratio(p, r, pc, rc)
        elif name == "presence_error":
            value = presence_error(pc, rc)
        elif name == "handshape":
            value = handshape_distance(p, r, groups.hand_shapes, rc, pc)
        else:
            value = length_error(p, r)
        results[name] = float(value)
    return results


def _stretched(sequence: Keypoints, frames: int) -> tuple[np.ndarray, np.ndarray]:
    stretched = resample_to_frames(sequence, frames)
    return stretched.data, stretched.confidence


def _file_coordinates(sequence: PoseSequence) -> np.ndarray:
    """The sequence back in its file's own (pixel) coordinates; missing points stay 0."""
    data = sequence.normalization.invert(sequence.data.astype(np.float64))
    data[sequence.confidence <= 0] = 0.0
    return data
