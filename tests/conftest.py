"""Shared fixtures. Real data lives in tests/data (copied from shared/data, provenance in SOURCES.md)."""
from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from ports import free_port

DATA = Path(__file__).parent / "data"
POSES = DATA / "poses"
ALL_POSE_FILES = sorted(POSES.glob("*/*.pose"))
BIN = Path(sys.executable).parent  # this environment's scripts: t2p, ray, serve

os.environ.setdefault("RAY_ACCEPT_CALLABLE_NONE", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Ray Train's controller polls its workers every 2 s by default, and a report waits for that poll: a
# tiny test epoch lasted 2 s whatever it computed, and each run's end waited for one more poll. Set
# before Ray starts, so every Ray of the session (ray_session, the cluster of test_cluster) has it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# the watcher of cloud preemption notices is an actor of its own, started with every run
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@dataclass
class LocalRay:
    """The test session's Ray: where drivers connect (RAY_ADDRESS, `serve run --address`) and its
    dashboard (host:port; the state API's address)."""
    gcs: str
    dashboard: str

    @property
    def jobs(self) -> str:
        """The job API's address (`ray job submit --address`)."""
        return f"http://{self.dashboard}"


@pytest.fixture(scope="session")
def ray_session() -> LocalRay:
    """One local Ray instance for the whole test session (startup costs ~10 s), with its dashboard on
    loopback for the job API: test_cluster submits its job to this Ray, as a team submits to a
    running head (a second Ray of its own cost 8 s to start, 2 s to stop and a core's share while up)."""
    import ray
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
                 log_to_driver=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    node = ray._private.worker.global_worker.node
    yield LocalRay(gcs=node.gcs_address, dashboard=node.webui_url)
    ray.shutdown()


TINY = ["--set", "d_model=32", "--set", "heads=2", "--set", "text_layers=1", "--set", "refiner_layers=1",
        "--set", "steps=2"]


@dataclass
class CommandRun:
    """What a CLI command made and printed."""
    folder: Path
    command: list[str]
    output: str


def run_command(command: list[str]) -> str:
    """`t2p COMMAND` in this process, its exit code checked; returns what it printed (the epoch lines
    included: the driver prints them from a thread, into the same sys.stdout)."""
    from t2p.cli import main
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(command)
    assert code == 0, printed.getvalue()
    return printed.getvalue()


def venv_environment(**variables: str) -> dict:
    """This process's environment for a command that connects where it is told (no RAY_ADDRESS),
    with this environment's scripts first on PATH, as a node's own install is on a cluster (CI does
    not activate the venv), and `variables` added."""
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **variables}
    environment.pop("RAY_ADDRESS", None)
    return environment


def start_interruptible(command: list[str], **options) -> subprocess.Popen:
    """`command` started in a process group of its own that Ctrl-C (SIGINT to the group) reaches as
    it does from a terminal. A child inherits the signal mask of the thread that starts it, and a
    blocked SIGINT stays blocked through exec (Ray blocks it in every process it starts, and some
    shells that run the suite have it blocked): `serve run`, which never unblocks it, then slept on
    through Ctrl-C until it was killed. An ignored SIGINT is inherited too. So for the start, SIGINT
    is unblocked and handled here (a handled signal starts at its default in the child)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        return subprocess.Popen(command, start_new_session=True, **options)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def real_corpus(tmp_path_factory) -> CommandRun:
    """32 real fingerspelling recordings (ase and gsg) as a generic index, prepared once by `t2p prepare`
    (24 train, 8 validation rows). Training only reads it: every test may share it."""
    from t2p.data.sources import fingerspelling_items
    folder = tmp_path_factory.mktemp("corpus")
    items = [item for item in fingerspelling_items() if item.language in ("ase", "gsg")][:32]
    index = folder / "index.jsonl"
    index.write_text("\n".join(json.dumps({"path": str(item.path), "text": item.text, "notation": "text",
                                           "language": item.language}) for item in items))
    command = ["prepare", "--source", "index", "--index", str(index), "--out", str(folder / "data"),
               "--split", "0.75,0.25,0"]
    return CommandRun(folder / "data", command, run_command(command))


@pytest.fixture(scope="session")
def trained_run(ray_session, real_corpus, tmp_path_factory) -> CommandRun:
    """One tiny model trained on `real_corpus` by `t2p train` (Ray Train, one worker, validated every
    epoch, steps and guidance calibrated), for the tests that need *a* trained run. Read it, never
    train into it: copy what a test changes."""
    run = tmp_path_factory.mktemp("trained") / "run"
    command = ["train", "--data", str(real_corpus.folder), "--out", str(run), "--epochs", "3", "--batch-size", "8",
               "--validate-every", "1", *TINY]
    return CommandRun(run, command, run_command(command))


@pytest.fixture(scope="module", autouse=True)
def _no_idle_refinement_threads():
    """After each module, the servers and batchers its tests made in this process are collected:
    their refinement threads end with them. An idle thread that has run torch keeps its thread pool,
    which made the training of later modules 2-3x slower on 2 cores."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


def tiny_model_config(vocabulary, skeleton, **overrides):
    from t2p.model import ModelConfig
    settings = dict(vocabulary=list(vocabulary.tokens), skeleton=skeleton.to_dict(), d_model=32, heads=2,
                    text_layers=1, refiner_layers=2, dropout=0.0, max_frames=128)
    settings.update(overrides)
    return ModelConfig(**settings)


def six_real_signs():
    """The six real labelled recordings of tests/data: four Swiss-German glosses (text) and two
    SignWriting samples (ASL, Czech SL), each on the upper-body skeleton, with its text."""
    import csv

    from t2p.notation import SignText
    from t2p.pose import Skeleton, load_sequence, read_pose

    skeleton = Skeleton.from_pose(read_pose(POSES / "lexicon_sgg" / "essen.pose"))
    signs, sequences = [], []
    for row in csv.DictReader(open(POSES / "lexicon_sgg" / "index.csv", encoding="utf-8")):
        signs.append(SignText(row["words"], "text", row["signed_language"]))
        sequences.append(load_sequence(POSES / "lexicon_sgg" / row["path"], skeleton))
    for row in csv.DictReader(open(POSES / "signwriting_samples" / "index.csv", encoding="utf-8")):
        signs.append(SignText(row["text"], "signwriting", row["videoLanguage"]))
        sequences.append(load_sequence(POSES / "signwriting_samples" / row["pose"], skeleton))
    return skeleton, signs, sequences


# 600 reproduce every assertion of test_quality and test_compose (450 did not; 900 took 35 s of the suite)
OVERFIT_ITERATIONS = 600


def train_six_real_signs(seed: int, iterations: int = OVERFIT_ITERATIONS):
    """A small model fitted to the six real signs (text alone decides which): (model, signs, sequences)."""
    from t2p.data.statistics import statistics
    from t2p.model import T2PModel
    from t2p.notation import Vocabulary
    from t2p.training import TrainConfig, fit
    from t2p.training.batches import Example

    skeleton, signs, sequences = six_real_signs()
    torch.manual_seed(seed)
    vocabulary = Vocabulary.build(signs)
    config = tiny_model_config(vocabulary, skeleton, d_model=64, heads=4, text_layers=1, refiner_layers=2,
                               **statistics([(s.data, s.confidence) for s in sequences]))
    model = T2PModel(config)
    examples = [Example(vocabulary.encode(sign), s) for sign, s in zip(signs, sequences)]
    fit(model, examples, TrainConfig(batch_size=6, text_dropout=0.0, learning_rate=3e-3, warmup_steps=30,
                                     seed=seed), iterations=iterations)
    return model, signs, sequences


@pytest.fixture(scope="session")
def six_real_signs_model():
    return train_six_real_signs(seed=0)
