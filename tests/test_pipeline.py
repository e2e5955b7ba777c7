"""The main job end to end through the CLI: prepare -> Ray Train -> resume -> generate.

The tests that only need *a* trained run share `trained_run` (conftest.py). Each Ray Train run
costs 20 s here whatever it trains, so each Ray path runs once, several in one run: a two-worker run
loses a worker (restarted from its last checkpoint) and is stopped by Ctrl-C, then continued by the
same command (test_cluster runs the Tune sweep, as a submitted job)."""
import csv
import json
import os

import pytest
from conftest import BIN, TINY, CommandRun, start_interruptible

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


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == f"t2p train: error: {tmp_path / 'nowhere'} has no manifest.json: run `t2p prepare` first"
    assert main(["train", "--set", "d_modle=3"]) == 2
    assert "unknown setting 'd_modle'" in capsys.readouterr().err
    assert main(["prepare", "--source", "index"]) == 2
    assert "needs --index" in capsys.readouterr().err



EPOCHS = 6  # a worker lost in the second, Ctrl-C after the third, with three (3 s or more) to go


def _kill_a_training_worker() -> None:
    """SIGKILL to one Ray Train worker process (Ray titles it ray::RayTrainWorker...), as a machine
    lost mid-epoch."""
    import signal

    import psutil
    workers = [process for process in psutil.process_iter(["cmdline"])
               if (process.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker")]
    assert workers, "no Ray Train worker is running"
    os.kill(workers[0].pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def interrupted_run(ray_session, real_corpus, tmp_path_factory) -> CommandRun:
    """A two-worker `t2p train` process, one of whose worker processes is killed after its first epoch
    (Ray Train restarts the run from the last checkpoint), stopped by Ctrl-C (SIGINT) after its third;
    `output` is what that process printed. The tests below continue this run."""
    import signal
    import subprocess
    import time
    folder = tmp_path_factory.mktemp("interrupted")
    run = folder / "run"
    # two workers on this 2-CPU Ray, a fraction of a CPU each, so the shard reads can run (on a
    # RAY_ADDRESS cluster t2p asks for what it is told: an autoscaler may add nodes)
    command = ["train", "--data", str(real_corpus.folder), "--out", str(run), "--workers", "2",
               "--cpus-per-worker", "0.875", "--epochs", str(EPOCHS), "--batch-size", "4", "--validate-every", "1",
               *TINY]
    # on the session's Ray, as `t2p train` runs on a cluster given by RAY_ADDRESS (a Ray of its own
    # took 7 s to start and stop), with Ray Train's poll at 1 s (conftest shortens it to 0.2 s; the
    # driver's setting reaches the run's controller): an epoch takes at least its 1 s, so Ctrl-C after
    # the third still finds three to go, and the driver prints each at most 1 s after its report
    env = {**os.environ, "RAY_ADDRESS": ray_session.gcs, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1"}
    log = folder / "train.log"

    def wait_for(line: str) -> None:
        deadline = time.time() + 180
        while time.time() < deadline and line not in log.read_text():
            time.sleep(0.1)
        assert line in log.read_text(), f"no {line!r} in time:\n{log.read_text()[-3000:]}"

    with open(log, "w") as output:
        training = start_interruptible([str(BIN / "t2p"), *command], env=env,
                                       stdout=output, stderr=subprocess.DEVNULL)
    try:
        # the driver prints an epoch once Ray Train has its report, whose checkpoint is then saved
        wait_for(f"epoch 1/{EPOCHS}: loss")
        _kill_a_training_worker()
        wait_for(f"epoch 3/{EPOCHS}: loss")  # reported after the restart: two reports were not yet made
        os.killpg(training.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
        assert training.wait(timeout=120) != 0
    finally:
        if training.poll() is None:
            os.killpg(training.pid, signal.SIGKILL)
    return CommandRun(run, command, log.read_text())


def test_the_same_command_again_continues_a_run_that_lost_a_worker_and_was_stopped(interrupted_run, capsys):
    """`t2p train` into a folder that holds a run, with the command that started it (more epochs
    allowed), continues that run from its last checkpoint; other settings are refused. The run's
    two workers read disjoint, complete shards in every epoch, also after the restart."""
    run = interrupted_run.folder
    assert f"epoch 3/{EPOCHS}: loss" in interrupted_run.output and f"epoch {EPOCHS}/{EPOCHS}" not in interrupted_run.output
    # a run folder is continued only with the settings it was started with
    assert main([*interrupted_run.command, "--set", "learning_rate=0.1"]) == 2
    assert "continue it with --resume, or train into a new --out" in capsys.readouterr().err

    assert main(interrupted_run.command) == 0
    printed = capsys.readouterr().out
    assert f"continuing the run in {run}" in printed and "epoch 1/" not in printed  # not started again
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(row["epoch"]) for row in rows] == list(range(EPOCHS))  # each epoch once
    started = [int(row["started_at_epoch"]) for row in rows]
    # three runs, each from the last checkpoint before it: the first process from scratch, its
    # restart after the lost worker (not from 0), and this command
    assert started == sorted(started) and started[0] == 0 and len(set(started)) == 3, started
    # the two workers together read each of the 24 training rows once per epoch: disjoint, complete shards
    assert [int(row["train_examples"]) for row in rows] == [24] * EPOCHS
    assert [int(row["train_distinct_examples"]) for row in rows] == [24] * EPOCHS
    assert all(float(row["val_dtw_mje"]) > 0 for row in rows)  # validated once per epoch, on rank 0
    best = min(rows, key=lambda row: float(row["val_dtw_mje"]))
    assert f"best epoch {best['epoch']}: validation DTW-MJE {float(best['val_dtw_mje']):.4f}" in printed


def test_resume_refuses_other_settings_and_names_a_damaged_checkpoint(interrupted_run, capsys):
    """`--resume RUN` continues RUN as its job.json says (test above: the same mechanism); given other
    settings, it refuses them instead of ignoring them, and a damaged checkpoint is reported by its
    path, not skipped (which would restart from scratch)."""
    run = interrupted_run.folder
    assert main(["train", "--resume", str(run), "--epochs", str(EPOCHS + 1), "--set", "d_model=64"]) == 2
    assert "--set differ(s) from its job.json" in capsys.readouterr().err  # refused, not ignored
    checkpoints = sorted(path for path in (run / "ray").glob("checkpoint_*") if path.is_dir())
    for checkpoint in checkpoints:
        (checkpoint / "train_state.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--resume", str(run), "--epochs", str(EPOCHS + 1)]) == 2
    captured = capsys.readouterr()
    assert f"resuming {run} (epochs: {EPOCHS + 1})" in captured.out
    assert "cannot be read" in captured.err and any(str(checkpoint) in captured.err for checkpoint in checkpoints), captured.err
