"""What a training run shows while it runs: each validated epoch printed on the driver
(`EpochPrinter`), and Weights & Biases when asked for (`wandb_run`)."""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import ray.train

from t2p.training.config import TrainingJob


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


def wandb_logger(job: TrainingJob, config: dict):
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
