"""The training objective: every loss term of one batch, and the values given to the refiner.

Loss = confidence-masked reconstruction of x_0 from x_t + presence (which joints are there) +
length (median and spread of the log-length) + smoothness (velocities match the reference) +
first-pose correction + the handshape (fingers from their wrist, and their joint angles). Every term is masked by confidence and padding. `TrainingObjective` makes
the losses a module's `forward`, which is what DistributedDataParallel wraps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from t2p.model import RefinementSchedule, T2PModel
from t2p.model.layers import Known, TextEncoding, interpolate_known
from t2p.pose import Hand
from t2p.training.batches import LengthBatch, PoseBatch
from t2p.training.config import TrainConfig


def compute_losses(model: T2PModel, batch: PoseBatch, config: TrainConfig,
                   generator: torch.Generator | None = None, lengths: LengthBatch | None = None,
                   hands: LossHands | None = None) -> dict[str, torch.Tensor]:
    """Every loss term for one batch, and their weighted sum under "loss". The length predictor
    learns from `lengths` (examples drawn at random) when given, else from the batch itself;
    `hands` are the model's hands (`TrainingObjective` looks them up once), else looked up here."""
    hands = hands if hands is not None else LossHands(model.skeleton.hands())
    observed = (batch.confidence > 0) & batch.frame_mask.unsqueeze(-1)  # (batch, frames, joints)
    step = refinement_example(model, batch, config, observed, hands, generator)
    refined = model.refine(step.x_t, step.start, step.beta, step.text, batch.frame_mask, step.known)
    predicted, clean, given = refined.poses, step.clean, step.given
    scored = observed & ~given  # given values come back exactly as given (generation restores them)
    if lengths is None:
        lengths = LengthBatch(batch.tokens, batch.token_mask, batch.poses[:, 0], batch.confidence[:, 0], batch.lengths)
    terms = {
        "reconstruction": reconstruction_loss(model, predicted, clean, scored, observed, config.reconstruction_space),
        "presence": presence_loss(refined.presence_logits, observed, batch.frame_mask),
        "hand_shape": hand_shape_loss(predicted, clean, scored, observed, hands.shapes),
        "hand_angles": (hand_angle_loss(predicted, clean, scored, observed, hands)
                        if config.hand_angle_weight > 0 else predicted.new_zeros(())),
        "smoothness": smoothness_loss(predicted, clean, observed, model.pose_std),
        "length": _length_loss(model, lengths, config.length_unknown_symbols, generator, config.neutral_start),
        "first_pose": _first_pose_loss(model, batch.poses[:, 0], batch.confidence[:, 0], generator),
    }
    weights = {"reconstruction": config.reconstruction_weight, "presence": config.presence_weight,
               "length": config.length_weight, "smoothness": config.smoothness_weight,
               "first_pose": config.first_pose_weight, "hand_shape": config.hand_weight,
               "hand_angles": config.hand_angle_weight}
    total = sum(weights[name] * terms[name] for name in LOSS_TERMS)
    return {"loss": total, **{name: terms[name] for name in LOSS_TERMS}}


# the order the weighted terms are added in (a floating-point sum depends on it) and reported in
LOSS_TERMS = ("reconstruction", "presence", "length", "smoothness", "first_pose", "hand_shape", "hand_angles")


@dataclass
class RefinementExample:
    """What the refiner is given for one training batch, and what it should give back."""
    text: TextEncoding
    start: torch.Tensor         # (batch, joints, dims) the pose refinement starts from
    clean: torch.Tensor         # (batch, frames, joints, dims) the target x_0; the start where the reference is missing
    given: torch.Tensor         # (batch, frames, joints) bool: values given to the refiner (inpainting)
    known: Known | None
    beta: torch.Tensor          # (batch,) the step each example is at
    x_t: torch.Tensor           # (batch, frames, joints, dims) the refiner's input


def refinement_example(model: T2PModel, batch: PoseBatch, config: TrainConfig, observed: torch.Tensor,
                       hands: LossHands, generator: torch.Generator | None) -> RefinementExample:
    """The training input of each example: its text (dropped for some: the unconditional half of
    guidance; some symbols unknown), the values given to it (for some: the ends of a transition, or
    a recording with dropped frames and a lost hand), its start (`training_starts`), and x_t, a
    random step of the schedule between that start held still and its recording, a little noise added."""
    schedule = RefinementSchedule(model.schedule_config)
    device = batch.poses.device
    size = batch.size
    dropped = _draw(size, config.text_dropout, generator, device)  # text dropped: only <bos> kept
    token_mask = batch.token_mask.clone()
    token_mask[dropped, 1:] = False
    text = model.encode_text(_hide_symbols(model, batch.tokens, config.unknown_symbols, generator), token_mask)
    # examples given values start from their own first frame, as a recording being corrected does
    # (started elsewhere too, correction of the six real test signs fell behind linear interpolation:
    # 0.108 against 0.104); their x_T is the straight path between the given values, as generation builds it
    given = known_values(batch.lengths, observed, config.inpainting, hands.joints, generator).to(device)
    start = training_starts(model, batch, config, generator, keep_own=given.flatten(1).any(1))
    frames = batch.poses.shape[1]
    x_T = start.unsqueeze(1).expand(-1, frames, -1, -1)  # where refinement starts: the first pose held
    # where the reference is missing, its clean value is taken as the start: nothing to learn there
    clean = torch.where(observed.unsqueeze(-1), batch.poses, x_T)
    known = Known(clean, given) if config.inpainting > 0 else None
    if known is not None:
        x_T = interpolate_known(clean, given, start)
    beta = schedule.sample_training_betas(size, config.first_step_share, generator, device)
    x_t = schedule.noisy(x_T, clean, beta, config.training_noise, generator)
    return RefinementExample(text, start, clean, given, known, beta, x_t)


def reconstruction_loss(model: T2PModel, predicted: torch.Tensor, clean: torch.Tensor, scored: torch.Tensor,
                        observed: torch.Tensor, space: str) -> torch.Tensor:
    """Squared error of every scored value, standardised in body coordinates or in the refiner's own
    space (`TrainConfig.reconstruction_space`), per observed value. Given values are not scored, and
    every other value keeps its usual weight (dividing by the hidden count instead over-weighted the
    inpainting examples: correction on the six real signs of the tests went from 0.095 to 0.105)."""
    # predicted, clean: (batch, frames, joints, dims); scored, observed: (batch, frames, joints) bool
    if space == "body":
        standard_predicted = (predicted - model.pose_mean) / model.pose_std
        standard_clean = (clean - model.pose_mean) / model.pose_std
    else:
        standard_predicted, standard_clean = model.standardize(predicted), model.standardize(clean)
    squared = ((standard_predicted - standard_clean) ** 2).sum(-1)  # (batch, frames, joints)
    return (squared * scored.float()).sum() / observed.float().sum().clamp(min=1)


def presence_loss(presence_logits: torch.Tensor, observed: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of which joints are there, over every real frame."""
    # presence_logits: (batch, frames, joints); observed: (batch, frames, joints) bool; frame_mask: (batch, frames)
    real_frames = frame_mask.unsqueeze(-1).expand_as(observed).float()
    error = F.binary_cross_entropy_with_logits(presence_logits, observed.float(), reduction="none")
    return (error * real_frames).sum() / real_frames.sum().clamp(min=1)


def smoothness_loss(predicted: torch.Tensor, clean: torch.Tensor, observed: torch.Tensor,
                    scale: torch.Tensor) -> torch.Tensor:
    """Squared error of every joint's velocity (standardised by `scale`), where both frames of a
    step are observed: motion into and out of a gap counts too."""
    # predicted, clean: (batch, frames, joints, dims); observed: (batch, frames, joints) bool; scale: (joints, dims)
    seen = observed.float()
    velocity_weights = seen[:, 1:] * seen[:, :-1]
    velocity_error = ((((predicted[:, 1:] - predicted[:, :-1]) - (clean[:, 1:] - clean[:, :-1])) / scale) ** 2).sum(-1)
    return (velocity_error * velocity_weights).sum() / velocity_weights.sum().clamp(min=1)


def training_starts(model: T2PModel, batch: PoseBatch, config: TrainConfig,
                    generator: torch.Generator | None = None, keep_own: torch.Tensor | None = None) -> torch.Tensor:
    """The pose each example's refinement starts from: its own first frame (completed), or, for
    the configured shares, the neutral pose, another example's first frame or another example's
    last frame; rows of `keep_own` (batch,) always their own. The target stays the example's own
    recording: from any start, the text alone says what is signed. (batch, joints, dims)"""
    size = batch.size
    device = batch.poses.device
    last = (batch.lengths - 1).clamp(min=0).to(device)
    rows = torch.arange(size, device=device)
    with torch.no_grad():
        own = model.complete_first_pose(batch.poses[:, 0], batch.confidence[:, 0])
        last_frames = model.complete_first_pose(batch.poses[rows, last], batch.confidence[rows, last])
    # another example of the batch: a random other row (itself only in a batch of one)
    shift = torch.randint(1, max(size, 2), (size,), generator=generator).to(device)
    other = (rows + shift) % size
    kind = torch.rand(size, generator=generator).to(device)
    neutral_until = config.neutral_start
    other_until = neutral_until + config.other_start
    last_until = other_until + config.last_frame_start
    start = own
    start = torch.where((kind < neutral_until).view(-1, 1, 1), model.neutral_pose.expand_as(own), start)
    start = torch.where(((kind >= neutral_until) & (kind < other_until)).view(-1, 1, 1), own[other], start)
    start = torch.where(((kind >= other_until) & (kind < last_until)).view(-1, 1, 1), last_frames[other], start)
    if keep_own is not None:
        start = torch.where(keep_own.view(-1, 1, 1), own, start)
    return start


class LossHands:
    """The hands of a skeleton (`Skeleton.hands`) as the losses index them, made once (the
    objective keeps them) instead of at every step."""

    def __init__(self, hands: Sequence[Hand]):
        self.hands = tuple(hands)
        self.joints = [list(hand.joints) for hand in self.hands]  # every joint of each hand
        # each hand's wrist and its other joints, as `hand_shape_loss` takes them
        self.shapes = [(hand.wrist, list(hand.fingers)) for hand in self.hands]
        self.with_angles = [hand for hand in self.hands if hand.angles]  # a partial hand may have none
        self._angle_pairs: dict[torch.device, list[torch.Tensor]] = {}

    def angle_pairs(self, device: torch.device) -> list[torch.Tensor]:
        """The (a, b, c, d) bone pairs (`Hand.angles`) of each hand that has them, on `device`, made
        once per device: (angles, 4) each."""
        if device not in self._angle_pairs:
            self._angle_pairs[device] = [torch.tensor(hand.angles, device=device) for hand in self.with_angles]
        return self._angle_pairs[device]


def hand_shape_loss(predicted: torch.Tensor, clean: torch.Tensor, scored: torch.Tensor, observed: torch.Tensor,
                    hands: Sequence[tuple[int, list[int]]]) -> torch.Tensor:
    """Squared error of every hand joint relative to its wrist, in units of the reference hand's
    size (its joints' mean distance from the wrist): the handshape, whatever the arm does."""
    # predicted, clean: (batch, frames, joints, dims); scored, observed: (batch, frames, joints) bool
    total = predicted.new_zeros(())
    count = predicted.new_zeros(())
    for wrist, joints in hands:
        predicted_shape = predicted[:, :, joints] - predicted[:, :, wrist:wrist + 1]
        reference_shape = clean[:, :, joints] - clean[:, :, wrist:wrist + 1]
        seen = (observed[:, :, joints] & observed[:, :, wrist:wrist + 1]).float()  # (batch, frames, hand joints)
        reach = (reference_shape.norm(dim=-1) * seen).sum((1, 2)) / seen.sum((1, 2)).clamp(min=1)  # (batch,)
        error = ((predicted_shape - reference_shape) ** 2).sum(-1) / reach.clamp(min=1e-3).view(-1, 1, 1) ** 2
        weights = (scored[:, :, joints] & observed[:, :, wrist:wrist + 1]).float()
        total = total + (error * weights).sum()
        count = count + weights.sum()
    return total / count.clamp(min=1)


def hand_angle_loss(predicted: torch.Tensor, clean: torch.Tensor, scored: torch.Tensor, observed: torch.Tensor,
                    hands: LossHands | Sequence[Hand]) -> torch.Tensor:
    """Squared error of the fingers' joint angles (radians; the handshape metric's angles,
    `t2p.evaluation.handshape`), per frame where the reference's whole hand is observed. A position error of a
    tenth of a hand at a fingertip is a few hundredths in `hand_shape_loss`, and 20-30 degrees of
    bend on a finger bone: the angles are what make a B flat and an A closed."""
    # predicted, clean: (batch, frames, joints, dims); scored, observed: (batch, frames, joints) bool
    hands = hands if isinstance(hands, LossHands) else LossHands(hands)
    total = predicted.new_zeros(())
    count = predicted.new_zeros(())
    for hand, pairs in zip(hands.with_angles, hands.angle_pairs(predicted.device)):  # pairs: (angles, 4)
        joints = list(hand.joints)
        seen = observed[:, :, joints].all(-1)                            # (batch, frames)
        weights = (seen & scored[:, :, joints].any(-1)).float()
        error = ((joint_angles(predicted, pairs) - joint_angles(clean, pairs)) ** 2).mean(-1)
        total = total + (error * weights).sum()
        count = count + weights.sum()
    return total / count.clamp(min=1)


def joint_angles(poses: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """The angle between bones a->b and c->d for every (a, b, c, d) of `pairs`, as
    `t2p.evaluation.handshape.hand_angles` computes it, differentiable (an epsilon far below a real bend keeps the gradient of
    a zero-length cross product finite). (batch, frames, angles)"""
    # poses: (batch, frames, joints, dims); pairs: (angles, 4)
    first = poses[:, :, pairs[:, 1]] - poses[:, :, pairs[:, 0]]
    second = poses[:, :, pairs[:, 3]] - poses[:, :, pairs[:, 2]]
    dot = (first * second).sum(-1)
    if poses.shape[-1] == 2:
        cross = (first[..., 0] * second[..., 1] - first[..., 1] * second[..., 0]).abs()
    else:
        cross = (torch.linalg.cross(first, second, dim=-1) ** 2).sum(-1).add(1e-12).sqrt()
    return torch.atan2(cross, dot)


def known_values(lengths: torch.Tensor, observed: torch.Tensor, probability: float, hands: Sequence[list[int]],
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Which values of each example are given to the refiner: none for most; for `probability` of
    them, either the first and last 1-4 frames (a transition between two signs), or all but runs
    of 1-6 dropped frames (10-60% of the frames), with one hand also lost for 5-15 frames half the
    time (a recording to correct). Only observed values can be given."""
    # lengths: (batch,); observed: (batch, frames, joints) -> (batch, frames, joints) bool
    size, frames, joints = observed.shape
    given = torch.zeros(size, frames, joints, dtype=torch.bool)
    draw = lambda high: int(torch.randint(high, (1,), generator=generator))  # noqa: E731
    for i in (torch.rand(size, generator=generator) < probability).nonzero().flatten().tolist():
        length = int(lengths[i])
        frame_given = torch.ones(length, dtype=torch.bool)
        if draw(2) == 0:
            frame_given[1 + draw(4):max(length - 1 - draw(4), 1)] = False
        else:
            dropped = 0.1 + 0.5 * float(torch.rand(1, generator=generator))
            while frame_given.float().mean() > 1 - dropped:
                begin = draw(length)
                frame_given[begin:begin + 1 + draw(6)] = False
        example = frame_given.unsqueeze(1).expand(length, joints).clone()
        if hands and draw(2) == 0:
            run = 5 + draw(11)
            begin = draw(max(1, length - run))
            example[begin:begin + run, hands[draw(len(hands))]] = False
        given[i, :length] = example
    return given & observed.cpu()


def _draw(size: int, probability: float, generator: torch.Generator | None, device) -> torch.Tensor:
    """`size` coin flips with this probability of True, drawn on the (CPU) generator."""
    return (torch.rand(size, generator=generator) < probability).to(device)


def _hide_symbols(model: T2PModel, tokens: torch.Tensor, share: float,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Some symbols become <unk> (all their parts), as characters never seen in training are at inference."""
    # tokens: (batch, tokens, parts)
    first = tokens[..., 0]
    hidden = model.symbol_tokens[first] & (torch.rand(first.shape, generator=generator) < share).to(tokens.device)
    unknown = torch.zeros_like(tokens)
    unknown[..., 0] = model.vocabulary.unknown_id
    return torch.where(hidden.unsqueeze(-1), unknown, tokens)


def _length_loss(model: T2PModel, batch: LengthBatch, unknown_symbols: float,
                 generator: torch.Generator | None, neutral_start: float = 0.0) -> torch.Tensor:
    """Absolute error of the log-length (its minimiser is the median, which minimises the length
    MAE), plus the Laplace NLL of the spread around the detached location. Both have bounded
    gradients: the Gaussian NLL used before shrank its variance until its gradients were 50x the
    reconstruction's, and global gradient clipping then starved every other term. The text is
    never dropped here: the length is predicted from the text (guidance drops it for the refiner)."""
    tokens = _hide_symbols(model, batch.tokens, unknown_symbols, generator)
    text = TextEncoding(None, batch.token_mask, tokens)  # the length predictor reads the tokens themselves
    with torch.no_grad():
        start = model.complete_first_pose(batch.first_pose, batch.first_confidence)
    # as for the refiner, some lengths are predicted from the neutral pose, which a user without a
    # first pose starts from
    neutral = _draw(len(start), neutral_start, generator, start.device)
    start = torch.where(neutral.view(-1, 1, 1), model.neutral_pose.expand_as(start), start)
    confidence = torch.where(neutral.view(-1, 1), torch.ones_like(batch.first_confidence), batch.first_confidence)
    location, log_scale_squared = model.predict_length(text, start, confidence)
    lengths = batch.lengths
    target = lengths.float().clamp(min=1).log()
    log_scale_squared = log_scale_squared.clamp(min=math.log(0.01 ** 2))  # a spread of at least 1%
    scaled_error = (target - location.detach()).abs() / torch.exp(0.5 * log_scale_squared)
    per_example = (target - location).abs() + 0.5 * log_scale_squared + scaled_error  # (batch,)
    return per_example.mean()


def _first_pose_loss(model: T2PModel, pose: torch.Tensor, confidence: torch.Tensor,
                     generator: torch.Generator | None) -> torch.Tensor:
    """Hide each keypoint of the real first poses with probability 0.3, each drawn on its own (no
    whole hand is hidden on purpose); the corrector predicts the observed ones among them back."""
    # pose: (batch, joints, dims); confidence: (batch, joints)
    device = pose.device
    hide = (torch.rand(confidence.shape, generator=generator) < 0.3).to(device)
    hidden_confidence = torch.where(hide, torch.zeros_like(confidence), confidence)
    predicted = model.first_pose_corrector(model.standardize(pose), hidden_confidence)
    weights = (hide & (confidence > 0)).float()
    error = ((predicted - model.standardize(pose)) ** 2).sum(-1)
    return (error * weights).sum() / weights.sum().clamp(min=1)


class TrainingObjective(torch.nn.Module):
    """The model with its losses as `forward`: what DistributedDataParallel wraps.

    DDP arms its gradient all-reduce in its own `forward`; calling the losses on the unwrapped
    model (as an earlier version did) trained one diverging copy per worker."""

    def __init__(self, model: T2PModel, config: TrainConfig):
        super().__init__()
        self.model = model
        self.config = config
        self.hands = LossHands(model.skeleton.hands())

    def forward(self, batch: PoseBatch, generator: torch.Generator | None = None,
                lengths: LengthBatch | None = None) -> dict[str, torch.Tensor]:
        return compute_losses(self.model, batch, self.config, generator, lengths, self.hands)


def unwrap(objective: torch.nn.Module) -> T2PModel:
    """The T2PModel inside a (possibly DDP-wrapped) TrainingObjective."""
    return (objective.module if hasattr(objective, "module") else objective).model
