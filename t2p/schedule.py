"""The refinement schedule: a weight-free object that knows nothing of the model.

`beta` says how much of the starting sequence x_T is left at a step: `x_t = beta[t] * x_T +
(1 - beta[t]) * x_0`. It follows a cosine, `beta[t] = 1 - cos((t + 1) / T * pi / 2)`, so the last
step (`t = T - 1`) starts from x_T alone (`beta = 1`) and small t are nearly clean. The refiner is
conditioned on the value of beta, not on t, so one trained model serves any number of steps.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class ScheduleConfig:
    steps: int = 10             # default number of refinement steps at inference
    training_noise: float = 0.01  # std of the small Gaussian noise added to x_t in training
    max_steps: int = 1000

    def __post_init__(self):
        if not 1 <= self.steps <= self.max_steps:
            raise ValueError(f"steps must be in 1..{self.max_steps}, got {self.steps}")
        if self.training_noise < 0:
            raise ValueError("training_noise must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


class RefinementSchedule:
    def __init__(self, config: ScheduleConfig | None = None):
        self.config = config or ScheduleConfig()

    def betas(self, steps: int | None = None) -> torch.Tensor:
        """beta[t] for t = 0 … steps-1; beta[steps-1] == 1."""
        steps = self.config.steps if steps is None else steps
        if not 1 <= steps <= self.config.max_steps:
            raise ValueError(f"steps must be in 1..{self.config.max_steps}, got {steps}")
        t = torch.arange(1, steps + 1, dtype=torch.float64)
        betas = 1 - torch.cos(t / steps * math.pi / 2)
        betas[-1] = 1.0  # exact, not 1 - 6e-17
        return betas.float()

    def mix(self, start: torch.Tensor, clean: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """x_t = beta * x_T + (1 - beta) * x_0, with beta one value per batch item."""
        # start, clean: (batch, frames, joints, dims); beta: (batch,)
        beta = beta.view(-1, *([1] * (clean.dim() - 1)))
        return beta * start + (1 - beta) * clean

    def sample_training_betas(self, batch: int, generator: torch.Generator | None = None,
                              device: torch.device | str = "cpu") -> torch.Tensor:
        """Continuous steps u ~ U(0, 1] mapped through the cosine, covering every inference schedule."""
        u = 1 - torch.rand(batch, generator=generator, device=device)  # (0, 1]
        betas = 1 - torch.cos(u * math.pi / 2)
        # a quarter of the examples at beta = 1 exactly: the first step of every schedule
        first_step = torch.rand(batch, generator=generator, device=device) < 0.25
        return torch.where(first_step, torch.ones_like(betas), betas)

    def noisy(self, start: torch.Tensor, clean: torch.Tensor, beta: torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """The training input: the mix plus a little Gaussian noise."""
        mixed = self.mix(start, clean, beta)
        if self.config.training_noise == 0:
            return mixed
        noise = torch.randn(mixed.shape, generator=generator, device=mixed.device)
        return mixed + self.config.training_noise * noise
