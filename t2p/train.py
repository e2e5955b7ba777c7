"""Training: the losses, one optimisation step, and a plain local loop.

Loss = confidence-masked reconstruction of x_0 from x_t + presence (which joints are there) +
length (median and spread of the log-length) + smoothness (velocities match the reference) +
first-pose correction. Every term is masked by confidence and padding. The Ray Train loop
(`train_loop_per_worker` below) calls `train_step` exactly as the local loop here does.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

import torch
import torch.nn.functional as F

from t2p.config import from_dict, typed_fields
from t2p.data import Example, LengthBatch, PoseBatch, collate, collate_lengths
from t2p.model import Known, ModelConfig, T2PModel, interpolate_known
from t2p.schedule import RefinementSchedule, ScheduleConfig

if TYPE_CHECKING:
    from t2p.data import PreparedItem


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    text_dropout: float = 0.1      # share of examples trained without text, for guidance
    first_pose_dropout: float = 0.0  # share of examples started from the neutral pose instead of their own
    unknown_symbols: float = 0.1   # share of text symbols replaced by <unk>: unseen characters still mean "a sign"
    # the same for the length predictor, which learns more from the language and the symbol count
    # than from which letter it is: held-out letters are unseen in their language (docs/quality.md)
    length_unknown_symbols: float = 0.5
    inpainting: float = 0.3        # share of examples given some of their values (ends, dropped frames, a lost hand)
    reconstruction_weight: float = 1.0
    presence_weight: float = 0.1
    length_weight: float = 0.1
    smoothness_weight: float = 0.5
    first_pose_weight: float = 0.1
    ema_decay: float = 0.95        # weight average validated and exported by `t2p train` (0: the raw weights)
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not all(0 <= value <= 1 for value in (self.text_dropout, self.first_pose_dropout, self.unknown_symbols,
                                                 self.length_unknown_symbols, self.inpainting)):
            raise ValueError("text_dropout, first_pose_dropout, unknown_symbols, length_unknown_symbols and "
                             "inpainting must be in [0, 1]")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if not 0 <= self.ema_decay < 1:
            raise ValueError("ema_decay must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return from_dict(cls, data, what="training config")


def compute_losses(model: T2PModel, batch: PoseBatch, config: TrainConfig,
                   generator: torch.Generator | None = None,
                   lengths: LengthBatch | None = None) -> dict[str, torch.Tensor]:
    """Every loss term for one batch, and their weighted sum under "loss". The length predictor
    learns from `lengths` (examples drawn at random) when given, else from the batch itself."""
    schedule = RefinementSchedule(model.schedule_config)
    device = batch.poses.device
    size = batch.size
    observed = (batch.confidence > 0) & batch.frame_mask.unsqueeze(-1)  # (batch, frames, joints)

    # drop the text (keep only <bos>) for some examples: the unconditional half of guidance
    dropped = _draw(size, config.text_dropout, generator, device)
    token_mask = batch.token_mask.clone()
    token_mask[dropped, 1:] = False
    text = model.encode_text(_hide_symbols(model, batch.tokens, config.unknown_symbols, generator), token_mask)

    first_pose, first_confidence = batch.poses[:, 0], batch.confidence[:, 0]
    with torch.no_grad():
        start = model.complete_first_pose(first_pose, first_confidence)
    # some examples start from the neutral pose: then only the text says what is signed
    neutral = _draw(size, config.first_pose_dropout, generator, device)
    start = torch.where(neutral.view(-1, 1, 1), model.neutral_pose.expand_as(start), start)
    start_confidence = torch.where(neutral.view(-1, 1), torch.ones_like(first_confidence), first_confidence)
    frames = batch.poses.shape[1]
    x_start = start.unsqueeze(1).expand(-1, frames, -1, -1)
    # where the reference is missing, its clean value is taken as the start: nothing to learn there
    clean = torch.where(observed.unsqueeze(-1), batch.poses, x_start)
    # some examples have values given, as composition (the ends of a transition) and correction
    # (dropped frames, a hand lost for a while) give them; their x_T is the straight path between
    # the given values, as generation builds it
    given = known_values(batch.lengths, observed, config.inpainting, _hand_joints(model), generator).to(device)
    known = Known(clean, given) if config.inpainting > 0 else None
    if known is not None:
        x_start = interpolate_known(clean, given, start)
    beta = schedule.sample_training_betas(size, generator, device)
    x_t = schedule.noisy(x_start, clean, beta, generator)
    refined = model.refine(x_t, start, beta, text, batch.frame_mask, known)
    predicted = refined.poses

    scale = model.pose_std
    # given values come back exactly as given (generation restores them): copying them earns nothing, and
    # every other value keeps its usual weight (dividing by the hidden count instead over-weighted the
    # inpainting examples: correction on the six real signs of the tests went from 0.095 to 0.105)
    weights = (observed & ~given).float()
    squared = (((predicted - clean) / scale) ** 2).sum(-1)  # (batch, frames, joints)
    reconstruction = (squared * weights).sum() / observed.float().sum().clamp(min=1)

    real_frames = batch.frame_mask.unsqueeze(-1).expand_as(observed).float()
    presence_error = F.binary_cross_entropy_with_logits(refined.presence_logits, observed.float(), reduction="none")
    presence = (presence_error * real_frames).sum() / real_frames.sum().clamp(min=1)

    seen = observed.float()  # motion into and out of a gap counts too
    velocity_weights = seen[:, 1:] * seen[:, :-1]
    velocity_error = ((((predicted[:, 1:] - predicted[:, :-1]) - (clean[:, 1:] - clean[:, :-1])) / scale) ** 2).sum(-1)
    smoothness = (velocity_error * velocity_weights).sum() / velocity_weights.sum().clamp(min=1)

    if lengths is None:
        lengths = LengthBatch(batch.tokens, batch.token_mask, first_pose, first_confidence, batch.lengths)
    length = _length_loss(model, lengths, config.length_unknown_symbols, generator)
    first_pose_loss = _first_pose_loss(model, first_pose, first_confidence, generator)

    total = (config.reconstruction_weight * reconstruction + config.presence_weight * presence
             + config.length_weight * length + config.smoothness_weight * smoothness
             + config.first_pose_weight * first_pose_loss)
    return {"loss": total, "reconstruction": reconstruction, "presence": presence, "length": length,
            "smoothness": smoothness, "first_pose": first_pose_loss}


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


def _hand_joints(model: T2PModel) -> list[list[int]]:
    joints, offset = [], 0
    for component in model.skeleton.components:
        if "hand" in component.name.lower():
            joints.append(list(range(offset, offset + len(component.points))))
        offset += len(component.points)
    return joints


def _draw(size: int, probability: float, generator: torch.Generator | None, device) -> torch.Tensor:
    """`size` coin flips with this probability of True, drawn on the (CPU) generator."""
    return (torch.rand(size, generator=generator) < probability).to(device)


def _hide_symbols(model: T2PModel, tokens: torch.Tensor, share: float,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Some symbols become <unk>, as characters never seen in training are at inference."""
    # tokens: (batch, tokens)
    hidden = model.symbol_tokens[tokens] & (torch.rand(tokens.shape, generator=generator) < share).to(tokens.device)
    return torch.where(hidden, torch.full_like(tokens, model.vocabulary.unknown_id), tokens)


def _length_loss(model: T2PModel, batch: LengthBatch, unknown_symbols: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Absolute error of the log-length (its minimiser is the median, which minimises the length
    MAE), plus the Laplace NLL of the spread around the detached location. Both have bounded
    gradients: the Gaussian NLL used before shrank its variance until its gradients were 50x the
    reconstruction's, and global gradient clipping then starved every other term. The text is
    never dropped here: the length is predicted from the text (guidance drops it for the refiner)."""
    from t2p.model import TextEncoding
    tokens = _hide_symbols(model, batch.tokens, unknown_symbols, generator)
    text = TextEncoding(None, batch.token_mask, tokens)  # the length predictor reads the tokens themselves
    with torch.no_grad():
        start = model.complete_first_pose(batch.first_pose, batch.first_confidence)
    location, log_variance = model.predict_length(text, start, batch.first_confidence)
    lengths = batch.lengths
    target = lengths.float().clamp(min=1).log()
    log_variance = log_variance.clamp(min=math.log(0.01 ** 2))  # a spread of at least 1%
    scaled_error = (target - location.detach()).abs() / torch.exp(0.5 * log_variance)
    per_example = (target - location).abs() + 0.5 * log_variance + scaled_error  # (batch,)
    return per_example.mean()


def _first_pose_loss(model: T2PModel, pose: torch.Tensor, confidence: torch.Tensor,
                     generator: torch.Generator | None) -> torch.Tensor:
    """Hide random keypoints (and sometimes a whole hand) of real first poses; predict them back."""
    # pose: (batch, joints, dims); confidence: (batch, joints)
    device = pose.device
    hide = (torch.rand(confidence.shape, generator=generator) < 0.3).to(device)
    hidden_confidence = torch.where(hide, torch.zeros_like(confidence), confidence)
    predicted = model.first_pose_corrector(model.standardize(pose), hidden_confidence)
    weights = (hide & (confidence > 0)).float()
    error = ((predicted - model.standardize(pose)) ** 2).sum(-1)
    return (error * weights).sum() / weights.sum().clamp(min=1)


def make_optimizer(model: torch.nn.Module, config: TrainConfig,
                   total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with linear warm-up, then a cosine decay to 5% of the rate at `total_steps`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, SequentialLR
    warmup = max(min(config.warmup_steps, total_steps // 4), 1)
    decay = max(total_steps - warmup, 1)
    # step s < warmup: (s + 1) / warmup of the rate; then the cosine; past total_steps (a worker's
    # shard may give a few more batches than planned) it stays at 5% instead of rising again
    return optimizer, SequentialLR(optimizer, [
        LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=max(warmup - 1, 1)),
        CosineAnnealingLR(optimizer, T_max=decay, eta_min=0.05 * config.learning_rate),
        ConstantLR(optimizer, factor=0.05, total_iters=2 ** 62),
    ], milestones=[warmup, warmup + decay])


def load_scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict) -> None:
    """Resume `make_optimizer`'s scheduler, also from checkpoints of the LambdaLR used before
    SequentialLR (those hold only their step count: the new scheduler is stepped to it)."""
    if "_schedulers" in state or "last_epoch" not in state:
        scheduler.load_state_dict(state)
        return
    import warnings
    for group, rate in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = rate  # the warm-up steps from the fresh scheduler's rate, not the loaded optimizer's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
        for _ in range(int(state["last_epoch"]) - scheduler.last_epoch):
            scheduler.step()


class TrainingObjective(torch.nn.Module):
    """The model with its losses as `forward`: what DistributedDataParallel wraps.

    DDP arms its gradient all-reduce in its own `forward`; calling the losses on the unwrapped
    model (as an earlier version did) trained one diverging copy per worker."""

    def __init__(self, model: T2PModel, config: TrainConfig):
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, batch: PoseBatch, generator: torch.Generator | None = None,
                lengths: LengthBatch | None = None) -> dict[str, torch.Tensor]:
        return compute_losses(self.model, batch, self.config, generator, lengths)


def unwrap(objective: torch.nn.Module) -> T2PModel:
    """The T2PModel inside a (possibly DDP-wrapped) TrainingObjective."""
    return (objective.module if hasattr(objective, "module") else objective).model


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


def weight_average(model: T2PModel, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of the weights: what is validated, checkpointed and exported.

    The weights of one epoch differ from the next by the last few batches' noise, and choosing the
    best epoch on 60 validation items then picked that noise (3 seeds varied by 4.9%; docs/quality.md)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


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


def _batches(examples: Sequence[Example], config: TrainConfig, generator: torch.Generator,
             iterations: int | None) -> Iterable[tuple[PoseBatch, LengthBatch]]:
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


def spread(items: Sequence, count: int) -> list:
    """`count` items evenly spaced over `items` (all when there are fewer): a validation subset that
    is not just the first language of a sorted corpus."""
    if count >= len(items):
        return list(items)
    return [items[int(i * len(items) / count)] for i in range(count)]


def training_texts(data_dir: str | Path) -> dict[str, list[str]]:
    """language ("" for none) -> the texts of the training split, read from its shards."""
    import pyarrow.parquet as pq

    from t2p.data import shard_paths
    texts: dict[str, set[str]] = {}
    for path in shard_paths(data_dir, "train"):
        table = pq.read_table(path, columns=["text", "language"]).to_pydict()
        for text, language in zip(table["text"], table["language"]):
            texts.setdefault(language or "", set()).add(text)
    return {language: sorted(values) for language, values in sorted(texts.items())}


def model_config_from_manifest(manifest: dict, **overrides) -> ModelConfig:
    """A model config for prepared data: vocabulary, skeleton, statistics and output space come
    from the manifest; hyperparameters from `overrides` (any `ModelConfig` field)."""
    settings = dict(vocabulary=manifest["vocabulary"], skeleton=manifest["skeleton"], fps=manifest["fps"],
                    default_notation=manifest["notation"][0],
                    output_normalization=manifest["output_normalization"],
                    output_canvas=manifest["output_canvas"], **manifest["statistics"])
    settings.update(overrides)
    return from_dict(ModelConfig, settings, what="model config")


# --- Validation: the real generation code, scored with the evaluation metric ------------------

def validation_metrics(model: T2PModel, items: Sequence["PreparedItem"], steps: int, guidance: float | None = None,
                       batch_size: int = 64) -> dict[str, float]:
    """Mean DTW-MJE of generated vs reference sequences (reference first pose, predicted length),
    the same for the static baseline, and the mean absolute length error in frames."""
    from t2p.baselines import static_baseline
    from t2p.generation import generate
    from t2p.metrics import dtw_mje, length_error
    if not items:
        return {}
    errors, static_errors, length_errors = [], [], []
    for begin in range(0, len(items), batch_size):
        chunk = items[begin:begin + batch_size]
        generated = generate(model, [item.sign for item in chunk], [item.sequence for item in chunk], steps=steps,
                             guidance=guidance)
        for item, sequence in zip(chunk, generated):
            reference = item.sequence
            # as `t2p evaluate` scores it: joints the model predicts absent are not trajectories
            errors.append(dtw_mje(sequence.data, reference.data, reference.confidence,
                                  predicted_confidence=sequence.confidence))
            static, _ = static_baseline(reference.data[0], reference.num_frames)
            static_errors.append(dtw_mje(static, reference.data, reference.confidence))
            length_errors.append(length_error(sequence.data, reference.data))
    return {"val_dtw_mje": float(np.nanmean(errors)), "val_static_dtw_mje": float(np.nanmean(static_errors)),
            "val_length_error": float(np.mean(length_errors))}


CALIBRATION_STEPS = (1, 3, 10)
CALIBRATION_GUIDANCE = (1.0, 2.0)
CALIBRATION_TOLERANCE = 0.01  # a setting within 1% of the best validation DTW-MJE counts as as good


def choose_generation_defaults(model: T2PModel, items: Sequence["PreparedItem"],
                               steps: Sequence[int] = CALIBRATION_STEPS,
                               guidance: Sequence[float] = CALIBRATION_GUIDANCE) -> list[dict]:
    """Score every (steps, guidance) on validation items and make the cheapest good one the model's
    default: the fewest steps (then the least guidance) within CALIBRATION_TOLERANCE of the lowest
    DTW-MJE. Steps cost time linearly, and on the default data 1 step scores within 1% of 10
    (docs/quality.md): exact ties almost never happen, so a strict minimum paid 10x the time for
    noise. Returns the table."""
    from dataclasses import replace
    table = []
    for step_count in steps:
        for scale in guidance:
            metrics = validation_metrics(model, items, step_count, scale)
            table.append({"steps": step_count, "guidance": scale, **metrics})
    lowest = min(row["val_dtw_mje"] for row in table)
    good = [row for row in table if row["val_dtw_mje"] <= lowest * (1 + CALIBRATION_TOLERANCE)]
    best = min(good, key=lambda row: (row["steps"], abs(row["guidance"] - 1), row["val_dtw_mje"]))
    model.schedule_config = replace(model.schedule_config, steps=best["steps"], guidance=best["guidance"])
    for row in table:
        row["chosen"] = row is best
    return table


# --- Ray Train: shards streamed by Ray Data into TorchTrainer workers --------------------------

@dataclass
class TrainingJob:
    """Everything a training run needs; saved as job.json in the run folder."""
    data: str
    out: str
    workers: int = 1
    gpu: bool = False
    cpus_per_worker: float = 1.0
    model: dict = field(default_factory=dict)     # ModelConfig overrides (d_model, heads, ...)
    train: dict = field(default_factory=dict)     # TrainConfig fields
    schedule: dict = field(default_factory=dict)  # ScheduleConfig fields
    validation_items: int = 64                    # validation items scored (evenly spaced over the split)
    validate_every: int = 0                       # epochs between validations; 0: about 20 in a run
    calibrate: bool = True                        # after training, save the best-measured steps and guidance
    max_failures: int = 1                         # worker failures survived by restarting from the last checkpoint
    wandb: bool = False
    name: str = "ray"                             # Ray's run name inside `out`

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingJob":
        return from_dict(cls, data, what="training job")


def route_settings(settings: dict[str, str]) -> tuple[dict, dict, dict]:
    """`--set key=value` pairs -> (model, train, schedule) overrides, typed by the config fields."""
    targets = [(ModelConfig, {}), (TrainConfig, {}), (ScheduleConfig, {})]
    for key, raw in settings.items():
        for config_class, chosen in targets:
            known = {f.name: f for f in fields(config_class)}
            if key in known and key not in ("vocabulary", "skeleton"):
                chosen[key] = raw
                break
        else:
            names = sorted({f.name for c, _ in targets for f in fields(c)} - {"vocabulary", "skeleton"})
            raise ValueError(f"unknown setting {key!r}; known settings: {', '.join(names)}")
    model, train, schedule = (typed_fields(config_class, chosen, coerce_strings=True, what="setting")
                              for config_class, chosen in targets)
    return model, train, schedule


CHECKPOINT_ERROR = "t2p: the checkpoint"


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train worker: a plain PyTorch loop over this worker's shard of the training data."""
    import os
    import tempfile

    import ray.train
    import ray.train.torch

    from t2p.data import ShardExamples, read_items

    job = TrainingJob.from_dict(config["job"])
    model_config = ModelConfig.from_dict(config["model_config"])
    train_config = TrainConfig.from_dict(config["train_config"])
    schedule_config = from_dict(ScheduleConfig, config["schedule_config"], what="schedule config")
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(train_config.seed + rank)
    # the cores of this machine shared by its workers (Ray's CPU reservation is only bookkeeping,
    # and one thread per worker left half of a 2-core laptop idle)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // context.get_local_world_size()))
    generator = torch.Generator().manual_seed(train_config.seed + rank)

    model = T2PModel(model_config, schedule_config)
    start_epoch, saved_state, history = 0, None, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("resume_from"):  # an interrupted run (see `latest_checkpoint`)
        checkpoint = ray.train.Checkpoint.from_directory(config["resume_from"])
    if checkpoint:  # resuming: weights, their average, optimiser, schedule position and the metrics so far
        with checkpoint.as_directory() as directory:
            try:
                saved_state = torch.load(Path(directory) / "train_state.pt", weights_only=True)
                history = json.loads((Path(directory) / "metrics.json").read_text())
                model.load_state_dict(saved_state["weights"])
            except Exception as error:  # never skipped silently: the run would restart from scratch
                raise RuntimeError(f"{CHECKPOINT_ERROR} {checkpoint.path} cannot be read ({type(error).__name__}: "
                                   f"{str(error)[:200]}); move it away to resume from the one before, or train "
                                   "into a new --out") from None
        start_epoch = int(saved_state["epoch"]) + 1
    device = ray.train.torch.get_device()
    # DDP (more than one worker) wraps the objective, whose forward is the loss: gradients are averaged
    wrapped = ray.train.torch.prepare_model(TrainingObjective(model, train_config))
    core = unwrap(wrapped)
    average = weight_average(core, train_config.ema_decay) if train_config.ema_decay > 0 else None
    steps_per_epoch = max(1, math.ceil(config["train_rows"] / context.get_world_size() / train_config.batch_size))
    optimizer, scheduler = make_optimizer(wrapped, train_config, train_config.epochs * steps_per_epoch)
    if saved_state is not None:
        optimizer.load_state_dict(saved_state["optimizer"])
        load_scheduler_state(scheduler, saved_state["scheduler"])
        if average is not None:
            average.load_state_dict(saved_state["average"])
    exported = average.module if average is not None else core

    validation = spread(read_items(job.data, "validation"), job.validation_items) if rank == 0 else []
    decode = ShardExamples(model_config.vocabulary, (model_config.num_joints, model_config.dims))
    shard = ray.train.get_dataset_shard("train")
    logger = _wandb_logger(job, config) if rank == 0 and job.wandb else None
    every = job.validate_every or max(1, train_config.epochs // 20)
    failure = config.get("inject_failure")

    for epoch in range(start_epoch, train_config.epochs):
        if failure and rank == 0 and epoch == failure["epoch"] and not Path(failure["marker"]).exists():
            Path(failure["marker"]).write_text(f"failed at epoch {epoch}")  # once: the restarted run goes on
            raise RuntimeError(f"injected failure at epoch {epoch} (test hook)")
        sums: dict[str, float] = {}
        batches, examples_seen, ids_seen = 0, 0, set()
        window = BUCKET_BATCHES * train_config.batch_size
        for rows in shard.iter_batches(batch_size=window, batch_format="numpy",
                                       local_shuffle_buffer_size=2 * window,
                                       local_shuffle_seed=train_config.seed + 1000 * rank + epoch):
            examples = decode(rows)
            examples_seen += len(examples)
            ids_seen.update(str(row_id) for row_id in rows["id"])
            for members in length_batches([len(example.poses) for example in examples], train_config.batch_size,
                                          generator):
                batch = collate([examples[i] for i in members], model_config.max_frames).to(device)
                lengths = random_lengths(examples, train_config.batch_size, generator).to(device)
                losses = train_step(wrapped, batch, optimizer, scheduler, train_config.grad_clip, generator, lengths)
                if average is not None:
                    average.update_parameters(core)
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + value
                batches += 1
        metrics = {f"train_{name}": value / max(batches, 1) for name, value in sums.items()}
        # examples trained on by all workers together: the whole split once per epoch when shards are disjoint
        metrics.update(epoch=epoch, learning_rate=scheduler.get_last_lr()[0],
                       train_examples=_sum_over_workers(examples_seen, device),
                       train_distinct_examples=_distinct_over_workers(ids_seen), started_at_epoch=start_epoch)
        last = epoch == train_config.epochs - 1
        if not (last or (epoch + 1) % every == 0):
            history.append(metrics)
            if logger is not None:
                logger.log(metrics, step=epoch)
            continue  # validation and checkpoints only every few epochs: each costs as much as an epoch here
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if rank == 0:  # validation and the checkpoint once, on rank 0; every worker reports
                # validated with the model's own default step count, the one saved with it
                metrics.update(validation_metrics(exported.eval(), validation, schedule_config.steps))
                history.append(metrics)
                _append_progress(job.out, metrics)
                if logger is not None:
                    logger.log(metrics, step=epoch)
                exported.save(Path(directory) / "model")
                torch.save({"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "weights": core.state_dict(),
                            "average": average.state_dict() if average is not None else {}},
                           Path(directory) / "train_state.pt")
                # the whole history travels with each checkpoint: Ray keeps only the best few
                (Path(directory) / "metrics.json").write_text(json.dumps(history))
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint)
    if logger is not None:
        logger.finish()


PROGRESS_FILE = "progress.jsonl"


def _append_progress(out: str, metrics: dict) -> None:
    """One line per validated epoch, which the driver prints while Ray Train runs (worker output
    stays in Ray's logs: printed as it comes, Ray Data's progress bars flood the console)."""
    with open(Path(out) / PROGRESS_FILE, "a") as handle:
        handle.write(json.dumps(metrics) + "\n")


class ProgressPrinter:
    """Prints the epochs a run's rank 0 appends to PROGRESS_FILE, from a thread, while `fit` blocks."""

    def __init__(self, out: Path, epochs: int, interval: float = 2.0):
        import threading
        self.path, self.epochs, self.interval = Path(out) / PROGRESS_FILE, epochs, interval
        self.seen = self.path.stat().st_size if self.path.exists() else 0  # a resumed run's earlier lines
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ProgressPrinter":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._print_new()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self._print_new()

    def _print_new(self) -> None:
        if not self.path.exists():
            return
        with open(self.path) as handle:
            handle.seek(self.seen)
            text = handle.read()
        complete = text[:text.rfind("\n") + 1]  # a line still being written waits for the next look
        self.seen += len(complete.encode())
        for line in complete.splitlines():
            metrics = json.loads(line)
            print(f"epoch {int(metrics['epoch']) + 1}/{self.epochs}: loss {metrics.get('train_loss', float('nan')):.4f}, "
                  f"validation DTW-MJE {metrics.get('val_dtw_mje', float('nan')):.4f} "
                  f"(static {metrics.get('val_static_dtw_mje', float('nan')):.4f}), "
                  f"length error {metrics.get('val_length_error', float('nan')):.2f} frames", flush=True)


def _sum_over_workers(value: int, device) -> int:
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return value
    total = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(total)
    return int(total.item())


def _distinct_over_workers(ids: set[str]) -> int:
    """How many different rows all workers together read: equal to the rows read when their shards
    are disjoint."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return len(ids)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, ids)
    return len(set().union(*gathered))


def _wandb_logger(job: TrainingJob, config: dict):
    """W&B run of a training job (rank 0 of the Ray Train loop); only when --wandb was asked for."""
    return wandb_run(job.out, {"train": config["train_config"], "schedule": config["schedule_config"],
                               "model": {k: v for k, v in config["model_config"].items() if k not in
                                         ("vocabulary", "pose_mean", "pose_std", "neutral_pose", "known_texts")}})


def wandb_run(out: str | Path, config: dict):
    """A W&B run (project t2p) writing under `out`/wandb, offline unless an API key is configured.

    Made by Ray's `setup_wandb`: inside a Train/Tune run it names and groups the W&B run after the
    trial. It asks for an API key unless WANDB_MODE is offline in the environment, so without
    WANDB_API_KEY that is set (in this worker process; an explicit WANDB_MODE is kept)."""
    import os
    try:
        import wandb  # noqa: F401  (Ray's integration imports it; this says how to install it)
    except ImportError:
        raise RuntimeError("--wandb needs the wandb package: pip install 't2p[wandb]'") from None
    from ray.air.integrations.wandb import setup_wandb
    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
    return setup_wandb(config, project="t2p", dir=str(out))


def ensure_ray(num_cpus: int | None = None, quiet: bool = False) -> None:
    """Connect to the cluster in RAY_ADDRESS, or start local single-node Ray (saying so once)."""
    import os

    import ray
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
        return
    if not quiet:
        print("t2p: no Ray cluster given (RAY_ADDRESS unset): starting a local Ray instance on this machine",
              flush=True)
    # address="local": a new instance of this process's own, never one that another program started
    # on this machine (which the run would share, and whose leftovers it would wait behind)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_TRAIN_V2_ENABLED": "1"}})


def run_training(job: TrainingJob, callbacks: Sequence = (), inject_failure: dict | None = None) -> dict:
    """Train with Ray Train on prepared shards; write best/, metrics.csv and job.json into job.out.

    Re-running with the same `out` continues from the last checkpoint (Ray Train restores a run
    with the same name and storage path); a failed worker restarts the run from it, up to
    `job.max_failures` times. Returns the best epoch's metrics. `inject_failure` ({"epoch": N,
    "marker": path}) is a test hook: rank 0 raises once at the start of that epoch.
    """
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from t2p.data import load_manifest, read_items, shard_paths

    out = Path(job.out).resolve()
    data = Path(job.data).resolve()
    manifest = load_manifest(data)
    job = TrainingJob.from_dict({**job.to_dict(), "out": str(out), "data": str(data)})
    model_config = model_config_from_manifest(manifest, known_texts=training_texts(data), **job.model)
    train_config = TrainConfig.from_dict({**TrainConfig().to_dict(), **job.train})
    schedule_config = from_dict(ScheduleConfig, {**ScheduleConfig().to_dict(), **job.schedule}, what="schedule config")
    if not manifest["counts"]["validation"]:
        raise ValueError(f"{data} has no validation rows: prepare it with a validation fraction > 0")
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps({"job": job.to_dict(), "train_config": train_config.to_dict(),
                                              "schedule_config": schedule_config.to_dict()}, indent=1))

    ensure_ray()
    job = fit_workers_to_cluster(job)
    # reading a shard is light work: a fraction of a CPU, so reads still fit beside the workers
    # (and beside a Tune trial's own reservation) on a small machine
    # shard files in a new seeded order every epoch (execution), on top of the rows' local shuffle
    file_order = ray.data.FileShuffleConfig(seed=train_config.seed, reseed_after_execution=True)
    context = ray.data.DataContext.get_current()
    if hasattr(context, "use_datasource_v2"):
        # Ray 2.60's new read path lists files in a task that asks for a whole CPU whatever the read's
        # num_cpus: beside 1-CPU workers on a small machine it was never scheduled and training hung
        context.use_datasource_v2 = False
    train_data = ray.data.read_parquet(shard_paths(data, "train"), num_cpus=DATA_CPUS, shuffle=file_order)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.to_dict(), "model_config": asdict(model_config),
                           "train_config": train_config.to_dict(), "schedule_config": schedule_config.to_dict(),
                           "train_rows": manifest["counts"]["train"], "inject_failure": inject_failure,
                           "resume_from": latest_checkpoint(out / job.name)},
        scaling_config=ray.train.ScalingConfig(num_workers=job.workers, use_gpu=job.gpu,
                                               resources_per_worker={"CPU": job.cpus_per_worker}),
        datasets={"train": train_data},
        run_config=ray.train.RunConfig(
            name=job.name, storage_path=str(out), callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=job.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_dtw_mje",
                                                         checkpoint_score_order="min")),
    )
    try:
        with ProgressPrinter(out, train_config.epochs):
            result = trainer.fit()
    except Exception as error:
        raise _worker_error(error) from error
    if result.error:
        raise _worker_error(result.error) from result.error
    best = export_run(out, result)
    if not job.calibrate:  # e.g. a sweep over steps: the trial's own setting is what is measured
        return {**best, "steps": schedule_config.steps, "guidance": schedule_config.guidance,
                "val_dtw_mje_chosen": best["val_dtw_mje"]}
    # the default steps and guidance saved with the model are the ones measured best on validation
    model = T2PModel.load(out / "best")
    table = choose_generation_defaults(model, spread(read_items(data, "validation"), job.validation_items))
    model.save(out / "best")
    (out / "generation.json").write_text(json.dumps(table, indent=1))
    chosen = next(row for row in table if row["chosen"])
    return {**best, "steps": chosen["steps"], "guidance": chosen["guidance"], "val_dtw_mje_chosen": chosen["val_dtw_mje"]}


def latest_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint folder of a run, or None. Ray Train restores a run from its own
    snapshot, which it writes when the run ends; a run stopped before (Ctrl-C, a lost machine) has
    checkpoints but no snapshot, and would start again from nothing."""
    folders = sorted(path for path in Path(run_dir).glob("checkpoint_*") if path.is_dir())  # named by time
    return str(folders[-1]) if folders else None


def _worker_error(error: BaseException) -> BaseException:
    """A worker's own message where t2p wrote one (e.g. an unreadable checkpoint, by path) as one
    ValueError line for the CLI; anything else as Ray raised it."""
    for line in str(error).splitlines():
        if CHECKPOINT_ERROR in line:
            return ValueError(line[line.index(CHECKPOINT_ERROR):])
    return error


DATA_CPUS = 0.25  # what the shard reads need beside the workers


def fit_workers_to_cluster(job: TrainingJob) -> TrainingJob:
    """Check the workers fit the cluster before Ray waits for them forever.

    On a local single-node Ray, workers that would take every CPU get a fraction each, leaving
    DATA_CPUS for reading shards (two 1-CPU workers on a 2-core laptop hung with no read able to
    start). On a cluster (RAY_ADDRESS) the request stands: an autoscaler may add nodes. Asking
    for GPUs where none exist fails at once, with the reason."""
    import os

    import ray
    from dataclasses import replace
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if os.environ.get("RAY_ADDRESS"):
        if job.gpu and gpus < job.workers:  # an autoscaler (cluster.yaml's GPU workers) may still add them
            print(f"t2p: --gpu asks for {job.workers} GPU worker(s) and this cluster has {gpus} GPU(s) now; "
                  "the run starts when the autoscaler has added them", flush=True)
        return job
    # ValueError: the CLI prints it as one line (these are the user's request, not a crash)
    if job.gpu and gpus < job.workers:
        raise ValueError(f"--gpu asks for {job.workers} GPU worker(s); this machine's Ray has {gpus} GPU(s)")
    cpus = resources.get("CPU", 1)
    if job.workers * job.cpus_per_worker + DATA_CPUS <= cpus:
        return job
    share = round((cpus - DATA_CPUS) / job.workers, 3)
    if share < 0.05:
        raise ValueError(f"{job.workers} worker(s) do not fit this machine's {cpus:g} CPUs beside data loading "
                         f"({DATA_CPUS:g} CPU); use --workers {max(1, int(cpus - DATA_CPUS))} or fewer")
    print(f"t2p: {job.workers} workers x {job.cpus_per_worker:g} CPU do not fit this machine's {cpus:g} CPUs "
          f"beside data loading; each worker gets {share:g} CPU", flush=True)
    return replace(job, cpus_per_worker=share)


def export_run(out: Path, result) -> dict:
    """Copy the best checkpoint's model to out/best and the per-epoch metrics to out/metrics.csv."""
    best_checkpoint, best_metrics = min(result.best_checkpoints, key=lambda pair: pair[1]["val_dtw_mje"])
    staging = out / "best.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with best_checkpoint.as_directory() as directory:
        shutil.copytree(Path(directory) / "model", staging)
    shutil.rmtree(out / "best", ignore_errors=True)
    staging.replace(out / "best")
    with result.checkpoint.as_directory() as directory:  # the latest checkpoint holds every epoch
        history = json.loads((Path(directory) / "metrics.json").read_text())
    columns = list(dict.fromkeys(name for row in history for name in row))  # validation columns come later
    partial = out / "metrics.csv.partial"
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    partial.replace(out / "metrics.csv")
    return {key: value for key, value in best_metrics.items() if key in columns}
