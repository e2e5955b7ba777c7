"""What a training run shows while it runs: each validated epoch printed on the driver
(`EpochPrinter`), and Weights & Biases when asked for (`wandb_run`)."""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import ray.train
from ray.exceptions import RayActorError

from t2p.training.config import TrainingJob


class EpochPrinter(ray.train.UserCallback):
    """Shows a run's progress on the driver: on a terminal, a bar of epochs with its ETA and the
    last validation; otherwise (CI, `ray job submit`) one line per validated epoch.

    Validations arrive through `after_report`, which runs in Ray Train's controller, an actor whose
    output stays in Ray's logs (t2p starts Ray with log_to_driver=False: worker output printed as it
    comes floods the console), and Train V2 has no callback that runs on the driver, where `fit`
    blocks. So the controller puts rank 0's report on a Ray queue, which a driver thread shows; rank
    0 puts each epoch's end there too (`queue`, handed to the workers)."""

    def __init__(self, epochs: int, bar: bool | None = None):
        from ray.util.queue import Queue
        self.epochs = epochs
        self.queue = Queue(actor_options={"num_cpus": 0})  # no CPU: never waits behind the workers
        self.bar_wanted = sys.stderr.isatty() if bar is None else bar
        self.bar = None

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        self.queue.put({**metrics[0], "kind": VALIDATED})  # rank 0 validated; every report is a validated epoch

    @contextmanager
    def printing(self, interval: float = 1.0) -> Iterator[None]:
        """While the block runs (`fit`), and what is left when it ends; then the queue is closed."""
        from tqdm import tqdm
        done = threading.Event()
        if self.bar_wanted:
            self.bar = tqdm(total=self.epochs, desc="train", unit="epoch", leave=True, dynamic_ncols=True)

        def show_reports() -> None:
            while not done.wait(interval):
                self._show_waiting()

        thread = threading.Thread(target=show_reports, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            self._show_waiting()  # reported after the thread's last look
            if self.bar is not None:
                self.bar.close()
            try:
                self.queue.shutdown()
            except RayActorError:
                pass  # already gone with the cluster

    def _show_waiting(self) -> None:
        # how many first, then exactly those: a blocking get that times out raises inside the actor
        try:
            waiting = self.queue.qsize()
            reports = self.queue.get_nowait_batch(waiting) if waiting else []
        except RayActorError:  # the cluster went away: the run's own error says so, not this one
            return
        for metrics in reports:
            if self.bar is not None:
                self.bar.n = max(self.bar.n, int(metrics["epoch"]) + 1)
                if metrics["kind"] == VALIDATED:
                    self.bar.set_postfix_str(_validation_summary(metrics), refresh=False)
                self.bar.refresh()
            elif metrics["kind"] == VALIDATED:
                self.print_epoch(metrics)

    def print_epoch(self, metrics: dict) -> None:
        print(f"epoch {int(metrics['epoch']) + 1}/{self.epochs}: loss {metrics.get('train_loss', float('nan')):.4f}, "
              f"validation DTW-MJE {metrics.get('val_dtw_mje', float('nan')):.4f} "
              f"(static {metrics.get('val_static_dtw_mje', float('nan')):.4f}), "
              f"length error {metrics.get('val_length_error', float('nan')):.2f} frames; from the neutral start "
              f"DTW-MJE {metrics.get('val_neutral_dtw_mje', float('nan')):.4f}, "
              f"handshape {metrics.get('val_neutral_handshape', float('nan')):.3f}", flush=True)


VALIDATED, EPOCH = "validated", "epoch"


def epoch_done(queue, metrics: dict) -> None:
    """Rank 0's end of an epoch, for the driver's bar (a validated epoch comes through its report)."""
    try:
        queue.put_nowait({"kind": EPOCH, "epoch": metrics["epoch"], "train_loss": metrics.get("train_loss")})
    except RayActorError:
        pass  # the driver has gone: training goes on, unseen


def _validation_summary(metrics: dict) -> str:
    return (f"loss {metrics.get('train_loss', float('nan')):.3f}, val DTW-MJE {metrics.get('val_dtw_mje', float('nan')):.4f}"
            f", neutral hand {metrics.get('val_neutral_handshape', float('nan')):.3f}")


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
