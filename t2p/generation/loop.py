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
    pool = RefinementPool(model)
    rows = pool.prepare(requests)
    longest = max(row.steps for row in rows)
    for done in range(1, longest + 1):
        keep = None if wanted is None else list(wanted())
        for index, row in enumerate(rows):
            if keep is not None and not keep[index]:
                pool.leave(row)
        # the rows whose schedule begins now: every row ends at the last step
        pool.join([row for index, row in enumerate(rows)
                   if row.steps == longest - done + 1 and (keep is None or keep[index])])
        step = pool.step()
        sequences = pool.sequences(rows) if every_step or done == longest else None
        yield RefinementStep(done, longest, [longest - done < row.steps for row in rows], sequences, len(step.refined))


@dataclass(eq=False)
class Row:
    """One request in refinement: its own tensors (unpadded) and how far its schedule has gone."""
    steps: int
    frames: int
    text: torch.Tensor               # (tokens, d_model) the encoded text
    start: torch.Tensor              # (joints, dims) the pose refinement starts from
    x_T: torch.Tensor                # (frames, joints, dims) where refinement starts
    x_t: torch.Tensor                # (frames, joints, dims) the sequence now
    known: torch.Tensor | None       # (frames, joints, dims) values given, or None
    known_mask: torch.Tensor | None  # (frames, joints) bool
    presence: torch.Tensor           # (frames, joints) bool, the last step's
    betas: torch.Tensor              # (steps + 1,) beta at each step in the order they are taken, then 0
    guidance: float
    keep_proportions: bool
    done: int = 0                    # steps taken

    @property
    def finished(self) -> bool:
        return self.done == self.steps


@dataclass
class PoolStep:
    """What one step of a pool did: the rows it refined and those whose schedule it ended (they left)."""
    refined: list[Row]
    finished: list[Row]


class RefinementPool:
    """Rows refined together, each at its own step of its own schedule: rows join and leave between
    steps. `refinement_steps` adds a call's rows as their schedules begin, so they all end at its
    last step; Serve adds each request as it arrives, so it waits for one step of the running batch,
    not for all of it (continuous batching). A row's result does not depend on the others in the pool."""

    def __init__(self, model: T2PModel):
        self.model, self.schedule = model, model.schedule
        self.device = model.pose_mean.device
        self.rows: list[Row] = []
        self._bones: list | None = None  # the skeleton's bone tree, for `keep_proportions`
        self._stack: _Stack | None = None
        self._empty_text: torch.Tensor | None = None  # (1, d_model) the encoding of no text, for guidance

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def prepare(self, requests: Sequence[SignRequest]) -> list[Row]:
        """The requests' rows, ready to join: text encoded, lengths predicted, starts completed.
        A `ValueError` names what is wrong with a request."""
        model, device = self.model, self.device
        defaults = model.schedule_config
        text = model.encode_signs([request.text(model.config.default_notation) for request in requests], device)
        first_pose, first_confidence = _first_poses(model, [request.first_pose for request in requests], device)
        start = model.complete_first_pose(first_pose, first_confidence)  # (batch, joints, dims)
        frames = _lengths(model, text, first_pose, first_confidence, requests)
        known, known_mask = _observed(model, requests, max(frames), device)
        rows = []
        for i, request in enumerate(requests):
            steps = defaults.steps if request.steps is None else request.steps
            # taken from the first step (beta 1: the start held) to the last, then 0: the clean sequence
            betas = torch.cat([self.schedule.betas(steps).flip(0), torch.zeros(1)]).to(device)  # validates steps
            length, tokens = frames[i], int(text.mask[i].sum())
            given = known_mask[i, :length, :, 0]
            has_known = bool(given.any())
            x_T = start[i].expand(length, *start.shape[1:]).contiguous()
            if has_known:  # gaps start from the straight path between known values, as in training
                x_T = interpolate_known(known[i:i + 1, :length], given.unsqueeze(0), start[i:i + 1])[0]
            rows.append(Row(steps, length, text.states[i, :tokens], start[i], x_T, x_T.clone(),
                            known[i, :length] if has_known else None, given if has_known else None,
                            torch.ones(length, start.shape[1], dtype=torch.bool, device=device), betas,
                            defaults.guidance if request.guidance is None else request.guidance,
                            bool(request.keep_proportions)))
        return rows

    def join(self, rows: Sequence[Row]) -> None:
        """Rows refined from the next step on."""
        joining = [row for row in rows if row not in self.rows and not row.finished]
        if joining:
            self._unstack()
            self.rows.extend(joining)

    def leave(self, row: Row) -> None:
        """A row refined no more (nobody waits for it); its sequence stays as it is."""
        if row in self.rows:
            self._unstack()
            self.rows.remove(row)

    @torch.inference_mode()
    def step(self) -> PoolStep:
        """One refinement step of every row in the pool; rows whose schedule it ends leave."""
        if not self.rows:
            return PoolStep([], [])
        stack = self._stack or self._stacked()
        beta = stack.betas.gather(1, stack.done.unsqueeze(1)).squeeze(1)
        next_beta = stack.betas.gather(1, (stack.done + 1).unsqueeze(1)).squeeze(1)
        refined = self._refine(stack, beta)
        present = refined.presence_logits > 0
        if stack.known is not None:
            present = present | stack.known_mask[..., 0]
        # an absent joint rests at the starting pose, as the missing joints of training targets do:
        # the next step's input then looks like what the refiner was trained on
        clean = torch.where(present.unsqueeze(-1), refined.poses, stack.x_T)
        if stack.known is not None:
            clean = torch.where(stack.known_mask, stack.known, clean)
        stack.x_t = self.schedule.step(stack.x_t, clean, stack.x_T, beta, next_beta)
        stack.presence = present
        stack.done = stack.done + 1
        stepped = list(self.rows)
        finished = [row for row, done in zip(stepped, stack.done.tolist()) if done == row.steps]
        if finished:
            self._unstack()
            self.rows = [row for row in self.rows if not row.finished]
        return PoolStep(stepped, finished)

    @torch.inference_mode()
    def sequences(self, rows: Sequence[Row]) -> list[Keypoints]:
        """The rows' sequences as they are now, on the CPU: observed values exactly as given,
        confidence 0 for the joints the last step found absent."""
        self._sync()
        out = []
        for row in rows:
            data = row.x_t
            if row.keep_proportions:
                if self._bones is None:
                    self._bones = self.model.skeleton.bone_tree()
                data = keep_bone_lengths(data.unsqueeze(0), row.start.unsqueeze(0), self._bones)[0]
            if row.known is not None:
                data = torch.where(row.known_mask.unsqueeze(-1), row.known, data)
            out.append(Keypoints(data.cpu().numpy().copy(), row.presence.float().cpu().numpy()))
        return out

    # --- the padded batch of the rows in the pool ------------------------------------------

    def _stacked(self) -> _Stack:
        rows = self.rows
        frames, tokens = max(row.frames for row in rows), max(len(row.text) for row in rows)
        schedule = max(len(row.betas) for row in rows)

        def pad(tensors: list[torch.Tensor], length: int, value=0) -> torch.Tensor:
            return torch.stack([torch.nn.functional.pad(t, (0, 0) * (t.dim() - 1) + (0, length - len(t)), value=value)
                                for t in tensors])

        known = known_mask = None
        if any(row.known is not None for row in rows):
            known = pad([row.known if row.known is not None else torch.zeros_like(row.x_t) for row in rows], frames)
            known_mask = pad([row.known_mask if row.known_mask is not None
                              else torch.zeros(row.frames, row.x_t.shape[1], dtype=torch.bool, device=self.device)
                              for row in rows], frames, value=False).unsqueeze(-1)
        lengths = torch.tensor([row.frames for row in rows], device=self.device)
        text_lengths = torch.tensor([len(row.text) for row in rows], device=self.device)
        self._stack = _Stack(
            x_t=pad([row.x_t for row in rows], frames), x_T=pad([row.x_T for row in rows], frames),
            start=torch.stack([row.start for row in rows]), known=known, known_mask=known_mask,
            presence=pad([row.presence for row in rows], frames, value=True),
            frame_mask=torch.arange(frames, device=self.device).unsqueeze(0) < lengths.unsqueeze(1),
            text=TextEncoding(pad([row.text for row in rows], tokens),
                              torch.arange(tokens, device=self.device).unsqueeze(0) < text_lengths.unsqueeze(1)),
            betas=pad([row.betas for row in rows], schedule),
            done=torch.tensor([row.done for row in rows], device=self.device),
            guidance=torch.tensor([row.guidance for row in rows], device=self.device))
        return self._stack

    def _sync(self) -> None:
        """The stacked state written back into the rows (views: the stack's tensors are replaced,
        never changed in place, at every step)."""
        if self._stack is None:
            return
        stack = self._stack
        for i, (row, done) in enumerate(zip(self.rows, stack.done.tolist())):
            row.x_t, row.presence, row.done = stack.x_t[i, :row.frames], stack.presence[i, :row.frames], done

    def _unstack(self) -> None:
        self._sync()
        self._stack = None

    def _refine(self, stack: _Stack, beta: torch.Tensor) -> Refined:
        """The refiner on every row, with classifier-free guidance `uncond + s * (cond - uncond)` for
        the rows whose scale s is not 1: only those also run an unconditional pass, in the same call."""
        model = self.model
        known = None if stack.known is None else Known(stack.known, stack.known_mask[..., 0])
        twice = (stack.guidance != 1).nonzero().squeeze(1)
        if len(twice) == 0:
            return model.refine(stack.x_t, stack.start, beta, stack.text, stack.frame_mask, known)
        if self._empty_text is None:
            empty_tokens, empty_mask = pad_tokens([[model.vocabulary.bos_id]])
            self._empty_text = model.encode_text(empty_tokens.to(self.device), empty_mask.to(self.device)).states[0]
        count, tokens = len(stack.x_t), stack.text.states.shape[1]
        empty_states = torch.nn.functional.pad(self._empty_text, (0, 0, 0, tokens - 1)).expand(len(twice), -1, -1)
        empty_mask = (torch.arange(tokens, device=self.device) == 0).expand(len(twice), -1)
        both = TextEncoding(torch.cat([stack.text.states, empty_states]), torch.cat([stack.text.mask, empty_mask]))
        known_both = None if known is None else Known(torch.cat([known.values, known.values[twice]]),
                                                      torch.cat([known.mask, known.mask[twice]]))
        out = model.refine(torch.cat([stack.x_t, stack.x_t[twice]]), torch.cat([stack.start, stack.start[twice]]),
                           torch.cat([beta, beta[twice]]), both,
                           torch.cat([stack.frame_mask, stack.frame_mask[twice]]), known_both)
        poses, logits = out.poses[:count].clone(), out.presence_logits[:count].clone()
        scale = stack.guidance[twice]
        uncond_poses, uncond_logits = out.poses[count:], out.presence_logits[count:]
        poses[twice] = uncond_poses + scale.view(-1, 1, 1, 1) * (poses[twice] - uncond_poses)
        logits[twice] = uncond_logits + scale.view(-1, 1, 1) * (logits[twice] - uncond_logits)
        return Refined(poses, logits)


@dataclass
class _Stack:
    """The pool's rows as one padded batch, kept while no row joins or leaves."""
    x_t: torch.Tensor                # (rows, frames, joints, dims)
    x_T: torch.Tensor                # (rows, frames, joints, dims)
    start: torch.Tensor              # (rows, joints, dims)
    known: torch.Tensor | None       # (rows, frames, joints, dims)
    known_mask: torch.Tensor | None  # (rows, frames, joints, 1) bool
    presence: torch.Tensor           # (rows, frames, joints) bool
    frame_mask: torch.Tensor         # (rows, frames) True = real frame
    text: TextEncoding               # states (rows, tokens, d_model), mask (rows, tokens)
    betas: torch.Tensor              # (rows, longest schedule + 1)
    done: torch.Tensor               # (rows,) steps taken
    guidance: torch.Tensor           # (rows,)


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
