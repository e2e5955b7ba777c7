"""Training examples and batches: typed, padded, masked.

An `Example` is one sign: its token ids and its pose sequence. `collate` pads a list of them into a
`PoseBatch`; `statistics` turns training sequences into the normaliser statistics and neutral pose
that are stored with the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass
class Example:
    tokens: list[int]
    poses: np.ndarray       # (frames, joints, dims) shoulder-normalised
    confidence: np.ndarray  # (frames, joints), 0 = missing


@dataclass
class PoseBatch:
    poses: torch.Tensor       # (batch, frames, joints, dims)
    confidence: torch.Tensor  # (batch, frames, joints); 0 for missing keypoints and padding
    frame_mask: torch.Tensor  # (batch, frames) True = real frame
    lengths: torch.Tensor     # (batch,)
    tokens: torch.Tensor      # (batch, tokens)
    token_mask: torch.Tensor  # (batch, tokens) True = real token

    def to(self, device: torch.device | str) -> "PoseBatch":
        return PoseBatch(*(getattr(self, name).to(device) for name in
                           ("poses", "confidence", "frame_mask", "lengths", "tokens", "token_mask")))

    @property
    def size(self) -> int:
        return int(self.poses.shape[0])


def collate(examples: Sequence[Example], max_frames: int | None = None) -> PoseBatch:
    """Pad variable-length examples into one batch; sequences longer than max_frames are cut."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(e.poses) if max_frames is None else min(len(e.poses), max_frames) for e in examples]
    longest, longest_text = max(lengths), max(len(e.tokens) for e in examples)
    joints, dims = examples[0].poses.shape[1:]
    poses = torch.zeros(len(examples), longest, joints, dims)
    confidence = torch.zeros(len(examples), longest, joints)
    tokens = torch.zeros(len(examples), longest_text, dtype=torch.long)
    token_mask = torch.zeros(len(examples), longest_text, dtype=torch.bool)
    for i, (example, length) in enumerate(zip(examples, lengths)):
        poses[i, :length] = torch.as_tensor(example.poses[:length], dtype=torch.float32)
        confidence[i, :length] = torch.as_tensor(example.confidence[:length], dtype=torch.float32)
        tokens[i, :len(example.tokens)] = torch.as_tensor(example.tokens, dtype=torch.long)
        token_mask[i, :len(example.tokens)] = True
    length_tensor = torch.tensor(lengths)
    frame_mask = torch.arange(longest).unsqueeze(0) < length_tensor.unsqueeze(1)
    return PoseBatch(poses, confidence, frame_mask, length_tensor, tokens, token_mask)


def statistics(sequences: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Normaliser statistics, neutral first pose and length prior from (poses, confidence) pairs.

    Returns keys of `ModelConfig`: pose_mean, pose_std, neutral_pose, log_length_prior.
    """
    if not sequences:
        raise ValueError("no sequences to compute statistics from")
    joints, dims = sequences[0][0].shape[1:]
    total = np.zeros((joints, dims))
    squares = np.zeros((joints, dims))
    count = np.zeros((joints, 1))
    first_total = np.zeros((joints, dims))
    first_count = np.zeros((joints, 1))
    for poses, confidence in sequences:
        observed = (confidence > 0)[..., None]
        total += (poses * observed).sum(0)
        squares += (poses ** 2 * observed).sum(0)
        count += observed.sum(0)
        first_total += poses[0] * observed[0]
        first_count += observed[0]
    mean = total / np.maximum(count, 1)
    # one spread per axis over all joints: per-joint spreads of near-static joints (or of depth)
    # are tiny and would make their errors dominate the loss
    overall_mean = total.sum(0) / max(count.sum(), 1)
    variance = squares.sum(0) / max(count.sum(), 1) - overall_mean ** 2
    axis_std = np.sqrt(np.maximum(variance, 0))
    axis_std = np.maximum(axis_std, max(0.1 * axis_std.max(), 1e-3))
    std = np.broadcast_to(axis_std, (joints, dims))
    # joints never seen in a first frame fall back to their overall mean
    neutral = np.where(first_count > 0, first_total / np.maximum(first_count, 1), mean)
    log_lengths = [math.log(max(len(poses), 1)) for poses, _ in sequences]
    return {"pose_mean": mean.reshape(-1).astype(float).tolist(),
            "pose_std": std.reshape(-1).astype(float).tolist(),
            "neutral_pose": neutral.reshape(-1).astype(float).tolist(),
            "log_length_prior": float(np.mean(log_lengths))}
