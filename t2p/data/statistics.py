"""Normaliser statistics: the per-joint mean and spread, the neutral first pose and the length
prior of the training data, as `ModelConfig` stores them. Preparation adds up `PoseMoments` shard by
shard; `statistics` computes them from sequences in memory."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class PoseMoments:
    """Sums over observed keypoints, per joint and axis, that `normaliser` turns into statistics;
    the sums of parts prepared apart (one per shard) add up to the whole's."""
    total: np.ndarray        # (joints, dims)
    squares: np.ndarray      # (joints, dims)
    count: np.ndarray        # (joints, 1)
    first_total: np.ndarray  # (joints, dims) over first frames
    first_count: np.ndarray  # (joints, 1)

    @classmethod
    def zeros(cls, joints: int, dims: int) -> "PoseMoments":
        return cls(np.zeros((joints, dims)), np.zeros((joints, dims)), np.zeros((joints, 1)),
                   np.zeros((joints, dims)), np.zeros((joints, 1)))

    def add(self, poses: np.ndarray, confidence: np.ndarray) -> None:
        # poses: (frames, joints, dims); confidence: (frames, joints)
        observed = (confidence > 0)[..., None]
        self.total += (poses * observed).sum(0)
        self.squares += (poses ** 2 * observed).sum(0)
        self.count += observed.sum(0)
        self.first_total += poses[0] * observed[0]
        self.first_count += observed[0]

    def __add__(self, other: "PoseMoments") -> "PoseMoments":
        return PoseMoments(*(getattr(self, name) + getattr(other, name) for name in self._names()))

    def to_lists(self) -> dict:
        return {name: getattr(self, name).tolist() for name in self._names()}  # floats round-trip exactly in JSON

    @classmethod
    def from_lists(cls, values: dict) -> "PoseMoments":
        return cls(*(np.asarray(values[name], dtype=np.float64) for name in cls._names()))

    @staticmethod
    def _names() -> tuple[str, ...]:
        return ("total", "squares", "count", "first_total", "first_count")


def statistics(sequences: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Normaliser statistics, neutral first pose and length prior from (poses, confidence) pairs.

    Returns keys of `ModelConfig`: pose_mean, pose_std, neutral_pose, log_length_prior.
    """
    if not sequences:
        raise ValueError("no sequences to compute statistics from")
    moments = PoseMoments.zeros(*sequences[0][0].shape[1:])
    for poses, confidence in sequences:
        moments.add(poses, confidence)
    return normaliser(moments, [len(poses) for poses, _ in sequences])


def normaliser(moments: PoseMoments, lengths: Sequence[int], languages: Sequence[str | None] = ()) -> dict:
    """`statistics`' keys from the moments of the training sequences, their lengths in frames and,
    when given, their languages (the mean log-length of each: the length predictor's prior)."""
    joints, dims = moments.total.shape
    mean = moments.total / np.maximum(moments.count, 1)
    # one spread per axis over all joints: per-joint spreads of near-static joints (or of depth)
    # are tiny and would make their errors dominate the loss
    overall_mean = moments.total.sum(0) / max(moments.count.sum(), 1)
    variance = moments.squares.sum(0) / max(moments.count.sum(), 1) - overall_mean ** 2
    axis_std = np.sqrt(np.maximum(variance, 0))
    axis_std = np.maximum(axis_std, max(0.1 * axis_std.max(), 1e-3))
    std = np.broadcast_to(axis_std, (joints, dims))
    # joints never seen in a first frame fall back to their overall mean
    neutral = np.where(moments.first_count > 0, moments.first_total / np.maximum(moments.first_count, 1), mean)
    log_lengths = [math.log(max(length, 1)) for length in lengths]
    return {"pose_mean": mean.reshape(-1).astype(float).tolist(),
            "pose_std": std.reshape(-1).astype(float).tolist(),
            "neutral_pose": neutral.reshape(-1).astype(float).tolist(),
            "log_length_prior": float(np.mean(log_lengths)),
            "language_log_lengths": {language: float(np.mean([log for log, other in zip(log_lengths, languages)
                                                               if other == language]))
                                     for language in sorted({language for language in languages if language})}}
