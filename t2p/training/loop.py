"""The training step, read top to bottom: `Learner` holds one model in training (the objective,
its optimiser and learning-rate schedule, the weight average), and `Learner.step` is one
optimisation step. `fit` is the plain local loop (no Ray: small data, notebooks, tests); the Ray
Train worker (`t2p.training.job`) runs the same `Learner` over the same batches
(`batches.window_batches`) on its shard of the data. The losses are `t2p.training.objective`'s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, SequentialLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from t2p.model import T2PModel
from t2p.training.batches import (
    BUCKET_BATCHES,
    Example,
    LengthBatch,
    PoseBatch,
    shuffled_windows,
    window_batches,
)
from t2p.training.config import TrainConfig
from t2p.training.objective import TrainingObjective


@dataclass
class Learner:
    """One model in training: the objective (DDP-wrapped with more than one Ray worker: the
    gradients are averaged), its optimiser and learning-rate schedule, and the weight average
    that is validated and exported."""
    objective: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    average: AveragedModel | None
    grad_clip: float

    @classmethod
    def create(cls, model: T2PModel, config: TrainConfig, total_steps: int,
               wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda objective: objective) -> "Learner":
        """`wrap`: how the objective is prepared (Ray Train's `prepare_model`: device and DDP)."""
        objective = wrap(TrainingObjective(model, config))
        average = weight_average(unwrap(objective), config.ema_decay) if config.ema_decay > 0 else None
        optimizer, scheduler = make_optimizer(objective, config, total_steps)
        return cls(objective, optimizer, scheduler, average, config.grad_clip)

    @property
    def model(self) -> T2PModel:
        return unwrap(self.objective)

    @property
    def exported(self) -> T2PModel:
        """What is validated, checkpointed and exported: the weight average (or the raw weights)."""
        return self.average.module if self.average is not None else self.model

    def step(self, batch: PoseBatch, lengths: LengthBatch | None, generator: torch.Generator) -> dict[str, float]:
        """One optimisation step: the losses, their gradients (averaged over workers by DDP),
        clipped, an AdamW step, the schedule's step and the weight average's update. `lengths`:
        what the length predictor learns from (None: the batch itself)."""
        self.objective.train()
        losses = self.objective(batch, generator, lengths)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.objective.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.average is not None:
            self.average.update_parameters(self.model)
        return {name: float(value.detach()) for name, value in losses.items()}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "weights": self.model.state_dict(),
                "average": self.average.state_dict() if self.average is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        """The optimiser, schedule position and weight average (the weights are loaded before the
        model is wrapped: see `t2p.training.checkpoints.restore_weights`)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])


def unwrap(objective: torch.nn.Module) -> T2PModel:
    """The T2PModel inside a (possibly DDP-wrapped) TrainingObjective."""
    return (objective.module if hasattr(objective, "module") else objective).model


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


def weight_average(model: T2PModel, decay: float) -> AveragedModel:
    """An exponential moving average of the weights: what is validated, checkpointed and exported.

    The weights of one epoch differ from the next by the last few batches' noise, and choosing the
    best epoch on 60 validation items then picked that noise (3 seeds varied by 4.9%; docs/quality.md)."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def fit(model: T2PModel, examples: Sequence[Example], config: TrainConfig,
        iterations: int | None = None) -> list[dict[str, float]]:
    """Train in this process, without Ray: for small data, notebooks and tests.

    Runs `config.epochs` passes over `examples` (shuffled, in windows grouped by length as Ray
    training batches them), or exactly `iterations` steps when given, and leaves in `model` what
    `t2p train` exports: the weight average (`ema_decay`; the raw weights when 0). Returns the
    losses of every step."""
    generator = torch.Generator().manual_seed(config.seed)
    total = iterations or config.epochs * math.ceil(len(examples) / config.batch_size)
    learner = Learner.create(model, config, total)
    history = []
    for batch, lengths in local_batches(examples, config, generator, iterations):
        history.append(learner.step(batch, lengths, generator))
    if learner.average is not None:
        model.load_state_dict(learner.exported.state_dict())
    model.eval()
    return history


def local_batches(examples: Sequence[Example], config: TrainConfig, generator: torch.Generator,
                   iterations: int | None) -> Iterator[tuple[PoseBatch, LengthBatch]]:
    """Shuffled epochs in windows of BUCKET_BATCHES batches (`window_batches`). Stops after
    `config.epochs` passes, or after exactly `iterations` batches when given."""
    produced, epoch = 0, 0
    while (iterations is None and epoch < config.epochs) or (iterations is not None and produced < iterations):
        for window in shuffled_windows(examples, BUCKET_BATCHES * config.batch_size, generator):
            for batches in window_batches(window, config.batch_size, generator):
                if iterations is not None and produced >= iterations:
                    return
                yield batches
                produced += 1
        epoch += 1
