"""Training: the losses, one optimisation step, and a plain local loop.

Loss = confidence-masked reconstruction of x_0 from x_t + length NLL + smoothness (velocities
match the reference) + first-pose correction. Every term is masked by confidence and padding.
The Ray Train loop (`t2p.ray_train`) calls `train_step` exactly as the local loop here does.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Iterable, Sequence

import torch

from t2p.data import Example, PoseBatch, collate
from t2p.model import ModelConfig, T2PModel
from t2p.schedule import RefinementSchedule


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    text_dropout: float = 0.1      # share of examples trained without text, for guidance
    reconstruction_weight: float = 1.0
    length_weight: float = 0.1
    smoothness_weight: float = 0.5
    first_pose_weight: float = 0.1
    validation_steps: int = 10     # refinement steps used by the validation metric
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0 <= self.text_dropout <= 1:
            raise ValueError("text_dropout must be in [0, 1]")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        return cls(**data)


def compute_losses(model: T2PModel, batch: PoseBatch, config: TrainConfig,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Every loss term for one batch, and their weighted sum under "loss"."""
    schedule = RefinementSchedule(model.schedule_config)
    device = batch.poses.device
    size = batch.size
    observed = (batch.confidence > 0) & batch.frame_mask.unsqueeze(-1)  # (batch, frames, joints)

    # drop the text (keep only <bos>) for some examples: the unconditional half of guidance
    dropped = torch.rand(size, generator=generator).to(device) < config.text_dropout
    token_mask = batch.token_mask.clone()
    token_mask[dropped, 1:] = False
    text = model.encode_text(batch.tokens, token_mask)

    first_pose, first_confidence = batch.poses[:, 0], batch.confidence[:, 0]
    with torch.no_grad():
        start = model.complete_first_pose(first_pose, first_confidence)
    frames = batch.poses.shape[1]
    x_start = start.unsqueeze(1).expand(-1, frames, -1, -1)
    # where the reference is missing, its clean value is taken as the start: nothing to learn there
    clean = torch.where(observed.unsqueeze(-1), batch.poses, x_start)
    beta = schedule.sample_training_betas(size, generator).to(device)
    x_t = schedule.noisy(x_start, clean, beta, generator)
    predicted = model.refine(x_t, start, beta, text, batch.frame_mask)

    scale = model.pose_std
    weights = observed.float()
    squared = (((predicted - clean) / scale) ** 2).sum(-1)  # (batch, frames, joints)
    reconstruction = (squared * weights).sum() / weights.sum().clamp(min=1)

    velocity_weights = weights[:, 1:] * weights[:, :-1]
    velocity_error = ((((predicted[:, 1:] - predicted[:, :-1]) - (clean[:, 1:] - clean[:, :-1])) / scale) ** 2).sum(-1)
    smoothness = (velocity_error * velocity_weights).sum() / velocity_weights.sum().clamp(min=1)

    mean, log_variance = model.predict_length(text)
    target = batch.lengths.float().clamp(min=1).log()
    length = (0.5 * (log_variance + (target - mean) ** 2 / log_variance.exp())).mean()

    first_pose_loss = _first_pose_loss(model, first_pose, first_confidence, generator)

    total = (config.reconstruction_weight * reconstruction + config.length_weight * length
             + config.smoothness_weight * smoothness + config.first_pose_weight * first_pose_loss)
    return {"loss": total, "reconstruction": reconstruction, "length": length,
            "smoothness": smoothness, "first_pose": first_pose_loss}


def _first_pose_loss(model: T2PModel, pose: torch.Tensor, confidence: torch.Tensor,
                     generator: torch.Generator | None) -> torch.Tensor:
    """Hide random keypoints (and sometimes a whole hand) of real first poses; predict them back."""
    # pose: (batch, joints, dims); confidence: (batch, joints)
    device = pose.device
    hide = torch.rand(confidence.shape, generator=generator).to(device) < 0.3
    hidden_confidence = torch.where(hide, torch.zeros_like(confidence), confidence)
    predicted = model.first_pose_corrector(model.standardize(pose), hidden_confidence)
    weights = (hide & (confidence > 0)).float()
    error = ((predicted - model.standardize(pose)) ** 2).sum(-1)
    return (error * weights).sum() / weights.sum().clamp(min=1)


def make_optimizer(model: torch.nn.Module, config: TrainConfig,
                   total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with linear warm-up, then a cosine decay to 5% of the rate at `total_steps`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(min(config.warmup_steps, total_steps // 4), 1)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(total_steps - warmup, 1))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, rate)


def train_step(model: torch.nn.Module, batch: PoseBatch, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, config: TrainConfig,
               generator: torch.Generator | None = None) -> dict[str, float]:
    """One optimisation step; `model` may be wrapped by DistributedDataParallel."""
    core = model.module if hasattr(model, "module") else model
    model.train()
    losses = compute_losses(core, batch, config, generator)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    scheduler.step()
    return {name: float(value.detach()) for name, value in losses.items()}


def fit(model: T2PModel, examples: Sequence[Example], config: TrainConfig,
        iterations: int | None = None) -> list[dict[str, float]]:
    """Train in this process, without Ray: for small data, notebooks and tests.

    Runs `config.epochs` passes over `examples` (shuffled, `config.batch_size` each), or exactly
    `iterations` steps when given. Returns the losses of every step.
    """
    generator = torch.Generator().manual_seed(config.seed)
    total = iterations or config.epochs * math.ceil(len(examples) / config.batch_size)
    optimizer, scheduler = make_optimizer(model, config, total)
    history = []
    for batch in _batches(examples, config, generator, iterations):
        history.append(train_step(model, batch, optimizer, scheduler, config, generator))
    model.eval()
    return history


def _batches(examples: Sequence[Example], config: TrainConfig, generator: torch.Generator,
             iterations: int | None) -> Iterable[PoseBatch]:
    produced = 0
    epoch = 0
    while (iterations is None and epoch < config.epochs) or (iterations is not None and produced < iterations):
        order = torch.randperm(len(examples), generator=generator).tolist()
        for begin in range(0, len(order), config.batch_size):
            if iterations is not None and produced >= iterations:
                return
            yield collate([examples[i] for i in order[begin:begin + config.batch_size]])
            produced += 1
        epoch += 1


def model_config_from_manifest(manifest: dict, **overrides) -> ModelConfig:
    """A model config for prepared data: vocabulary, skeleton, statistics and output space come
    from the manifest; hyperparameters from `overrides` (any `ModelConfig` field)."""
    settings = dict(vocabulary=manifest["vocabulary"], skeleton=manifest["skeleton"], fps=manifest["fps"],
                    default_notation=manifest["notation"][0],
                    output_normalization=manifest["output_normalization"],
                    output_canvas=manifest["output_canvas"], **manifest["statistics"])
    unknown = set(overrides) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise ValueError(f"unknown model setting(s): {', '.join(sorted(unknown))}")
    settings.update(overrides)
    return ModelConfig(**settings)
