"""Training in this process: the config, the optimiser, one step, the weight average, length
batching, and `fit`, the plain local loop.

The losses are in `t2p.objective`; the Ray Train job (`t2p.ray_train`) runs `train_step` on each
worker exactly as `fit` does here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, SequentialLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from t2p.config import from_dict
from t2p.data import Example, LengthBatch, PoseBatch, collate, collate_lengths
from t2p.model import T2PModel
from t2p.objective import TrainingObjective


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    text_dropout: float = 0.1      # share of examples trained without text, for guidance
    # the starts users give, instead of the reference's own first frame (which shows the handshape,
    # so copying it was the cheapest solution and the text was ignored; docs/quality.md): shares of
    # examples started from the neutral pose, from another recording's first frame, and from another
    # recording's last frame (the previous sign of a composition)
    neutral_start: float = 0.2
    other_start: float = 0.2
    last_frame_start: float = 0.2
    unknown_symbols: float = 0.1   # share of text symbols replaced by <unk>: unseen characters still mean "a sign"
    # the same for the length predictor, which learns more from the language and the symbol count
    # than from which letter it is: held-out letters are unseen in their language (docs/quality.md)
    length_unknown_symbols: float = 0.5
    inpainting: float = 0.3        # share of examples given some of their values (ends, dropped frames, a lost hand)
    reconstruction_weight: float = 1.0
    presence_weight: float = 0.1
    length_weight: float = 0.1
    smoothness_weight: float = 0.5
    # the fingers relative to their wrist, in hand sizes (`objective.hand_shape_loss`): a wrong
    # finger costs as much as a wrong wrist, where in body coordinates a finger is a tenth of
    # the spread all joints share (docs/quality.md, Round III)
    hand_weight: float = 1.0
    # the fingers' joint angles (`objective.hand_angle_loss`), what the handshape metric compares:
    # scored on positions alone, even 60 letters seen 320 times each kept one generic hand; 3
    # made the hands closer still but pulled the arm's path 6-9% off (docs/quality.md, Round IV)
    hand_angle_weight: float = 1.5
    first_pose_weight: float = 0.1
    # where the reconstruction is scored: "body" (every joint standardised in body coordinates, so
    # a hand's place weighs as much as its 21 joints, as DTW-MJE weighs it) or "refiner" (the
    # model's own space, `T2PModel.standardize`: with wrist-relative fingers the wrist was one
    # joint in 50 and the arm's path fell behind, DTW-MJE 0.23 against 0.15 on validation)
    reconstruction_space: str = "body"
    ema_decay: float = 0.95        # weight average validated and exported by `t2p train` (0: the raw weights)
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not all(0 <= value <= 1 for value in (self.text_dropout, self.unknown_symbols, self.length_unknown_symbols,
                                                 self.inpainting, self.neutral_start, self.other_start,
                                                 self.last_frame_start)):
            raise ValueError("text_dropout, unknown_symbols, length_unknown_symbols, inpainting and the start shares "
                             "must be in [0, 1]")
        if self.neutral_start + self.other_start + self.last_frame_start > 1:
            raise ValueError("neutral_start + other_start + last_frame_start must be at most 1 (the rest start from "
                             "their own first frame)")
        if self.reconstruction_space not in ("refiner", "body"):
            raise ValueError(f"reconstruction_space must be 'refiner' or 'body', got {self.reconstruction_space!r}")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if not 0 <= self.ema_decay < 1:
            raise ValueError("ema_decay must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return from_dict(cls, data, what="training config")


def make_optimizer(model: torch.nn.Module, config: TrainConfig,
                   total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with linear warm-up, then a cosine decay to 5% of the rate at `total_steps`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(min(config.warmup_steps, total_steps // 4), 1)
    decay = max(total_steps - warmup, 1)
    # step s < warmup: (s + 1) / warmup of the rate; then the cosine; past total_steps (a worker's
    # shard may give a few more batches than planned) it stays at 5% instead of rising again
    return optimizer, SequentialLR(optimizer, [
        LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=max(warmup - 1, 1)),
        CosineAnnealingLR(optimizer, T_max=decay, eta_min=0.05 * config.learning_rate),
        ConstantLR(optimizer, factor=0.05, total_iters=2 ** 62),
    ], milestones=[warmup, warmup + decay])


def train_step(objective: torch.nn.Module, batch: PoseBatch, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float,
               generator: torch.Generator | None = None, lengths: LengthBatch | None = None) -> dict[str, float]:
    """One optimisation step of a `TrainingObjective`, which may be wrapped by DistributedDataParallel."""
    objective.train()
    losses = objective(batch, generator, lengths)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(objective.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return {name: float(value.detach()) for name, value in losses.items()}


def weight_average(model: T2PModel, decay: float) -> AveragedModel:
    """An exponential moving average of the weights: what is validated, checkpointed and exported.

    The weights of one epoch differ from the next by the last few batches' noise, and choosing the
    best epoch on 60 validation items then picked that noise (3 seeds varied by 4.9%; docs/quality.md)."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


BUCKET_BATCHES = 8  # batches drawn together and grouped by length


def random_lengths(window: Sequence[Example], size: int, generator: torch.Generator) -> LengthBatch:
    """`size` examples drawn at random from the current window, for the length predictor."""
    chosen = torch.randperm(len(window), generator=generator)[:size].tolist()
    return collate_lengths([window[i] for i in chosen])


def length_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Positions of a shuffled window of examples, grouped into batches of similar length, in random
    order: a batch is padded to its longest sequence, and one 258-frame recording in a batch of
    25-frame ones made that step ten times slower."""
    by_length = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [by_length[begin:begin + batch_size] for begin in range(0, len(by_length), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _batches(examples: Sequence[Example], config: TrainConfig, generator: torch.Generator,
             iterations: int | None) -> Iterable[tuple[PoseBatch, LengthBatch]]:
    """Shuffled epochs in windows of BUCKET_BATCHES batches, each window grouped by length; with every
    batch, examples drawn from its window for the length predictor. Stops after `config.epochs`
    passes, or after exactly `iterations` batches when given."""
    produced = 0
    epoch = 0
    lengths = [len(example.poses) for example in examples]
    while (iterations is None and epoch < config.epochs) or (iterations is not None and produced < iterations):
        order = torch.randperm(len(examples), generator=generator).tolist()
        for begin in range(0, len(order), BUCKET_BATCHES * config.batch_size):
            window = order[begin:begin + BUCKET_BATCHES * config.batch_size]
            for batch in length_batches([lengths[i] for i in window], config.batch_size, generator):
                if iterations is not None and produced >= iterations:
                    return
                yield collate([examples[window[i]] for i in batch]), random_lengths(
                    [examples[i] for i in window], config.batch_size, generator)
                produced += 1
        epoch += 1


def fit(model: T2PModel, examples: Sequence[Example], config: TrainConfig,
        iterations: int | None = None) -> list[dict[str, float]]:
    """Train in this process, without Ray: for small data, notebooks and tests.

    Runs `config.epochs` passes over `examples` (shuffled, `config.batch_size` each), or exactly
    `iterations` steps when given. Returns the losses of every step.
    """
    generator = torch.Generator().manual_seed(config.seed)
    total = iterations or config.epochs * math.ceil(len(examples) / config.batch_size)
    objective = TrainingObjective(model, config)
    optimizer, scheduler = make_optimizer(objective, config, total)
    history = []
    for batch, lengths in _batches(examples, config, generator, iterations):
        history.append(train_step(objective, batch, optimizer, scheduler, config.grad_clip, generator, lengths))
    model.eval()
    return history
