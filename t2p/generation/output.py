"""A generated sequence as a pose-format `Pose`: in the space and file layout of the pose it
started from, at the model's frame rate, absent joints and resting hands hidden."""
from __future__ import annotations

from t2p.model import T2PModel
from t2p.pose import Keypoints, Pose, PoseSequence, in_layout, to_pose


def as_pose(model: T2PModel, sequence: Keypoints, first_pose: Keypoints | None = None,
            hide_resting_hands: bool = True) -> Pose:
    """`sequence` written in the space and file layout of the recording it started from (a
    `PoseSequence` first pose), else on the model's skeleton in the training data's space; at the
    model's frame rate whatever the first pose's (its frames are the model's: a 50 fps first pose
    gives a 25 fps model's sign the same duration as a 25 fps one). Joints predicted absent are
    written with confidence 0, and so is a hand resting low outside the signing space
    (spoken-to-signed's `hide_lowered_hands`), rather than drawn floating."""
    if isinstance(first_pose, PoseSequence):
        pose = to_pose(sequence.data, model.skeleton, model.config.fps, first_pose.normalization,
                       sequence.confidence, canvas=first_pose.canvas)
    else:
        pose = to_pose(sequence.data, model.skeleton, model.config.fps, model.output_normalization,
                       sequence.confidence, canvas=tuple(model.config.output_canvas))
    if hide_resting_hands and _has_holistic_arms(model):
        from spoken_to_signed.gloss_to_pose.concatenate import hide_lowered_hands
        pose = hide_lowered_hands(pose)
    if isinstance(first_pose, PoseSequence) and first_pose.layout is not None:
        pose = in_layout(pose, model.skeleton, first_pose.layout)  # the first pose's file layout
    return pose


def _has_holistic_arms(model: T2PModel) -> bool:
    points = set(model.skeleton.joints)
    return all(("POSE_LANDMARKS", f"{side}_{part}") in points for side in ("LEFT", "RIGHT")
               for part in ("WRIST", "SHOULDER", "HIP"))
