"""Generation: the one refinement loop. The CLI and evaluation call `generate`; `iter_generate`
(every step's sequences, for `t2p render`) and `refinement_steps` (one step at a time: Ray Serve
takes turns between batches and streams steps with it) are the same loop.

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

from t2p.model import Known, Refined, T2PModel, TextEncoding, interpolate_known, pad_tokens
from t2p.notation import BOS, SignText
from t2p.pose import PoseSequence, in_layout, to_pose

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
             guidance: float | Sequence[float | None] | None = None,
             seed: int | Sequence[int | None] | None = None,
             observed: Sequence[Observed | None] | None = None,
             length_temperature: float = 0.0, max_length: int | None = None,
             keep_proportions: bool | Sequence[bool] = False) -> list[Generated]:
    """One `Generated` sequence per text.

    texts: `SignText`s (or strings in the model's default notation); empty text is unconditional.
    first_poses: who signs; default the model's neutral pose. Missing keypoints are completed first.
    steps: refinement steps (each calls the refiner once); default the model's schedule.
    lengths: frames per item; default the predicted median length.
    guidance: classifier-free guidance scale s, `uncond + s * (cond - uncond)`; default the model's
        (its schedule config); 1 = off.
    seed: makes sampled lengths (`length_temperature > 0`) reproducible; one for all or one per
        item (each item has its own generator, so items with different seeds share one call).
    observed: per item, values that must stay fixed (completing a sequence with gaps).
    max_length: the most frames a predicted length may have (default: the model's max_frames); one
        for all or one per item.
    keep_proportions: hold every bone within `BONE_TOLERANCE` of its length in the starting pose
        (see `keep_bone_lengths`; off by default, it costs accuracy on real data).
    """
    final = None
    for final in refinement_steps(model, texts, first_poses, steps, lengths, guidance, seed, observed,
                                  length_temperature, max_length, keep_proportions):
        pass
    return [] if final is None else final.sequences


def iter_generate(model: T2PModel, texts: Sequence[TextLike], first_poses: Sequence[FirstPoseLike] | None = None,
                  steps: int | Sequence[int] | None = None, lengths: int | Sequence[int | None] | None = None,
                  guidance: float | Sequence[float | None] | None = None,
                  seed: int | Sequence[int | None] | None = None,
                  observed: Sequence[Observed | None] | None = None,
                  length_temperature: float = 0.0, max_length: int | None = None,
                  keep_proportions: bool | Sequence[bool] = False) -> Iterator[list[Generated]]:
    """`generate`, yielding every item's sequence after each refinement step (for visualisation)."""
    for step in refinement_steps(model, texts, first_poses, steps, lengths, guidance, seed, observed,
                                 length_temperature, max_length, keep_proportions, every_step=True):
        yield step.sequences


@dataclass
class RefinementStep:
    """The loop after one step of the longest schedule in the call."""
    step: int                           # 1 … steps
    steps: int                          # the longest schedule's steps: after step == steps, generation is done
    refined: list[bool]                 # per item: whether this step refined it (fewer steps: it joins later)
    sequences: list[Generated] | None   # per item, the sequence now: after every step if asked, else the last only

    @property
    def done(self) -> bool:
        return self.step == self.steps


def refinement_steps(model: T2PModel, texts: Sequence[TextLike], first_poses: Sequence[FirstPoseLike] | None = None,
                     steps: int | Sequence[int] | None = None, lengths: int | Sequence[int | None] | None = None,
                     guidance: float | Sequence[float | None] | None = None,
                     seed: int | Sequence[int | None] | None = None,
                     observed: Sequence[Observed | None] | None = None,
                     length_temperature: float = 0.0, max_length: int | Sequence[int | None] | None = None,
                     keep_proportions: bool | Sequence[bool] = False,
                     every_step: bool = False) -> Iterator[RefinementStep]:
    """`generate` one refinement step at a time, the same loop: a `RefinementStep` after each step,
    with the sequences after every step (`every_step`) or after the last only. Serve takes turns
    between the steps of several batches this way, and streams them."""
    for step, steps_in_all, refined, state in _refinement(model, texts, first_poses, steps, lengths, guidance, seed,
                                                          observed, length_temperature, max_length, keep_proportions,
                                                          every_step):
        yield RefinementStep(step, steps_in_all, refined, None if state is None else _to_numpy(*state))


def _to_numpy(x_t: torch.Tensor, presence: torch.Tensor, frames: list[int]) -> list[Generated]:
    # one copy to the CPU for the whole batch, then views per item
    data, confidence = x_t.cpu().numpy(), presence.float().cpu().numpy()
    return [Generated(data[i, :length], confidence[i, :length]) for i, length in enumerate(frames)]


@torch.inference_mode()
def _refinement(model: T2PModel, texts: Sequence[TextLike], first_poses, steps, lengths, guidance, seed,
                observed, length_temperature: float, max_length: int | None,
                keep_proportions: bool | Sequence[bool] = False, every_step: bool = True):
    """The refinement loop, yielding (step, steps, refined, state) after every step: `refined` which
    items this step refined, `state` (x_t, presence, frames) as tensors after every step or, without
    `every_step`, after the last one only (None before: the output's finishing touches are not paid per step)."""
    if len(texts) == 0:
        return
    model.eval()
    device = model.pose_mean.device
    batch = len(texts)
    signs = [t if isinstance(t, SignText) else SignText(t, model.config.default_notation) for t in texts]
    item_steps = per_item(steps, batch, model.schedule_config.steps, "steps")
    item_guidance = per_item(guidance, batch, model.schedule_config.guidance, "guidance")
    item_lengths = per_item(lengths, batch, None, "lengths")
    item_observed = per_item(observed, batch, None, "observed")
    item_first = per_item(first_poses, batch, None, "first_poses")
    item_seeds = per_item(seed, batch, None, "seed")
    schedule = model.schedule
    longest_schedule = max(item_steps)
    # every item's betas on one grid, aligned at the end: an item with fewer steps starts later
    # (beta 1 until its schedule begins) and is not refined before then
    betas = torch.ones(batch, longest_schedule)
    for i, count in enumerate(item_steps):
        betas[i, :count] = schedule.betas(count)  # validates every step count
    next_betas = torch.cat([torch.zeros(batch, 1), betas[:, :-1]], dim=1)  # 0 after the last step
    betas, next_betas = betas.to(device), next_betas.to(device)
    starts_at = torch.tensor(item_steps, device=device)

    text = model.encode_signs(signs, device)  # once per call, never per step
    first_pose, first_confidence = _first_poses(model, item_first, device)
    start = model.complete_first_pose(first_pose, first_confidence)  # (batch, joints, dims)
    longest_allowed = [min(limit or model.config.max_frames, model.config.max_frames)
                       for limit in per_item(max_length, batch, None, "max_length")]
    frames = _lengths(model, text, first_pose, first_confidence, item_lengths, item_observed, item_seeds,
                      length_temperature, longest_allowed)
    longest = max(frames)
    joints, dims = model.config.num_joints, model.config.dims

    # x_T, where refinement starts (schedule.py): the first pose held over every frame
    x_T = start.unsqueeze(1).expand(batch, longest, joints, dims).contiguous()
    frame_mask = torch.arange(longest, device=device).unsqueeze(0) < torch.tensor(frames, device=device).unsqueeze(1)
    known, known_mask = _observed(item_observed, batch, longest, joints, dims, device)
    any_known = bool(known_mask.any())
    if any_known:  # gaps start from the straight path between the known values, as in training
        x_T = interpolate_known(known, known_mask[..., 0], start)
    refine = _refiner(model, text, item_guidance, device)

    x_t = x_T.clone()
    presence = torch.ones(batch, longest, joints, dtype=torch.bool, device=device)
    everyone = torch.arange(batch, device=device)
    proportions = torch.tensor(per_item(keep_proportions, batch, False, "keep_proportions"), device=device)
    bones = model.skeleton.bone_tree() if bool(proportions.any()) else []
    fewest_steps = min(item_steps)
    for step in range(longest_schedule - 1, -1, -1):
        # only the items whose schedule has begun go through the refiner
        rows = everyone if step < fewest_steps else everyone[step < starts_at]
        given = Known(known[rows], known_mask[rows, ..., 0]) if any_known else None
        refined = refine(rows, x_t[rows], start[rows], betas[rows, step], frame_mask[rows], given)
        present = refined.presence_logits > 0
        if any_known:
            present = present | known_mask[rows, ..., 0]
        # an absent joint rests at the starting pose, as the missing joints of training targets do:
        # the next step's input then looks like what the refiner was trained on
        clean = torch.where(present.unsqueeze(-1), refined.poses, x_T[rows])
        if any_known:
            clean = torch.where(known_mask[rows], known[rows], clean)
        x_t[rows] = schedule.step(x_t[rows], clean, x_T[rows], betas[rows, step], next_betas[rows, step])
        presence[rows] = present
        done = longest_schedule - step
        refined = [step < count for count in item_steps]
        if not (every_step or step == 0):
            yield done, longest_schedule, refined, None
            continue
        output = x_t
        if bones:
            output = torch.where(proportions.view(-1, 1, 1, 1), keep_bone_lengths(x_t, start, bones), x_t)
        # observed values come back exactly as given, not as the last step's approximation of them
        yield done, longest_schedule, refined, (torch.where(known_mask, known, output), presence, frames)


BONE_TOLERANCE = 0.04  # a bone may differ this much from the signer's: real recordings vary (depth, tracking)


def keep_bone_lengths(poses: torch.Tensor, reference: torch.Tensor, bones: Sequence[tuple[int, int]],
                      tolerance: float = BONE_TOLERANCE) -> torch.Tensor:
    """Every frame with the bone lengths of `reference` (the signer's starting pose), within
    `tolerance`: a bone longer or shorter than that is scaled to the nearest allowed length along its
    predicted direction, from the root of its component outwards. The output keeps the signer's
    body, not the average body of the training data.

    Off by default (`keep_proportions`): the poses are 2D projections, in which a turning hand's
    bones shorten and lengthen. In the held-out fingerspelling recordings the hand bones differ from
    their first frame's by 26% (median), and 41% of body-bone values differ by more than 5%. Holding
    every bone within 4% raised held-out DTW-MJE by 9% (0.182 -> 0.198), and exact lengths by 12%."""
    # poses: (batch, frames, joints, dims); reference: (batch, joints, dims)
    out = poses.clone()
    for parent, child in bones:
        direction = poses[:, :, child] - poses[:, :, parent]
        length = direction.norm(dim=-1, keepdim=True)
        target = (reference[:, child] - reference[:, parent]).norm(dim=-1).view(-1, 1, 1)
        allowed = torch.minimum(torch.maximum(length, target * (1 - tolerance)), target * (1 + tolerance))
        out[:, :, child] = out[:, :, parent] + direction / length.clamp(min=1e-6) * allowed
    return out


def _refiner(model: T2PModel, text: TextEncoding, guidance: list, device):
    """refine(rows, x_t, start, beta, frame_mask, known) for a subset of the batch's rows; only the guided
    rows also run an unconditional pass, in the same forward call."""
    scales = torch.tensor([1.0 if g is None else float(g) for g in guidance], device=device)
    guided = scales != 1
    empty = None
    if guided.any():
        empty_tokens, empty_mask = pad_tokens([[model.vocabulary._index[BOS]]] * len(guidance))
        empty = model.encode_text(empty_tokens.to(device), empty_mask.to(device))
        padding = text.states.shape[1] - 1
        empty = TextEncoding(torch.nn.functional.pad(empty.states, (0, 0, 0, padding)),
                             torch.nn.functional.pad(empty.mask, (0, padding), value=False))

    def refine(rows, x_t, start, beta, frame_mask, known: Known | None = None) -> Refined:
        conditional = TextEncoding(text.states[rows], text.mask[rows])
        if empty is None or not guided[rows].any():
            return model.refine(x_t, start, beta, conditional, frame_mask, known)
        twice = guided[rows].nonzero().squeeze(1)  # positions within `rows` that are guided
        unconditional_rows = rows[twice]
        both = TextEncoding(torch.cat([conditional.states, empty.states[unconditional_rows]]),
                            torch.cat([conditional.mask, empty.mask[unconditional_rows]]))
        known_both = None if known is None else Known(torch.cat([known.values, known.values[twice]]),
                                                      torch.cat([known.mask, known.mask[twice]]))
        out = model.refine(torch.cat([x_t, x_t[twice]]), torch.cat([start, start[twice]]),
                           torch.cat([beta, beta[twice]]), both, torch.cat([frame_mask, frame_mask[twice]]), known_both)
        count = len(rows)
        poses, logits = out.poses[:count].clone(), out.presence_logits[:count].clone()
        scale = scales[unconditional_rows]
        uncond_poses, uncond_logits = out.poses[count:], out.presence_logits[count:]
        poses[twice] = uncond_poses + scale.view(-1, 1, 1, 1) * (poses[twice] - uncond_poses)
        logits[twice] = uncond_logits + scale.view(-1, 1, 1) * (logits[twice] - uncond_logits)
        return Refined(poses, logits)

    return refine


def per_item(value, batch: int, default, name: str) -> list:
    """One of `generate`'s arguments (one value for all items, or one per item) as one value per item."""
    if value is None or isinstance(value, (bool, int, float, Observed, PoseSequence, np.ndarray)):
        return [default if value is None else value] * batch
    values = list(value)
    if len(values) != batch:
        raise ValueError(f"{name}: got {len(values)} values for {batch} texts")
    return [default if v is None else v for v in values]


def _lengths(model: T2PModel, text: TextEncoding, first_pose: torch.Tensor, first_confidence: torch.Tensor,
             lengths: list, observed: list, seeds: list, temperature: float, longest: list[int]) -> list[int]:
    location, log_squared_scale = model.predict_length(text, first_pose, first_confidence)
    scale = torch.exp(0.5 * log_squared_scale)  # the Laplace scale of the log-length
    frames = []
    for i, length in enumerate(lengths):
        if observed[i] is not None:
            length = len(observed[i].data) if length is None else length
        if length is None:
            log_length = location[i]
            if temperature > 0:
                generator = torch.Generator().manual_seed(seeds[i] if seeds[i] is not None else 0)
                uniform = torch.rand((), generator=generator).item() - 0.5
                laplace = -np.sign(uniform) * np.log1p(-2 * abs(uniform))
                log_length = log_length + temperature * scale[i] * float(laplace)
            length = int(torch.exp(log_length).round().clamp(1, longest[i]).item())
        if not 1 <= int(length) <= model.config.max_frames:
            raise ValueError(f"length must be in 1..{model.config.max_frames}, got {length}")
        frames.append(int(length))
    return frames


@torch.inference_mode()
def starting_poses(model: T2PModel, first_poses: Sequence[FirstPoseLike]) -> np.ndarray:
    """The pose each item's refinement starts from: its first pose (or the neutral one) with missing
    keypoints completed by the model, exactly as `generate` builds it. (items, joints, dims)"""
    pose, confidence = _first_poses(model, list(first_poses), model.pose_mean.device)
    return model.complete_first_pose(pose, confidence).cpu().numpy()


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


def as_pose(model: T2PModel, sequence: Generated, first_pose: PoseSequence | None = None,
            hide_resting_hands: bool = True) -> Pose:
    """A generated sequence as a pose-format `Pose`, in the space and file layout of the first pose
    it started from (or the model's skeleton in the training data's space when it started from the
    neutral pose), at the model's frame rate whatever the first pose's (its frames are the model's:
    a 50 fps first pose gives a 25 fps model's sign the same duration as a 25 fps one); joints
    predicted absent are written with confidence 0, and so is a hand resting low outside the signing
    space (spoken-to-signed's `hide_lowered_hands`), rather than drawn floating."""
    if first_pose is not None:
        pose = to_pose(sequence.data, model.skeleton, model.config.fps, first_pose.normalization,
                       sequence.confidence, canvas=first_pose.canvas)
    else:
        pose = to_pose(sequence.data, model.skeleton, model.config.fps, model.output_normalization,
                       sequence.confidence, canvas=tuple(model.config.output_canvas))
    if hide_resting_hands and _has_holistic_arms(model):
        from spoken_to_signed.gloss_to_pose.concatenate import hide_lowered_hands
        pose = hide_lowered_hands(pose)
    if first_pose is not None and first_pose.layout is not None:
        pose = in_layout(pose, model.skeleton, first_pose.layout)  # the first pose's file layout
    return pose


def _has_holistic_arms(model: T2PModel) -> bool:
    points = {(c.name, p) for c in model.skeleton.components for p in c.points}
    return all(("POSE_LANDMARKS", f"{side}_{part}") in points for side in ("LEFT", "RIGHT")
               for part in ("WRIST", "SHOULDER", "HIP"))
