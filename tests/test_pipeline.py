"""The main job end to end through the CLI: prepare -> Ray Train -> resume -> generate.

The tests that only need *a* trained run share `trained_run` (conftest.py); each Ray path (train,
a worker failure, an interrupted and resumed run, a Tune sweep) runs once, and the sweep's first
trial, which trains what `trained_run` trained, is also the check that the same seed trains the
same model. Each test stays well inside pytest's 300 s timeout on 2 busy cores: the interrupted run
is a module fixture, a copy of `trained_run` that its own command extends until Ctrl-C stops it,
checked by one test and continued with --resume by the next (each Ray Train run costs 20 s here
whatever it trains)."""
import csv
import json

import pytest
import torch

from conftest import TINY, CommandRun, start_interruptible
from t2p.cli import main
from t2p.model import T2PModel
from t2p.pose import read_pose


def test_cli_prepares_trains_and_generates(real_corpus, trained_run, tmp_path):
    assert "prepared 32 sequences" in real_corpus.output
    assert "epoch 3/3: loss" in trained_run.output and "validation DTW-MJE" in trained_run.output
    run = trained_run.folder
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    # three tiny epochs already move the validation error off the static baseline (the refiner starts as
    # the identity, which scores exactly the static baseline)
    assert float(rows[-1]["val_dtw_mje"]) < float(rows[-1]["val_static_dtw_mje"])
    assert all(float(row["val_dtw_mje"]) > 0 for row in rows)
    model = T2PModel.load(run / "best")
    assert model.config.d_model == 32
    assert json.loads((run / "job.json").read_text())["train_config"]["epochs"] == 3

    out = tmp_path / "generated"
    assert main(["generate", "--model", str(run / "best"), "--text", "A", "--text", "B", "--language", "ase",
                 "--steps", "3", "-o", str(out)]) == 0
    files = sorted(out.glob("*.pose"))
    assert [f.name for f in files] == ["000-A.pose", "001-B.pose"]
    pose = read_pose(files[0])
    assert pose.body.data.shape[1:] == (1, 50, 3)
    assert pose.body.fps == 25


def test_two_workers_survive_a_failure_and_read_disjoint_shards(real_corpus, trained_run, tmp_path, capsys):
    from t2p.ray_train import TrainingJob, route_settings, run_training
    run = tmp_path / "run"
    model, train, schedule = route_settings({key: value for key, value in
                                             (pair.split("=") for pair in TINY[1::2])})
    # two 1-CPU workers on this 2-CPU Ray: they get a fraction each, so the shard reads can run
    job = TrainingJob(data=str(real_corpus.folder), out=str(run), workers=2, model=model, schedule=schedule,
                      train={**train, "epochs": 3, "batch_size": 4}, validate_every=1, calibrate=False)
    marker = tmp_path / "failed-once"
    best = run_training(job, inject_failure={"epoch": 2, "marker": str(marker)})
    assert marker.read_text() == "failed at epoch 2"  # the failure did happen ...
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]  # ... and the run went on from epoch 1's checkpoint
    # the two workers together read each of the 24 training rows once per epoch: disjoint, complete shards
    assert [int(row["train_examples"]) for row in rows] == [24, 24, 24]
    assert [int(row["train_distinct_examples"]) for row in rows] == [24, 24, 24]
    # epochs 0-1 ran from the start, epoch 2 in the run restarted from epoch 1's checkpoint
    assert [int(row["started_at_epoch"]) for row in rows] == [0, 0, 2]
    assert all(float(row["val_dtw_mje"]) > 0 for row in rows)  # validated once per epoch, on rank 0
    assert best["val_dtw_mje"] == min(float(row["val_dtw_mje"]) for row in rows)
    assert "each worker gets 0.875 CPU" in capsys.readouterr().out

    # one worker with the same global batch (2 x 4) on the same data (the shared run: 3 epochs of
    # batch 8, validated every epoch) validates about as well: the gradients of both workers were
    # averaged, not one copy trained and the other thrown away
    alone = min(float(row["val_dtw_mje"]) for row in csv.DictReader(open(trained_run.folder / "metrics.csv")))
    assert abs(best["val_dtw_mje"] - alone) <= 0.15 * alone, (best, alone)


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == f"t2p train: error: {tmp_path / 'nowhere'} has no manifest.json: run `t2p prepare` first"
    assert main(["train", "--set", "d_modle=3"]) == 2
    assert "unknown setting 'd_modle'" in capsys.readouterr().err
    assert main(["prepare", "--source", "index"]) == 2
    assert "needs --index" in capsys.readouterr().err



EXTENDED_EPOCHS = 7  # trained_run's 3 and four more: Ctrl-C comes after the first, with three (6 s or more) to go


@pytest.fixture(scope="module")
def interrupted_run(ray_session, trained_run, tmp_path_factory) -> CommandRun:
    """A copy of `trained_run`, extended to EXTENDED_EPOCHS by its own command given more epochs
    (the same command again continues the run in its folder), in a `t2p train` process stopped by
    Ctrl-C (SIGINT) after its first new epoch; `output` is what that process printed. The resume
    test below continues this run with --resume."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    folder = tmp_path_factory.mktemp("interrupted")
    run = folder / "run"
    shutil.copytree(trained_run.folder, run)
    given = trained_run.command
    command = [*given[:given.index("--out")], "--out", str(run), *given[given.index("--out") + 2:]]
    command[command.index("--epochs") + 1] = str(EXTENDED_EPOCHS)
    # on the session's Ray, as `t2p train` runs on a cluster given by RAY_ADDRESS (a Ray of its own
    # took 7 s to start and stop), with Ray Train's default poll (conftest shortens it; the driver's
    # setting reaches the run's controller): an epoch takes at least its 2 s, so Ctrl-C after the
    # first new one still finds three to go
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2"}
    log = folder / "train.log"
    with open(log, "w") as output:
        training = start_interruptible([str(Path(sys.executable).parent / "t2p"), *command], env=env,
                                       stdout=output, stderr=subprocess.DEVNULL)
    try:
        # the driver prints an epoch once Ray Train has its report, whose checkpoint is then saved
        deadline = time.time() + 180
        first_epoch = f"epoch 4/{EXTENDED_EPOCHS}: loss"
        while time.time() < deadline and first_epoch not in log.read_text():
            time.sleep(0.2)
        assert first_epoch in log.read_text(), "no epoch finished in time"
        os.killpg(training.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
        assert training.wait(timeout=120) != 0
    finally:
        if training.poll() is None:
            os.killpg(training.pid, signal.SIGKILL)
    return CommandRun(run, command, log.read_text())


def test_the_same_command_again_continues_a_run_and_refuses_other_settings(interrupted_run, capsys):
    """`t2p train` into a folder that holds a run, with the command that started it (more epochs
    allowed), continues that run from its last checkpoint; other settings are refused."""
    run = interrupted_run.folder
    assert f"continuing the run in {run}" in interrupted_run.output
    assert f"epoch 4/{EXTENDED_EPOCHS}: loss" in interrupted_run.output
    assert "epoch 1/" not in interrupted_run.output  # not started again
    # a run folder is continued only with the settings it was started with
    assert main([*interrupted_run.command, "--set", "learning_rate=0.1"]) == 2
    assert "continue it with --resume, or train into a new --out" in capsys.readouterr().err


def test_an_interrupted_run_resumes_from_its_last_checkpoint_refuses_other_settings_and_names_a_damaged_one(
        interrupted_run, capsys):
    """The run Ctrl-C stopped above, extended further by --resume: it goes on from the last
    checkpoint the stopped process saved instead of starting again, and metrics.csv lists every
    epoch once."""
    run = interrupted_run.folder
    epochs = EXTENDED_EPOCHS + 1
    assert main(["train", "--resume", str(run), "--epochs", str(epochs), "--set", "d_model=64"]) == 2
    assert "--set differ(s) from its job.json" in capsys.readouterr().err  # refused, not ignored
    assert main(["train", "--resume", str(run), "--epochs", str(epochs)]) == 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(row["epoch"]) for row in rows] == list(range(epochs))  # each epoch once
    restarted = [int(row["started_at_epoch"]) for row in rows]
    # trained_run's three epochs, the stopped process's from epoch 3 on, then --resume's from the
    # last checkpoint that process saved: continued each time, never started again
    assert restarted[:4] == [0, 0, 0, 3], restarted
    assert 3 < restarted[-1] < EXTENDED_EPOCHS, restarted

    # a damaged checkpoint is reported by its path, not skipped (which would restart from scratch)
    checkpoints = sorted(path for path in (run / "ray").glob("checkpoint_*") if path.is_dir())
    for checkpoint in checkpoints:
        (checkpoint / "train_state.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", str(epochs + 1)]) == 2
    error = capsys.readouterr().err
    assert "cannot be read" in error and any(str(checkpoint) in error for checkpoint in checkpoints), error


def test_tune_stops_a_trailing_trial_exports_the_best_and_the_same_seed_trains_the_same_model(
        ray_session, real_corpus, trained_run, tmp_path):
    from ray import tune

    from t2p.ray_train import TrainingJob, route_settings
    from t2p.train import TrainConfig
    from t2p.tune import run_sweep
    data, sweep = real_corpus.folder, tmp_path / "sweep"
    model, train, schedule = route_settings(dict(pair.split("=") for pair in TINY[1::2]))
    # the job `trained_run` ran (3 epochs of batch 8, validated every epoch), swept over the learning rate
    # (not calibrated after training: `trained_run` calibrated, which changes no weight)
    job = TrainingJob(data=str(data), out=str(sweep), model=model, schedule=schedule, validate_every=1,
                      train={**train, "epochs": 3, "batch_size": 8}, calibrate=False)
    learns = TrainConfig().learning_rate  # the default: the first trial trains what `trained_run` trained
    # the second trial barely learns: ASHA compares it with the first at the first validation and stops it
    summary = run_sweep(job, samples=1, space={"learning_rate": tune.grid_search([learns, 1e-7])})
    by_rate = {trial["config"]["learning_rate"]: trial for trial in summary["trials"]}
    assert by_rate[learns]["status"] == "completed" and by_rate[learns]["validations"] == 3
    assert by_rate[1e-7]["status"] == "stopped early" and by_rate[1e-7]["validations"] < 3
    assert summary["best_trial"] == by_rate[learns]["trial_id"]
    exported = T2PModel.load(sweep / "best").state_dict()
    trial_model = T2PModel.load(sweep / "trials" / summary["best_trial"] / "best").state_dict()
    for name, weights in trial_model.items():
        torch.testing.assert_close(exported[name], weights, msg=name)
    rows = list(csv.DictReader(open(sweep / "progress.csv")))
    assert {row["trial_id"] for row in rows} == {by_rate[learns]["trial_id"], by_rate[1e-7]["trial_id"]}
    assert (sweep / "progress.png").stat().st_size > 0 and (sweep / "trials.csv").is_file()

    # same data, same seed, one worker: the same model as `t2p train` trained (Ray Data's order and
    # every draw are seeded), though another Ray Train run, inside a Tune trial, trained it
    alone = T2PModel.load(trained_run.folder / "best").state_dict()
    assert alone.keys() == trial_model.keys()
    for name, weights in alone.items():
        torch.testing.assert_close(trial_model[name], weights, rtol=1e-5, atol=1e-6, msg=name)
