"""The Ray Train job: prepared shards streamed by Ray Data into TorchTrainer workers.

`run_training` is the driver: it checks the job against the cluster, starts a `TorchTrainer` whose
workers run `train_loop_per_worker` (the `Learner` of `t2p.training.loop`, on each worker's part of
the data), prints each validated epoch as Ray Train reports it, and exports the best checkpoint's
model. A run folder holds job.json, Ray's checkpoints (under the job's name), best/, metrics.csv
and generation.json.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator, Sequence

import ray
import ray.data
import ray.train
import ray.train.torch
import torch
from ray.train.torch import TorchTrainer

from t2p.cluster import ensure_ray, quiet_ray_logs
from t2p.config import from_dict, read_json, write_json
from t2p.data import load_manifest, read_items, shard_paths
from t2p.data.shards import training_texts
from t2p.model import ModelConfig, ScheduleConfig, T2PModel, save_schedule
from t2p.training.batches import BUCKET_BATCHES, Example, ShardExamples, shuffled_windows, window_batches
from t2p.training.checkpoints import (
    HISTORY_FILE,
    latest_checkpoint,
    read_checkpoint,
    restore_weights,
    save_checkpoint,
    worker_error,
)
from t2p.training.config import DEFAULT_SELECTION, TrainConfig, TrainingJob
from t2p.training.loop import Learner
from t2p.training.progress import EpochPrinter, epoch_done, wandb_logger
from t2p.training.runs import copy_folder, write_csv
from t2p.training.validation import choose_generation_defaults, evenly_spaced, validation_metrics

JOB_FILE = "job.json"


# --- the worker -------------------------------------------------------------------------------

def train_loop_per_worker(config: dict) -> None:
    """The Ray Train worker: a plain PyTorch loop over this worker's part of the training data."""
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
    if saved is None and job.init_from:
        model.start_from(T2PModel.load(job.init_from))
    start_epoch, history = (saved.epoch + 1, saved.history) if saved is not None else (0, [])
    device = ray.train.torch.get_device()
    steps_per_epoch = max(1, math.ceil(config["train_rows"] / context.get_world_size() / train_config.batch_size))
    learner = Learner.create(model, train_config, train_config.epochs * steps_per_epoch,
                             wrap=ray.train.torch.prepare_model)
    if saved is not None:
        learner.load_state_dict(saved.state)

    validation = evenly_spaced(read_items(job.data, "validation"), job.validation_items) if rank == 0 else []
    decode = ShardExamples(model_config.vocabulary, (model_config.num_joints, model_config.dims))
    shard = ray.train.get_dataset_shard("train")
    logger = wandb_logger(job, config) if rank == 0 and job.wandb else None
    validated = set(job.validation_epochs(train_config.epochs))

    progress = config.get("progress") if rank == 0 else None
    rows = WorkerRows(shard, decode, limit_bytes=job.cache_mb * 2 ** 20)
    for epoch in range(start_epoch, train_config.epochs):
        metrics = train_epoch(learner, rows, train_config, model_config.max_frames, generator, device,
                              epoch=epoch, rank=rank)
        metrics["started_at_epoch"] = start_epoch
        if progress is not None and epoch not in validated:
            epoch_done(progress, metrics)
        if epoch not in validated:
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


class WorkerRows:
    """A worker's training rows, epoch after epoch, in shuffled windows of decoded `Example`s.

    The first epoch streams the worker's Ray Data shard. When its decoded rows take at most
    `limit_bytes`, the worker keeps them and later epochs shuffle them in memory: re-reading 478
    fingerspelling rows cost 0.2 s of Ray Data and 0.35 s of contention per 2.3 s epoch on 2 cores
    (docs/quality.md, "The quickstart's budget"). Larger shards stream every epoch. Rows stay with
    the worker that read them first; their order is reshuffled every epoch either way."""

    def __init__(self, shard, decode: ShardExamples, limit_bytes: int):
        self.shard, self.decode, self.limit_bytes = shard, decode, limit_bytes
        self.kept: list[tuple[str, Example]] | None = None

    def windows(self, size: int, seed: int, generator: torch.Generator) -> Iterator[tuple[list[str], list[Example]]]:
        """(row ids, examples) in windows of `size` rows, shuffled anew for this epoch."""
        if self.kept is not None:
            for window in shuffled_windows(self.kept, size, generator):
                yield [row_id for row_id, _ in window], [example for _, example in window]
            return
        kept, kept_bytes = [], 0
        for rows in self.shard.iter_batches(batch_size=size, batch_format="numpy", local_shuffle_buffer_size=2 * size,
                                            local_shuffle_seed=seed):
            ids, examples = [str(row_id) for row_id in rows["id"]], self.decode(rows)
            if kept is not None:
                kept_bytes += sum(example.sequence.data.nbytes + example.sequence.confidence.nbytes
                                  for example in examples)
                if kept_bytes <= self.limit_bytes:
                    kept.extend(zip(ids, examples))
                else:
                    kept = None
            yield ids, examples
        self.kept = kept


def train_epoch(learner: Learner, rows: WorkerRows, config: TrainConfig, max_frames: int,
                generator: torch.Generator, device, epoch: int, rank: int) -> dict:
    """One pass over this worker's rows, in windows of BUCKET_BATCHES batches grouped by length
    (`window_batches`, as `fit` batches). Returns the mean losses (train_*), the learning rate and
    how many rows all workers read."""
    sums: dict[str, float] = {}
    batches, examples_seen, ids_seen = 0, 0, set()
    for ids, examples in rows.windows(BUCKET_BATCHES * config.batch_size, config.seed + 1000 * rank + epoch, generator):
        examples_seen += len(examples)
        ids_seen.update(ids)
        for batch, lengths in window_batches(examples, config.batch_size, generator, max_frames):
            for name, value in learner.step(batch.to(device), lengths.to(device), generator).items():
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
    `job.max_failures` times. Returns the best epoch's metrics, with the steps and guidance saved
    with the model and the seconds each phase took ("seconds": ray, training, export, calibration)."""
    seconds, began = {}, time.perf_counter()
    job, manifest, configs = _start_run(job)
    model_config, train_config, schedule_config = configs
    ensure_ray()
    job = fit_workers_to_cluster(job)
    quiet_ray_logs(Path(job.out) / "ray.log")
    seconds["ray"], began = time.perf_counter() - began, time.perf_counter()
    printer = EpochPrinter(train_config.epochs)
    trainer = _trainer(job, manifest, model_config, train_config, schedule_config, [printer, *callbacks],
                       progress=printer.queue)
    try:
        with printer.printing():
            result = trainer.fit()
    except Exception as error:  # the real cause as one line where t2p can tell it (worker_error), else as Ray raised it
        raise worker_error(error, Path(job.out)) from error
    if result.error:
        raise worker_error(result.error, Path(job.out)) from result.error
    seconds["training"], began = time.perf_counter() - began, time.perf_counter()
    out = Path(job.out)
    best = export_run(out, result, job.select_on)
    seconds["export"], began = time.perf_counter() - began, time.perf_counter()
    if not job.calibrate:  # e.g. a sweep over steps: the trial's own setting is what is measured
        return {**best, "steps": schedule_config.steps, "guidance": schedule_config.guidance,
                "val_dtw_mje_chosen": best["val_dtw_mje"], "selected_on": job.select_on,
                "selected_score": best[job.select_on], "seconds": seconds}
    chosen = calibrate(out / "best", job)
    seconds["calibration"] = time.perf_counter() - began
    return {**best, **chosen, "seconds": seconds}


def _start_run(job: TrainingJob) -> tuple[TrainingJob, dict, tuple[ModelConfig, TrainConfig, ScheduleConfig]]:
    """The job with absolute paths, the data's manifest and the run's configs, checked before Ray
    starts; job.json written into the run folder."""
    job = job.with_absolute_paths()
    out, data = Path(job.out), Path(job.data)
    manifest = load_manifest(data)
    model_config = model_config_from_manifest(manifest, known_texts=training_texts(data), **job.model)
    train_config = TrainConfig.from_dict({**TrainConfig().to_dict(), **job.train})
    schedule_config = from_dict(ScheduleConfig, {**ScheduleConfig().to_dict(), **job.schedule}, what="schedule config")
    if not manifest["counts"]["validation"]:
        raise ValueError(f"{data} has no validation rows: prepare it with a validation fraction > 0")
    if job.select_on == "val_neutral_handshape" and not any(hand.angles for hand in model_config.build_skeleton().hands()):
        raise ValueError(f"--select-on val_neutral_handshape needs the hands' finger points; {data}'s skeleton "
                         f"has none: select on val_dtw_mje or val_neutral_dtw_mje")
    if job.init_from:  # refused here, before Ray starts, if it cannot start this model
        try:
            T2PModel(model_config, schedule_config).start_from(T2PModel.load(job.init_from))
        except ValueError as error:
            raise ValueError(f"--init {job.init_from}: {error}") from None
    write_job(out, job, train_config, schedule_config)
    return job, manifest, (model_config, train_config, schedule_config)


def write_job(out: Path, job: TrainingJob, train_config: TrainConfig, schedule_config: ScheduleConfig) -> Path:
    """job.json: what `--resume` and a re-run of the same command read back."""
    return write_json(out / JOB_FILE, {"job": job.to_dict(), "train_config": train_config.to_dict(),
                                       "schedule_config": schedule_config.to_dict()})


def read_job(run_dir: Path) -> TrainingJob:
    """The job a run folder was started with (its job.json), or a ValueError naming the file."""
    saved = read_json(Path(run_dir) / JOB_FILE, "run")
    if not isinstance(saved, dict) or "job" not in saved:
        raise ValueError(f"{Path(run_dir) / JOB_FILE}: not a t2p run's job.json")
    return TrainingJob.from_dict(saved["job"])


def _trainer(job: TrainingJob, manifest: dict, model_config: ModelConfig, train_config: TrainConfig,
             schedule_config: ScheduleConfig, callbacks: Sequence, progress=None) -> TorchTrainer:
    """The TorchTrainer of a run: its workers, the training shards as a Ray dataset, its run folder
    and callbacks, checkpoints kept, failures survived, and a resumed run's newest checkpoint."""
    out, data = Path(job.out), Path(job.data)
    # shard files in a new seeded order every epoch (execution), on top of the rows' local shuffle
    file_order = ray.data.FileShuffleConfig(seed=train_config.seed, reseed_after_execution=True)
    context = ray.data.DataContext.get_current()
    if hasattr(context, "use_datasource_v2"):
        # Ray 2.60's new read path lists files in a task that asks for a whole CPU whatever the read's
        # num_cpus: beside 1-CPU workers on a small machine it was never scheduled and training hung
        context.use_datasource_v2 = False
    # reading a shard is light work: a fraction of a CPU, so reads still fit beside the workers
    # (and beside a Tune trial's own reservation) on a small machine
    train_data = ray.data.read_parquet(shard_paths(data, "train"), num_cpus=DATA_CPUS, shuffle=file_order)
    resume_from = latest_checkpoint(out / job.name)
    if resume_from:  # read here first: a damaged one fails in a second, not after the workers started twice
        try:
            read_checkpoint(Path(resume_from), resume_from, map_location="cpu")
        except RuntimeError as error:
            raise ValueError(str(error)) from None
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.to_dict(), "model_config": asdict(model_config),
                           "train_config": train_config.to_dict(), "schedule_config": schedule_config.to_dict(),
                           "train_rows": manifest["counts"]["train"], "resume_from": resume_from,
                           "progress": progress},
        scaling_config=ray.train.ScalingConfig(num_workers=job.workers, use_gpu=job.gpu,
                                               resources_per_worker={"CPU": job.cpus_per_worker}),
        datasets={"train": train_data},
        # one worker reads the whole dataset itself: a split would only add a coordinator actor
        # (3 s of every run's start here) and hand the same rows over in the same order
        dataset_config=ray.train.DataConfig(datasets_to_split="all" if job.workers > 1 else []),
        run_config=ray.train.RunConfig(
            name=job.name, storage_path=str(out), callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=job.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=job.select_on,
                                                         checkpoint_score_order="min")),
    )


def calibrate(model_dir: Path, job: TrainingJob) -> dict:
    """The default steps and guidance saved with the model: the ones measured best on validation
    (`choose_generation_defaults`); the table goes to generation.json beside the model folder."""
    schedule, table = choose_generation_defaults(T2PModel.load(model_dir),
                                                 evenly_spaced(read_items(job.data, "validation"),
                                                               job.validation_items),
                                                 guidance=tuple(float(scale) for scale in job.calibration_guidance),
                                                 metric=job.select_on)
    save_schedule(model_dir, schedule)
    write_json(model_dir.parent / "generation.json", table)
    chosen = next(row for row in table if row["chosen"])
    return {"steps": chosen["steps"], "guidance": chosen["guidance"], "val_dtw_mje_chosen": chosen["val_dtw_mje"],
            "selected_on": job.select_on, "selected_score": chosen[job.select_on]}


def export_run(out: Path, result, select_on: str = DEFAULT_SELECTION) -> dict:
    """Copy the model of the checkpoint with the lowest `select_on` to out/best and the per-epoch
    metrics to out/metrics.csv."""
    best_checkpoint, best_metrics = min(result.best_checkpoints, key=lambda pair: pair[1][select_on])
    with best_checkpoint.as_directory() as directory:
        copy_folder(Path(directory) / "model", out / "best")
    with result.checkpoint.as_directory() as directory:  # the latest checkpoint holds every epoch
        history = read_json(Path(directory) / HISTORY_FILE, "training history")
    write_csv(out / "metrics.csv", history)
    columns = {name for row in history for name in row}
    return {key: value for key, value in best_metrics.items() if key in columns}


def model_config_from_manifest(manifest: dict, **overrides) -> ModelConfig:
    """A model config for prepared data: vocabulary, skeleton, notations, frame limit, statistics and
    output space come from the manifest; hyperparameters from `overrides` (any `ModelConfig` field).

    A `max_frames` below the data's longest sequence raises: training would cut those sequences."""
    limit = manifest["max_frames"]
    settings = dict(vocabulary=manifest["vocabulary"], skeleton=manifest["skeleton"], fps=manifest["fps"],
                    default_notation=manifest["notation"][0], notations=manifest["notation"],
                    max_frames=limit["limit"], output_normalization=manifest["output_normalization"],
                    output_canvas=manifest["output_canvas"], **manifest["statistics"])
    settings.update(overrides)
    if settings["max_frames"] < limit["longest"]:
        raise ValueError(f"max_frames {settings['max_frames']} is below the data's longest sequence "
                         f"({limit['longest']} frames), which training would cut: use max_frames >= "
                         f"{limit['longest']}, or prepare again with --max-frames {settings['max_frames']} to skip "
                         "the longer ones")
    return from_dict(ModelConfig, settings, what="model config")
