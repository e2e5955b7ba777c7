"""The Ray Train job: prepared shards streamed by Ray Data into TorchTrainer workers.

`run_training` is the driver: it checks the job against the cluster, starts a `TorchTrainer` whose
workers run `train_loop_per_worker` (the local `train_step`, on each worker's shard), prints each
validated epoch as Ray Train reports it, and exports the best checkpoint's model. A run folder
holds job.json, Ray's checkpoints (under the job's name), best/, metrics.csv and generation.json.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Collection, Iterator, Sequence

import ray
import ray.data
import ray.train
import ray.train.torch
import torch
from ray.train.torch import TorchTrainer

from t2p.cluster import ensure_ray
from t2p.config import from_dict, typed_fields
from t2p.data import (LengthBatch, PoseBatch, ShardExamples, collate, load_manifest, model_config_from_manifest,
                      read_items, shard_paths, training_texts)
from t2p.handshape import hands_of
from t2p.metrics import SELECTION_METRICS
from t2p.model import ModelConfig, T2PModel
from t2p.objective import TrainingObjective, unwrap
from t2p.schedule import ScheduleConfig
from t2p.train import (BUCKET_BATCHES, TrainConfig, length_batches, make_optimizer, random_lengths, train_step,
                       weight_average)
from t2p.validation import choose_generation_defaults, evenly_spaced, validation_metrics


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
    # the validation metric the best checkpoint, the saved steps and a sweep's best trial are chosen
    # on: one of metrics.SELECTION_METRICS
    select_on: str = "val_dtw_mje"
    max_failures: int = 1                         # worker failures survived by restarting from the last checkpoint
    wandb: bool = False
    name: str = "ray"                             # Ray's run name inside `out`

    def __post_init__(self):
        if self.select_on not in SELECTION_METRICS:
            raise ValueError(f"training job select_on: {self.select_on!r} is not one of {', '.join(SELECTION_METRICS)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingJob":
        return from_dict(cls, data, what="training job")

    # the fields that say which run a job is, in the order a refusal lists them; `batch_size` lives
    # in the `train` settings but is a flag of its own
    IDENTITY_FIELDS = ("data", "workers", "gpu", "cpus_per_worker", "max_failures", "validation_items",
                       "validate_every", "wandb", "batch_size", "select_on")

    def changed_settings(self, asked: "TrainingJob", given: Collection[str] | None = None) -> list[str]:
        """Whether `asked` is the run this (saved) job is: the names in `IDENTITY_FIELDS` whose value
        differs, then "set" when a model, training or schedule setting does (epochs may change: a
        run can be extended).

        `given`: the fields the user gave; the rest keep the saved value and are not compared, and
        only the settings `asked` names count (continuing a run). None: every field and every
        setting of either job counts (the same command run again into a folder that holds a run)."""
        saved, wanted = self.to_dict(), asked.to_dict()
        parts = ("model", "train", "schedule")
        counts = (lambda name: True) if given is None else (lambda name: name in given)
        settings = {key for part in parts for key in wanted[part]}
        if given is None:
            settings |= {key for part in parts for key in saved[part]}
        settings -= {"epochs", "batch_size"}  # a run may be extended; batch_size is compared as a field
        set_changed = any(wanted[part].get(key) != saved[part].get(key) for key in settings for part in parts)
        changed = [name for name in self.IDENTITY_FIELDS
                   if counts(name) and _identity_value(wanted, name) != _identity_value(saved, name)]
        return changed + (["set"] if set_changed else [])


def _identity_value(job: dict, name: str):
    if name == "batch_size":
        return job["train"].get("batch_size")
    if name == "data":  # the same folder however it was written
        return str(Path(job["data"]).resolve())
    return job[name]


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


# --- the worker -------------------------------------------------------------------------------

def train_loop_per_worker(config: dict) -> None:
    """The Ray Train worker: a plain PyTorch loop over this worker's shard of the training data."""
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
    saved = restore_weights(model, config.get("resume_from"))
    start_epoch, history = (saved.epoch + 1, saved.history) if saved is not None else (0, [])
    device = ray.train.torch.get_device()
    steps_per_epoch = max(1, math.ceil(config["train_rows"] / context.get_world_size() / train_config.batch_size))
    learner = Learner.create(model, train_config, train_config.epochs * steps_per_epoch)
    if saved is not None:
        learner.load_state_dict(saved.state)

    validation = evenly_spaced(read_items(job.data, "validation"), job.validation_items) if rank == 0 else []
    decode = ShardExamples(model_config.vocabulary, (model_config.num_joints, model_config.dims))
    shard = ray.train.get_dataset_shard("train")
    logger = _wandb_logger(job, config) if rank == 0 and job.wandb else None
    every = job.validate_every or max(1, train_config.epochs // 20)

    for epoch in range(start_epoch, train_config.epochs):
        metrics = train_epoch(learner, shard, decode, train_config, model_config.max_frames, generator, device,
                              epoch=epoch, rank=rank)
        metrics["started_at_epoch"] = start_epoch
        if not (epoch == train_config.epochs - 1 or (epoch + 1) % every == 0):
            history.append(metrics)
            if logger is not None:
                logger.log(metrics, step=epoch)
            continue  # validation and checkpoints only every few epochs: each costs as much as an epoch here
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if rank == 0:  # validation and the checkpoint once, on rank 0; every worker reports
                # validated with the model's own default step count, the one saved with it
                metrics.update(validation_metrics(learner.exported.eval(), validation, schedule_config.steps))
                history.append(metrics)
                if logger is not None:
                    logger.log(metrics, step=epoch)
                checkpoint = save_checkpoint(Path(directory), learner, epoch, history)
            ray.train.report(metrics, checkpoint=checkpoint)
    if logger is not None:
        logger.finish()


@dataclass
class Learner:
    """One worker's model in training: the objective (DDP-wrapped with more than one worker: the
    gradients are averaged), its optimiser and learning-rate schedule, and the weight average
    that is validated and exported."""
    objective: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    average: torch.optim.swa_utils.AveragedModel | None
    grad_clip: float

    @classmethod
    def create(cls, model: T2PModel, config: TrainConfig, total_steps: int) -> "Learner":
        objective = ray.train.torch.prepare_model(TrainingObjective(model, config))
        average = weight_average(unwrap(objective), config.ema_decay) if config.ema_decay > 0 else None
        optimizer, scheduler = make_optimizer(objective, config, total_steps)
        return cls(objective, optimizer, scheduler, average, config.grad_clip)

    @property
    def model(self) -> T2PModel:
        return unwrap(self.objective)

    @property
    def exported(self) -> T2PModel:
        return self.average.module if self.average is not None else self.model

    def step(self, batch: PoseBatch, lengths: LengthBatch, generator: torch.Generator) -> dict[str, float]:
        losses = train_step(self.objective, batch, self.optimizer, self.scheduler, self.grad_clip, generator, lengths)
        if self.average is not None:
            self.average.update_parameters(self.model)
        return losses

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "weights": self.model.state_dict(),
                "average": self.average.state_dict() if self.average is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        """The optimiser, schedule position and weight average (the weights are loaded before the
        model is wrapped: see `restore_weights`)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])


def train_epoch(learner: Learner, shard, decode: ShardExamples, config: TrainConfig, max_frames: int,
                generator: torch.Generator, device, epoch: int, rank: int) -> dict:
    """One pass over this worker's shard, in windows of BUCKET_BATCHES batches grouped by length.
    Returns the mean losses (train_*), the learning rate and how many rows all workers read."""
    sums: dict[str, float] = {}
    batches, examples_seen, ids_seen = 0, 0, set()
    window = BUCKET_BATCHES * config.batch_size
    for rows in shard.iter_batches(batch_size=window, batch_format="numpy", local_shuffle_buffer_size=2 * window,
                                   local_shuffle_seed=config.seed + 1000 * rank + epoch):
        examples = decode(rows)
        examples_seen += len(examples)
        ids_seen.update(str(row_id) for row_id in rows["id"])
        for members in length_batches([len(example.poses) for example in examples], config.batch_size, generator):
            batch = collate([examples[i] for i in members], max_frames).to(device)
            lengths = random_lengths(examples, config.batch_size, generator).to(device)
            for name, value in learner.step(batch, lengths, generator).items():
                sums[name] = sums.get(name, 0.0) + value
            batches += 1
    metrics = {f"train_{name}": value / max(batches, 1) for name, value in sums.items()}
    # examples trained on by all workers together: the whole split once per epoch when shards are disjoint
    return {**metrics, "epoch": epoch, "learning_rate": learner.scheduler.get_last_lr()[0],
            "train_examples": _sum_over_workers(examples_seen, device),
            "train_distinct_examples": _distinct_over_workers(ids_seen)}


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


# --- checkpoints ------------------------------------------------------------------------------

CHECKPOINT_ERROR = "t2p: the checkpoint"
TRAIN_STATE_FILE = "train_state.pt"  # the epoch, weights, their average, optimiser and schedule position
HISTORY_FILE = "metrics.json"        # every epoch's metrics so far


@dataclass
class SavedTraining:
    """What a checkpoint restores besides the weights."""
    epoch: int           # the last epoch it finished
    state: dict          # `Learner.state_dict()`
    history: list[dict]  # the metrics of every epoch up to `epoch`


def restore_weights(model: T2PModel, resume_from: str | None) -> SavedTraining | None:
    """Load the weights of the run's checkpoint into `model` and return the rest, or None for a new
    run. The checkpoint is Ray Train's own (a restarted or restored run), else `resume_from` (an
    interrupted run: see `latest_checkpoint`)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and resume_from:
        checkpoint = ray.train.Checkpoint.from_directory(resume_from)
    if not checkpoint:
        return None
    with checkpoint.as_directory() as directory:
        state, history = read_checkpoint(Path(directory), checkpoint.path, load=model.load_state_dict)
    return SavedTraining(int(state["epoch"]), state, history)


def read_checkpoint(directory: Path, name: str, load=None, map_location=None) -> tuple[dict, list[dict]]:
    """A checkpoint's train state and history, `load` called on its weights; a RuntimeError naming
    `name` if any of it cannot be read (never skipped silently: the run would restart from scratch)."""
    try:
        state = torch.load(directory / TRAIN_STATE_FILE, weights_only=True, map_location=map_location)
        history = json.loads((directory / HISTORY_FILE).read_text())
        if load is not None:
            load(state["weights"])
    except Exception as error:
        raise RuntimeError(f"{CHECKPOINT_ERROR} {name} cannot be read ({type(error).__name__}: "
                           f"{str(error)[:200]}); move it away to resume from the one before, or train "
                           "into a new --out") from None
    return state, history


def save_checkpoint(directory: Path, learner: Learner, epoch: int, history: list[dict]) -> ray.train.Checkpoint:
    """The exported model (model/, what `export_run` copies to best/) and what resuming needs."""
    learner.exported.save(directory / "model")
    torch.save({"epoch": epoch, **learner.state_dict()}, directory / TRAIN_STATE_FILE)
    # the whole history travels with each checkpoint: Ray keeps only the best few
    (directory / HISTORY_FILE).write_text(json.dumps(history))
    return ray.train.Checkpoint.from_directory(directory)


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


# --- progress and tracking --------------------------------------------------------------------

class EpochPrinter(ray.train.UserCallback):
    """Prints each validated epoch on the driver as Ray Train reports it.

    `after_report` runs in Ray Train's controller, an actor whose output stays in Ray's logs (t2p
    starts Ray with log_to_driver=False: worker output printed as it comes floods the console with
    Ray Data's progress bars), and Train V2 has no callback that runs on the driver, where `fit`
    blocks. So the controller puts rank 0's report on a Ray queue, which a driver thread prints."""

    def __init__(self, epochs: int):
        from ray.util.queue import Queue
        self.epochs = epochs
        self.queue = Queue(actor_options={"num_cpus": 0})  # no CPU: never waits behind the workers

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        self.queue.put(metrics[0])  # rank 0 validated; every report is a validated epoch

    @contextmanager
    def printing(self, interval: float = 1.0) -> Iterator[None]:
        """While the block runs (`fit`), and what is left when it ends; then the queue is closed."""
        done = threading.Event()

        def print_reports() -> None:
            while not done.wait(interval):
                self._print_waiting()

        thread = threading.Thread(target=print_reports, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            self._print_waiting()  # reported after the thread's last look
            self.queue.shutdown()

    def _print_waiting(self) -> None:
        # how many first, then exactly those: a blocking get that times out raises inside the actor
        waiting = self.queue.qsize()
        for metrics in self.queue.get_nowait_batch(waiting) if waiting else []:
            self.print_epoch(metrics)

    def print_epoch(self, metrics: dict) -> None:
        print(f"epoch {int(metrics['epoch']) + 1}/{self.epochs}: loss {metrics.get('train_loss', float('nan')):.4f}, "
              f"validation DTW-MJE {metrics.get('val_dtw_mje', float('nan')):.4f} "
              f"(static {metrics.get('val_static_dtw_mje', float('nan')):.4f}), "
              f"length error {metrics.get('val_length_error', float('nan')):.2f} frames; from the neutral start "
              f"DTW-MJE {metrics.get('val_neutral_dtw_mje', float('nan')):.4f}, "
              f"handshape {metrics.get('val_neutral_handshape', float('nan')):.3f}", flush=True)


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
    try:
        import wandb  # noqa: F401  (Ray's integration imports it; this says how to install it)
    except ImportError:
        raise RuntimeError("--wandb needs the wandb package: pip install 't2p[wandb]'") from None
    from ray.air.integrations.wandb import setup_wandb
    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
    return setup_wandb(config, project="t2p", dir=str(out))


# --- the driver -------------------------------------------------------------------------------

DATA_CPUS = 0.25  # what the shard reads need beside the workers


def fit_workers_to_cluster(job: TrainingJob) -> TrainingJob:
    """Check the workers fit the cluster before Ray waits for them forever.

    On a local single-node Ray, workers that would take every CPU get a fraction each, leaving
    DATA_CPUS for reading shards (two 1-CPU workers on a 2-core laptop hung with no read able to
    start). On a cluster (RAY_ADDRESS) the request stands: an autoscaler may add nodes. Asking
    for GPUs where none exist fails at once, with the reason."""
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


def run_training(job: TrainingJob, callbacks: Sequence = ()) -> dict:
    """Train with Ray Train on prepared shards; write best/, metrics.csv and job.json into job.out.

    Re-running with the same `out` continues from the last checkpoint (Ray Train restores a run
    with the same name and storage path); a failed worker restarts the run from it, up to
    `job.max_failures` times. Returns the best epoch's metrics.
    """
    out = Path(job.out).resolve()
    data = Path(job.data).resolve()
    manifest = load_manifest(data)
    job = TrainingJob.from_dict({**job.to_dict(), "out": str(out), "data": str(data)})
    model_config = model_config_from_manifest(manifest, known_texts=training_texts(data), **job.model)
    train_config = TrainConfig.from_dict({**TrainConfig().to_dict(), **job.train})
    schedule_config = from_dict(ScheduleConfig, {**ScheduleConfig().to_dict(), **job.schedule}, what="schedule config")
    if not manifest["counts"]["validation"]:
        raise ValueError(f"{data} has no validation rows: prepare it with a validation fraction > 0")
    if job.select_on == "val_neutral_handshape" and not hands_of(model_config.build_skeleton()):
        raise ValueError(f"--select-on val_neutral_handshape needs both hands' 21 points; {data}'s skeleton "
                         f"has none: select on val_dtw_mje or val_neutral_dtw_mje")
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
    resume_from = latest_checkpoint(out / job.name)
    if resume_from:  # read here first: a damaged one fails in a second, not after the workers started twice
        try:
            read_checkpoint(Path(resume_from), resume_from, map_location="cpu")
        except RuntimeError as error:
            raise ValueError(str(error)) from None
    printer = EpochPrinter(train_config.epochs)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.to_dict(), "model_config": asdict(model_config),
                           "train_config": train_config.to_dict(), "schedule_config": schedule_config.to_dict(),
                           "train_rows": manifest["counts"]["train"], "resume_from": resume_from},
        scaling_config=ray.train.ScalingConfig(num_workers=job.workers, use_gpu=job.gpu,
                                               resources_per_worker={"CPU": job.cpus_per_worker}),
        datasets={"train": train_data},
        # one worker reads the whole dataset itself: a split would only add a coordinator actor
        # (3 s of every run's start here) and hand the same rows over in the same order
        dataset_config=ray.train.DataConfig(datasets_to_split="all" if job.workers > 1 else []),
        run_config=ray.train.RunConfig(
            name=job.name, storage_path=str(out), callbacks=[printer, *callbacks],
            failure_config=ray.train.FailureConfig(max_failures=job.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=job.select_on,
                                                         checkpoint_score_order="min")),
    )
    try:
        with printer.printing():
            result = trainer.fit()
    except Exception as error:
        raise _worker_error(error) from error
    if result.error:
        raise _worker_error(result.error) from result.error
    best = export_run(out, result, job.select_on)
    if not job.calibrate:  # e.g. a sweep over steps: the trial's own setting is what is measured
        return {**best, "steps": schedule_config.steps, "guidance": schedule_config.guidance,
                "val_dtw_mje_chosen": best["val_dtw_mje"], "selected_on": job.select_on,
                "selected_score": best[job.select_on]}
    # the default steps and guidance saved with the model are the ones measured best on validation
    model = T2PModel.load(out / "best")
    table = choose_generation_defaults(model, evenly_spaced(read_items(data, "validation"), job.validation_items),
                                       metric=job.select_on)
    model.save(out / "best")
    (out / "generation.json").write_text(json.dumps(table, indent=1))
    chosen = next(row for row in table if row["chosen"])
    return {**best, "steps": chosen["steps"], "guidance": chosen["guidance"], "val_dtw_mje_chosen": chosen["val_dtw_mje"],
            "selected_on": job.select_on, "selected_score": chosen[job.select_on]}


def export_run(out: Path, result, select_on: str = "val_dtw_mje") -> dict:
    """Copy the model of the checkpoint with the lowest `select_on` to out/best and the per-epoch
    metrics to out/metrics.csv."""
    best_checkpoint, best_metrics = min(result.best_checkpoints, key=lambda pair: pair[1][select_on])
    staging = out / "best.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with best_checkpoint.as_directory() as directory:
        shutil.copytree(Path(directory) / "model", staging)
    shutil.rmtree(out / "best", ignore_errors=True)
    staging.replace(out / "best")
    with result.checkpoint.as_directory() as directory:  # the latest checkpoint holds every epoch
        history = json.loads((Path(directory) / HISTORY_FILE).read_text())
    columns = list(dict.fromkeys(name for row in history for name in row))  # validation columns come later
    partial = out / "metrics.csv.partial"
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    partial.replace(out / "metrics.csv")
    return {key: value for key, value in best_metrics.items() if key in columns}
