"""Checkpoints of a training run: what a worker saves at each validation (the exported model, the
train state and every epoch's metrics) and restores from, Ray Train's own or, for a run stopped
before Ray wrote its snapshot, the newest in the run folder."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import ray.train
import torch

from t2p.config import read_json, write_json
from t2p.model import T2PModel
from t2p.training.loop import Learner

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
        history = read_json(directory / HISTORY_FILE, "training history")
        if load is not None:
            load(state["weights"])
    except (OSError, EOFError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as error:
        raise RuntimeError(f"{CHECKPOINT_ERROR} {name} cannot be read ({type(error).__name__}: "
                           f"{str(error)[:200]}); move it away to resume from the one before, or train "
                           "into a new --out") from None
    return state, history


def save_checkpoint(directory: Path, learner: Learner, epoch: int, history: list[dict]) -> ray.train.Checkpoint:
    """The exported model (model/, what `export_run` copies to best/) and what resuming needs."""
    learner.exported.save(directory / "model")
    torch.save({"epoch": epoch, **learner.state_dict()}, directory / TRAIN_STATE_FILE)
    # the whole history travels with each checkpoint: Ray keeps only the best few
    write_json(directory / HISTORY_FILE, history)
    return ray.train.Checkpoint.from_directory(directory)


def latest_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint folder of a run, or None. Ray Train restores a run from its own
    snapshot, which it writes when the run ends; a run stopped before (Ctrl-C, a lost machine) has
    checkpoints but no snapshot, and would start again from nothing."""
    folders = sorted(path for path in Path(run_dir).glob("checkpoint_*") if path.is_dir())  # named by time
    return str(folders[-1]) if folders else None


def worker_error(error: BaseException, run_dir: Path) -> BaseException:
    """What went wrong in a run, the real cause first, as one ValueError line for the CLI: t2p's own
    message (e.g. an unreadable checkpoint, by path), a run folder that cannot be written, or a Ray
    cluster that went away; anything else as Ray raised it."""
    text = str(error)
    for line in text.splitlines():
        if CHECKPOINT_ERROR in line:
            return ValueError(line[line.index(CHECKPOINT_ERROR):])
    for line in text.splitlines():
        if any(mark in line for mark in ("PermissionError", "Read-only file system", "No space left on device")):
            cause = line.split(":", 1)[-1].strip() if "Error" in line.split(":", 1)[0] else line.strip()
            return ValueError(f"cannot write to {run_dir}: {cause[:200]}")
    if _cluster_went_away(error):
        return ValueError(f"the Ray cluster went away during training ({type(error).__name__}); re-run the same "
                          "command to resume from the last checkpoint")
    return error


def _cluster_went_away(error: BaseException) -> bool:
    """Whether an error (or its cause) is Ray losing its processes: the head node killed or stopped."""
    from ray.exceptions import ActorDiedError, RayActorError, RaySystemError
    while error is not None:
        if isinstance(error, (ActorDiedError, RayActorError, RaySystemError, ConnectionError)):
            return True
        error = error.__cause__ or error.__context__
    return False
