"""The one refinement loop. The CLI, evaluation, composition, correction and Serve all generate
through `refinement_steps` (one step at a time, which Serve takes turns with and streams) or
`generate` (its last step).

```
text   = encode(texts)                      # once per call
length = predicted median (or given)        # from the text and the starting pose
x_T    = first pose repeated `length` times
for t = T-1 … 0:                            # every one of the T steps calls the refiner once
    x0_hat, presence = refine(x_t, t, text) # one forward pass for the whole batch
    x_t-1  = schedule.step(x_t, x0_hat)     # x0_hat itself after a single step
```
The requests of one call may differ in text, length, number of steps and guidance: sequences are
padded with frame masks, and a request with fewer steps joins the loop when its own schedule
begins, so each equals what generating it alone gives. Every joint gets a position in every frame;
joints the model predicts absent (a hand out of view, the idle hand of a one-handed sign) get
confidence 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from t2p.generation.request import SignRequest, as_requests
from t2p.model import T2PModel
from t2p.model.layers import Known, Refined, TextEncoding, interpolate_known, pad_tokens
from t2p.notation import SignText
from t2p.pose import Keypoints


def generate(model: T2PModel, requests: Sequence[SignRequest | SignText | str]) -> list[Keypoints]:
    """One generated sequence per request (a bare sign: every setting the model's default),
    shoulder-normalised: a position for every joint in every frame, confidence 1 where the model
    predicts the joint present, else 0."""
    final = None
    for final in refinement_steps(model, requests):
        pass
    return [] if final is None else final.sequences


@dataclass
class RefinementStep:
    """The loop after one step of the longest schedule in the call."""
    step: int                           # 1 … steps
    steps: int                          # the longest schedule's steps: after step == steps, generation is done
    refined: list[bool]                 # per request: whether this step refined it (fewer steps: it joins later)
    sequences: list[Keypoints] | None   # per request, the sequence now: after every step if asked, else the last only
    rows: int = 0                       # how many requests went through the refiner in this step

    @property
    def done(self) -> bool:
        return self.step == self.steps


def refinement_steps(model: T2PModel, requests: Sequence[SignRequest | SignText | str], every_step: bool = False,
                     wanted: Callable[[], Sequence[bool]] | None = None) -> Iterator[RefinementStep]:
    """The loop, one refinement step at a time: a `RefinementStep` after each step, with the
    sequences after every step (`every_step`) or after the last only (the output's finishing
    touches are not paid per step). `wanted`, asked before each step, says which requests someone
    still waits for: the others are refined no more (Serve: a client that left, or timed out).
    A `ValueError` names what is wrong with a request before the first step."""
    requests = as_requests(requests)
    if requests:
        yield from _refinement(model, requests, every_step, wanted)


@torch.inference_mode()  # on a generator, entered and left around each step (never while the caller runs)
def _refinement(model: T2PModel, requests: list[SignRequest], every_step: bool,
                wanted: Callable[[], Sequence[bool]] | None) -> Iterator[RefinementStep]:
    model.eval()
    batch = _Batch.of(model, requests)
    for step in range(batch.longest_schedule - 1, -1, -1):
        rows = batch.refine(step, None if wanted is None else list(wanted()))
        done = batch.longest_schedule - step
        refined = [step < count for count in batch.steps]
        sequences = batch.output() if every_step or step == 0 else None
        yield RefinementStep(done, batch.longest_schedule, refined, sequences, rows)


class _Batch:
    """The requests of one call as padded tensors, refined in place one step at a time."""

    def __init__(self, model: T2PModel, steps: list[int], text: TextEncoding, start: torch.Tensor,
                 frames: list[int], known: torch.Tensor, known_mask: torch.Tensor, guidance: list[float],
                 proportions: torch.Tensor):
        # start: (batch, joints, dims); known: (batch, frames, joints, dims); known_mask: (batch, frames, joints, 1)
        device = start.device
        self.model, self.steps, self.frames, self.start = model, steps, frames, start
        self.schedule = model.schedule
        size, longest = len(steps), max(frames)
        self.longest_schedule, self.fewest_steps = max(steps), min(steps)
        # every request's betas on one grid, aligned at the end: one with fewer steps starts later
        # (beta 1 until its schedule begins) and is not refined before then
        betas = torch.ones(size, self.longest_schedule)
        for i, count in enumerate(steps):
            betas[i, :count] = self.schedule.betas(count)  # validates every step count
        next_betas = torch.cat([torch.zeros(size, 1), betas[:, :-1]], dim=1)  # 0 after the last step
        self.betas, self.next_betas = betas.to(device), next_betas.to(device)
        self.starts_at = torch.tensor(steps, device=device)
        self.frame_mask = torch.arange(longest, device=device).unsqueeze(0) < torch.tensor(frames, device=device).unsqueeze(1)
        self.known, self.known_mask = known, known_mask
        self.any_known = bool(known_mask.any())
        # x_T, where refinement starts (t2p.model.schedule): the first pose held over every frame;
        # gaps between known values start from the straight path between them, as in training
        x_T = start.unsqueeze(1).expand(size, longest, *start.shape[1:]).contiguous()
        self.x_T = interpolate_known(known, known_mask[..., 0], start) if self.any_known else x_T
        self.x_t = self.x_T.clone()
        self.presence = torch.ones(size, longest, start.shape[1], dtype=torch.bool, device=device)
        self.everyone = torch.arange(size, device=device)
        self.proportions = proportions
        self.bones = model.skeleton.bone_tree() if bool(proportions.any()) else []
        self.refiner = guided(model, text, guidance)

    @classmethod
    def of(cls, model: T2PModel, requests: list[SignRequest]) -> "_Batch":
        device = model.pose_mean.device
        defaults = model.schedule_config
        text = model.encode_signs([request.text(model.config.default_notation) for request in requests], device)
        first_pose, first_confidence = _first_poses(model, [request.first_pose for request in requests], device)
        start = model.complete_first_pose(first_pose, first_confidence)  # (batch, joints, dims)
        frames = _lengths(model, text, first_pose, first_confidence, requests)
        known, known_mask = _observed(model, requests, max(frames), device)
        return cls(model, [defaults.steps if r.steps is None else r.steps for r in requests], text, start, frames,
                   known, known_mask, [defaults.guidance if r.guidance is None else r.guidance for r in requests],
                   torch.tensor([r.keep_proportions for r in requests], device=device))

    def refine(self, step: int, wanted: list[bool] | None = None) -> int:
        """Refinement step `step` (counting down) for the requests whose schedule has begun (and,
        given `wanted`, that someone still waits for); returns how many it refined."""
        rows = self.everyone if step < self.fewest_steps else self.everyone[step < self.starts_at]
        if wanted is not None and not all(wanted):
            rows = rows[torch.tensor(wanted, device=rows.device)[rows]]
        if len(rows) == 0:
            return 0
        given = Known(self.known[rows], self.known_mask[rows, ..., 0]) if self.any_known else None
        refined = self.refiner(rows, self.x_t[rows], self.start[rows], self.betas[rows, step], self.frame_mask[rows],
                               given)
        present = refined.presence_logits > 0
        if self.any_known:
            present = present | self.known_mask[rows, ..., 0]
        # an absent joint rests at the starting pose, as the missing joints of training targets do:
        # the next step's input then looks like what the refiner was trained on
        clean = torch.where(present.unsqueeze(-1), refined.poses, self.x_T[rows])
        if self.any_known:
            clean = torch.where(self.known_mask[rows], self.known[rows], clean)
        self.x_t[rows] = self.schedule.step(self.x_t[rows], clean, self.x_T[rows], self.betas[rows, step],
                                            self.next_betas[rows, step])
        self.presence[rows] = present
        return len(rows)

    def output(self) -> list[Keypoints]:
        """Every request's sequence as it is now, on the CPU (one copy for the batch, then views)."""
        output = self.x_t
        if self.bones:
            output = torch.where(self.proportions.view(-1, 1, 1, 1), keep_bone_lengths(self.x_t, self.start, self.bones),
                                 output)
        # observed values come back exactly as given, not as the last step's approximation of them
        data = torch.where(self.known_mask, self.known, output).cpu().numpy()
        confidence = self.presence.float().cpu().numpy()
        return [Keypoints(data[i, :length], confidence[i, :length]) for i, length in enumerate(self.frames)]


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


def guided(model: T2PModel, text: TextEncoding, guidance: list[float]):
    """The refiner with classifier-free guidance, `uncond + s * (cond - uncond)` per row:
    refine(rows, x_t, start, beta, frame_mask, known) for some rows of the batch. Only the guided
    rows (s != 1) also run an unconditional pass, in the same forward call."""
    device = text.states.device
    scales = torch.tensor([float(g) for g in guidance], device=device)
    guided_rows = scales != 1
    empty = None
    if guided_rows.any():
        empty_tokens, empty_mask = pad_tokens([[model.vocabulary.bos_id]] * len(guidance))
        empty = model.encode_text(empty_tokens.to(device), empty_mask.to(device))
        padding = text.states.shape[1] - 1
        empty = TextEncoding(torch.nn.functional.pad(empty.states, (0, 0, 0, padding)),
                             torch.nn.functional.pad(empty.mask, (0, padding), value=False))

    def refine(rows, x_t, start, beta, frame_mask, known: Known | None = None) -> Refined:
        # x_t: (rows, frames, joints, dims); start: (rows, joints, dims); beta: (rows,)
        conditional = TextEncoding(text.states[rows], text.mask[rows])
        if empty is None or not guided_rows[rows].any():
            return model.refine(x_t, start, beta, conditional, frame_mask, known)
        twice = guided_rows[rows].nonzero().squeeze(1)  # positions within `rows` that are guided
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


def _lengths(model: T2PModel, text: TextEncoding, first_pose: torch.Tensor, first_confidence: torch.Tensor,
             requests: list[SignRequest]) -> list[int]:
    """Each request's frames: given, the observed values' length, or predicted (the median, or a
    sample with `length_temperature`), within its `max_length` and the model's `max_frames`."""
    # first_pose: (batch, joints, dims); first_confidence: (batch, joints)
    location, log_squared_scale = model.predict_length(text, first_pose, first_confidence)
    scale = torch.exp(0.5 * log_squared_scale)  # the Laplace scale of the log-length
    frames = []
    for i, request in enumerate(requests):
        length = request.length
        if request.observed is not None and length is None:
            length = len(request.observed)
        if length is None:
            longest = min(request.max_length or model.config.max_frames, model.config.max_frames)
            log_length = location[i]
            if request.length_temperature > 0:
                generator = torch.Generator().manual_seed(request.seed if request.seed is not None else 0)
                uniform = torch.rand((), generator=generator).item() - 0.5
                laplace = -np.sign(uniform) * np.log1p(-2 * abs(uniform))
                log_length = log_length + request.length_temperature * scale[i] * float(laplace)
            length = int(torch.exp(log_length).round().clamp(1, longest).item())
        if not 1 <= int(length) <= model.config.max_frames:
            raise ValueError(f"length must be in 1..{model.config.max_frames}, got {length}")
        frames.append(int(length))
    return frames


def starting_poses(model: T2PModel, first_poses: Sequence[Keypoints | None]) -> np.ndarray:
    """The pose each refinement starts from: the first frame of its first pose (or the neutral
    pose) with missing keypoints completed by the model, exactly as `generate` builds it.
    (items, joints, dims)"""
    with torch.inference_mode():
        pose, confidence = _first_poses(model, list(first_poses), model.pose_mean.device)
        return model.complete_first_pose(pose, confidence).cpu().numpy()


def _first_poses(model: T2PModel, first_poses: list[Keypoints | None], device) -> tuple[torch.Tensor, torch.Tensor]:
    joints, dims = model.config.num_joints, model.config.dims
    poses, confidences = [], []
    for first in first_poses:
        if first is None:
            pose, confidence = model.neutral_pose.cpu().numpy(), np.ones(joints, np.float32)
        else:
            pose, confidence = first.data[0], first.confidence[0]
        pose = np.asarray(pose, dtype=np.float32)
        if pose.shape != (joints, dims):
            raise ValueError(f"first pose must be (joints={joints}, dims={dims}), got {pose.shape}")
        poses.append(pose)
        confidences.append(np.asarray(confidence, dtype=np.float32))
    return torch.tensor(np.stack(poses), device=device), torch.tensor(np.stack(confidences), device=device)


def _observed(model: T2PModel, requests: list[SignRequest], frames: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The values each request holds fixed, padded to `frames`: (values (batch, frames, joints,
    dims), mask (batch, frames, joints, 1))."""
    joints, dims = model.config.num_joints, model.config.dims
    known = torch.zeros(len(requests), frames, joints, dims, device=device)
    mask = torch.zeros(len(requests), frames, joints, 1, dtype=torch.bool, device=device)
    for i, request in enumerate(requests):
        if request.observed is not None:
            count = min(frames, len(request.observed))
            known[i, :count] = torch.as_tensor(request.observed.data[:count], device=device)
            mask[i, :count, :, 0] = torch.as_tensor(request.observed.confidence[:count] > 0, device=device)
    return known, mask
