"""Generation: the one refinement loop. The CLI, evaluation and Ray Serve all call `generate`.

```
text   = encode(texts)                      # once per call
length = predicted median (or given)        # from the text and the starting pose
x_T    = first pose repeated `length` times
for t = T-1 … 0:                            # every one of the T steps calls the refiner once
    x0_hat, presence = refine(x_t, t, text) # one forward pass for the whole batch
    x_t-1  = schedule.step(x_t, x0_hat)     # x0_hat itself after a single step
```
Items of one batch may differ in text, length, number of steps and guidance: sequences are padded
with frame masks, and an item with fewer steps joins the loop when its own schedule begins, so each
item equals what generating it alone gives. Every joint gets a position in every frame; joints the
model predicts absent (a hand out of view, the idle hand of a one-handed sign) get confidence 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import numpy as np
import torch
from pose_format import Pose

from t2p.model import Refined, T2PModel, TextEncoding, pad_tokens
from t2p.notation import BOS, SignText
from t2p.pose import PoseSequence, to_pose

TextLike = Union[SignText, str]
FirstPoseLike = Union[None, PoseSequence, np.ndarray, tuple]


@dataclass
class Observed:
    """Known values of a sequence to be completed: kept fixed at every step."""
    data: np.ndarray        # (frames, joints, dims) shoulder-normalised
    confidence: np.ndarray  # (frames, joints), > 0 where observed


@dataclass
class Generated:
    """One generated sequence, shoulder-normalised."""
    data: np.ndarray        # (frames, joints, dims): a position for every joint in every frame
    confidence: np.ndarray  # (frames, joints): 1 where the joint is predicted present, else 0

    def __len__(self) -> int:
        return len(self.data)


def generate(model: T2PModel, texts: Sequence[TextLike], first_poses: Sequence[FirstPoseLike] | None = None,
             steps: int | Sequence[int] | None = None, lengths: int | Sequence[int | None] | None = None,
             guidance: float | Sequence[float | None] | None = None, seed: int | None = None,
             observed: Sequence[Observed | None] | None = None,
             length_temperature: float = 0.0, max_length: int | None = None) -> list[Generated]:
    """One `Generated` sequence per text.

    texts: `SignText`s (or strings in the model's default notation); empty text is unconditional.
    first_poses: who signs; default the model's neutral pose. Missing keypoints are completed first.
    steps: refinement steps (each calls the refiner once); default the model's schedule.
    lengths: frames per item; default the predicted median length.
    guidance: classifier-free guidance scale s, `uncond + s * (cond - uncond)`; default the model's
        (its schedule config); 1 = off.
    seed: makes sampled lengths (`length_temperature > 0`) reproducible, per item.
    observed: per item, values that must stay fixed (completing a sequence with gaps).
    max_length: the most frames a predicted length may have (default: the model's max_frames).
    """
    result = None
    for result in iter_generate(model, texts, first_poses, steps, lengths, guidance, seed, observed,
                                length_temperature, max_length):
        pass
    return result


@torch.no_grad()
def iter_generate(model: T2PModel, texts: Sequence[TextLike], first_poses: Sequence[FirstPoseLike] | None = None,
                  steps: int | Sequence[int] | None = None, lengths: int | Sequence[int | None] | None = None,
                  guidance: float | Sequence[float | None] | None = None, seed: int | None = None,
                  observed: Sequence[Observed | None] | None = None,
                  length_temperature: float = 0.0, max_length: int | None = None) -> Iterator[list[Generated]]:
    """`generate`, yielding every item's sequence after each refinement step (for visualisation)."""
    if len(texts) == 0:
        return
    model.eval()
    device = model.pose_mean.device
    batch = len(texts)
    signs = [t if isinstance(t, SignText) else SignText(t, model.config.default_notation) for t in texts]
    item_steps = _per_item(steps, batch, model.schedule_config.steps, "steps")
    item_guidance = _per_item(guidance, batch, model.schedule_config.guidance, "guidance")
    item_lengths = _per_item(lengths, batch, None, "lengths")
    item_observed = _per_item(observed, batch, None, "observed")
    item_first = _per_item(first_poses, batch, None, "first_poses")
    schedule = model.schedule
    betas = [schedule.betas(n).to(device) for n in item_steps]  # validates every step count

    text = model.encode_signs(signs, device)  # once per call, never per step
    first_pose, first_confidence = _first_poses(model, item_first, device)
    start = model.complete_first_pose(first_pose, first_confidence)  # (batch, joints, dims)
    frames = _lengths(model, text, first_pose, first_confidence, item_lengths, item_observed, seed,
                      length_temperature, min(max_length or model.config.max_frames, model.config.max_frames))
    longest = max(frames)
    joints, dims = model.config.num_joints, model.config.dims

    x_start = start.unsqueeze(1).expand(batch, longest, joints, dims).contiguous()
    frame_mask = torch.arange(longest, device=device).unsqueeze(0) < torch.tensor(frames, device=device).unsqueeze(1)
    known, known_mask = _observed(item_observed, batch, longest, joints, dims, device)

    guided = [g is not None and g != 1 for g in item_guidance]
    refine = _guided_refiner(model, text, item_guidance, device) if any(guided) else model.refine

    x_t = x_start.clone()
    presence = torch.ones(batch, longest, joints, dtype=torch.bool, device=device)
    for step in range(max(item_steps) - 1, -1, -1):
        active = torch.tensor([step < n for n in item_steps], device=device)
        beta = torch.stack([b[step] if step < len(b) else b.new_tensor(1.0) for b in betas])
        refined = refine(x_t, start, beta, text, frame_mask)
        present = (refined.presence_logits > 0) | known_mask[..., 0]
        # an absent joint rests at the starting pose, as the missing joints of training targets do:
        # the next step's input then looks like what the refiner was trained on
        clean = torch.where(present.unsqueeze(-1), refined.poses, x_start)
        clean = torch.where(known_mask, known, clean)
        next_beta = torch.stack([b[step - 1] if 0 < step <= len(b) else b.new_tensor(0.0) for b in betas])
        x_t = torch.where(active.view(-1, 1, 1, 1), schedule.step(x_t, clean, x_start, beta, next_beta), x_t)
        presence = torch.where(active.view(-1, 1, 1), present, presence)
        yield [Generated(x_t[i, :frames[i]].cpu().numpy(), presence[i, :frames[i]].float().cpu().numpy())
               for i in range(batch)]


def _per_item(value, batch: int, default, name: str) -> list:
    if value is None or isinstance(value, (int, float, Observed, PoseSequence, np.ndarray)):
        return [default if value is None else value] * batch
    values = list(value)
    if len(values) != batch:
        raise ValueError(f"{name}: got {len(values)} values for {batch} texts")
    return [default if v is None else v for v in values]


def _lengths(model: T2PModel, text: TextEncoding, first_pose: torch.Tensor, first_confidence: torch.Tensor,
             lengths: list, observed: list, seed: int | None, temperature: float, longest: int) -> list[int]:
    location, log_variance = model.predict_length(text, first_pose, first_confidence)
    scale = torch.exp(0.5 * log_variance)  # the Laplace scale of the log-length
    frames = []
    for i, length in enumerate(lengths):
        if observed[i] is not None:
            length = len(observed[i].data) if length is None else length
        if length is None:
            log_length = location[i]
            if temperature > 0:
                generator = torch.Generator().manual_seed(seed if seed is not None else 0)
                uniform = torch.rand((), generator=generator).item() - 0.5
                laplace = -np.sign(uniform) * np.log1p(-2 * abs(uniform))
                log_length = log_length + temperature * scale[i] * float(laplace)
            length = int(torch.exp(log_length).round().clamp(1, longest).item())
        if not 1 <= int(length) <= model.config.max_frames:
            raise ValueError(f"length must be in 1..{model.config.max_frames}, got {length}")
        frames.append(int(length))
    return frames


def _first_poses(model: T2PModel, first_poses: list, device) -> tuple[torch.Tensor, torch.Tensor]:
    joints, dims = model.config.num_joints, model.config.dims
    poses, confidences = [], []
    for first in first_poses:
        if first is None:
            pose, confidence = model.neutral_pose.cpu().numpy(), np.ones(joints, np.float32)
        elif isinstance(first, PoseSequence):
            pose, confidence = first.data[0], first.confidence[0]
        elif isinstance(first, tuple):
            pose, confidence = first
        else:
            pose = np.asarray(first)
            confidence = np.ones(pose.shape[0], np.float32)
        pose = np.asarray(pose, dtype=np.float32)
        if pose.shape != (joints, dims):
            raise ValueError(f"first pose must be (joints={joints}, dims={dims}), got {pose.shape}")
        poses.append(pose)
        confidences.append(np.asarray(confidence, dtype=np.float32))
    return torch.tensor(np.stack(poses), device=device), torch.tensor(np.stack(confidences), device=device)


def _observed(observed: list, batch: int, frames: int, joints: int, dims: int, device):
    known = torch.zeros(batch, frames, joints, dims, device=device)
    mask = torch.zeros(batch, frames, joints, 1, dtype=torch.bool, device=device)
    for i, item in enumerate(observed):
        if item is not None:
            count = min(frames, len(item.data))
            known[i, :count] = torch.as_tensor(item.data[:count], device=device)
            mask[i, :count, :, 0] = torch.as_tensor(item.confidence[:count] > 0, device=device)
    return known, mask


def _guided_refiner(model: T2PModel, text: TextEncoding, guidance: list, device):
    """A refine function that runs conditional and unconditional halves in one forward pass."""
    batch = text.states.shape[0]
    empty_tokens, empty_mask = pad_tokens([[model.vocabulary._index[BOS]]] * batch)
    empty = model.encode_text(empty_tokens.to(device), empty_mask.to(device))
    padding = text.states.shape[1] - 1
    both = TextEncoding(
        torch.cat([text.states, torch.nn.functional.pad(empty.states, (0, 0, 0, padding))]),
        torch.cat([text.mask, torch.nn.functional.pad(empty.mask, (0, padding), value=False)]))
    scale = torch.tensor([1.0 if g is None else float(g) for g in guidance], device=device)

    def refine(x_t, start, beta, _text, frame_mask) -> Refined:
        out = model.refine(x_t.repeat(2, 1, 1, 1), start.repeat(2, 1, 1), beta.repeat(2), both,
                           frame_mask.repeat(2, 1))
        poses = out.poses[batch:] + scale.view(-1, 1, 1, 1) * (out.poses[:batch] - out.poses[batch:])
        logits = out.presence_logits[batch:] + scale.view(-1, 1, 1) * (
            out.presence_logits[:batch] - out.presence_logits[batch:])
        return Refined(poses, logits)

    return refine


def generate_chain(model: T2PModel, texts: Sequence[TextLike], first_pose: FirstPoseLike = None,
                   **options) -> Generated:
    """Several signs in a row, each starting from the previous one's last frame."""
    pieces = []
    current = first_pose
    for text in texts:
        (sequence,) = generate(model, [text], [current], **options)
        pieces.append(sequence)
        current = (sequence.data[-1], sequence.confidence[-1])
    return Generated(np.concatenate([p.data for p in pieces]), np.concatenate([p.confidence for p in pieces]))


def as_pose(model: T2PModel, sequence: Generated, first_pose: PoseSequence | None = None) -> Pose:
    """A generated sequence as a pose-format `Pose`, in the space of the first pose it started from
    (or the training data's space when it started from the neutral pose); joints predicted absent
    are written with confidence 0."""
    if first_pose is not None:
        return to_pose(sequence.data, model.skeleton, first_pose.fps, first_pose.normalization,
                       sequence.confidence, canvas=first_pose.canvas)
    return to_pose(sequence.data, model.skeleton, model.config.fps, model.output_normalization,
                   sequence.confidence, canvas=tuple(model.config.output_canvas))
