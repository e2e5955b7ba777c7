"""The main job end to end through the CLI: prepare -> Ray Train -> resume -> generate."""
import csv
import json

import pytest
import torch

from t2p.cli import main
from t2p.data import fingerspelling_items
from t2p.model import T2PModel
from t2p.pose import read_pose

TINY = ["--set", "d_model=32", "--set", "heads=2", "--set", "text_layers=1", "--set", "refiner_layers=1",
        "--set", "steps=2"]


@pytest.fixture(scope="module")
def real_index(tmp_path_factory):
    """32 real fingerspelling recordings (ase and gsg) as a generic index: a small, real corpus."""
    folder = tmp_path_factory.mktemp("corpus")
    items = [item for item in fingerspelling_items() if item.language in ("ase", "gsg")][:32]
    index = folder / "index.jsonl"
    index.write_text("\n".join(json.dumps({"path": str(item.path), "text": item.text, "notation": "text",
                                           "language": item.language}) for item in items))
    return index


def test_cli_prepares_trains_resumes_and_generates(ray_session, real_index, tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", "--source", "index", "--index", str(real_index), "--out", str(data),
                 "--split", "0.75,0.25,0"]) == 0
    assert "prepared 32 sequences" in capsys.readouterr().out

    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "2", "--batch-size", "4", *TINY]) == 0
    assert "validation DTW-MJE" in capsys.readouterr().out
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    # two tiny epochs already move the validation error off the static baseline (the refiner starts as
    # the identity, which scores exactly the static baseline)
    assert float(rows[-1]["val_dtw_mje"]) < float(rows[-1]["val_static_dtw_mje"])
    assert all(float(row["val_dtw_mje"]) > 0 for row in rows)
    model = T2PModel.load(run / "best")
    assert model.config.d_model == 32

    # same data, same seed, one worker: the same model (Ray Data's order and every draw are seeded)
    again = tmp_path / "again"
    assert main(["train", "--data", str(data), "--out", str(again), "--epochs", "2", "--batch-size", "4", *TINY]) == 0
    retrained = T2PModel.load(again / "best").state_dict()
    for name, weights in model.state_dict().items():
        torch.testing.assert_close(retrained[name], weights, rtol=1e-5, atol=1e-6, msg=name)
    assert json.loads((run / "job.json").read_text())["train_config"]["epochs"] == 2

    assert main(["train", "--resume", str(run), "--epochs", "3", "--set", "d_model=64"]) == 2
    assert "--set differ(s) from its job.json" in capsys.readouterr().err  # refused, not ignored
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]  # continued, not restarted

    # a damaged checkpoint is reported by its path, not skipped (which would restart from scratch)
    checkpoints = sorted(path for path in (run / "ray").glob("checkpoint_*") if path.is_dir())
    for checkpoint in checkpoints:
        (checkpoint / "train_state.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "4"]) == 2
    error = capsys.readouterr().err
    assert "cannot be read" in error and any(str(checkpoint) in error for checkpoint in checkpoints), error

    out = tmp_path / "generated"
    assert main(["generate", "--model", str(run / "best"), "--text", "A", "--text", "B", "--language", "ase",
                 "--steps", "3", "-o", str(out)]) == 0
    files = sorted(out.glob("*.pose"))
    assert [f.name for f in files] == ["000-A.pose", "001-B.pose"]
    pose = read_pose(files[0])
    assert pose.body.data.shape[1:] == (1, 50, 3)
    assert pose.body.fps == 25


def test_two_workers_survive_a_failure_and_read_disjoint_shards(ray_session, real_index, tmp_path, capsys):
    from t2p.ray_train import TrainingJob, route_settings, run_training
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", "--source", "index", "--index", str(real_index), "--out", str(data),
                 "--split", "0.75,0.25,0"]) == 0
    model, train, schedule = route_settings({key: value for key, value in
                                             (pair.split("=") for pair in TINY[1::2])})
    # two 1-CPU workers on this 2-CPU Ray: they get a fraction each, so the shard reads can run
    job = TrainingJob(data=str(data), out=str(run), workers=2, model=model, schedule=schedule,
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

    # one worker with the same global batch (2 x 4) on the same data validates about as well: the
    # gradients of both workers were averaged, not one copy trained and the other thrown away
    single = TrainingJob(data=str(data), out=str(tmp_path / "single"), workers=1, model=model, schedule=schedule,
                         train={**train, "epochs": 3, "batch_size": 8}, validate_every=1, calibrate=False)
    alone = run_training(single)
    assert abs(best["val_dtw_mje"] - alone["val_dtw_mje"]) <= 0.15 * alone["val_dtw_mje"], (best, alone)


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == f"t2p train: error: {tmp_path / 'nowhere'} has no manifest.json: run `t2p prepare` first"
    assert main(["train", "--set", "d_modle=3"]) == 2
    assert "unknown setting 'd_modle'" in capsys.readouterr().err
    assert main(["prepare", "--source", "index"]) == 2
    assert "needs --index" in capsys.readouterr().err



def test_interrupted_training_continues_when_the_same_command_runs_again(ray_session, real_index, tmp_path, capsys):
    """Ctrl-C (SIGINT) during `t2p train`, then the same command: the run goes on from its last
    checkpoint instead of starting again, and metrics.csv lists every epoch once."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", "--source", "index", "--index", str(real_index), "--out", str(data),
                 "--split", "0.75,0.25,0"]) == 0
    command = ["train", "--data", str(data), "--out", str(run), "--epochs", "12", "--batch-size", "4",
               "--validate-every", "1", *TINY]
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    log = tmp_path / "train.log"
    with open(log, "w") as output:
        training = subprocess.Popen([str(Path(sys.executable).parent / "t2p"), *command], env=env,
                                    stdout=output, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # the driver prints an epoch once Ray Train has its report, whose checkpoint is then saved
        deadline = time.time() + 180
        while time.time() < deadline and "epoch 1/12: loss" not in log.read_text():
            time.sleep(0.5)
        assert "epoch 1/12: loss" in log.read_text(), "no epoch finished in time"
        os.killpg(training.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
        assert training.wait(timeout=120) != 0
    finally:
        if training.poll() is None:
            os.killpg(training.pid, signal.SIGKILL)
    capsys.readouterr()
    assert main(command) == 0
    assert f"continuing the run in {run}" in capsys.readouterr().out
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(row["epoch"]) for row in rows] == list(range(12))
    restarted = [int(row["started_at_epoch"]) for row in rows]
    assert restarted[0] == 0 and 0 < restarted[-1] < 12  # resumed, not started again

    # a run folder is continued only with the settings it was started with
    assert main([*command, "--set", "learning_rate=0.1"]) == 2
    assert "continue it with --resume, or train into a new --out" in capsys.readouterr().err


def test_tune_stops_a_trailing_trial_and_exports_the_best(ray_session, real_index, tmp_path):
    from ray import tune

    from t2p.ray_train import TrainingJob, route_settings
    from t2p.tune import run_sweep
    data, sweep = tmp_path / "data", tmp_path / "sweep"
    assert main(["prepare", "--source", "index", "--index", str(real_index), "--out", str(data),
                 "--split", "0.75,0.25,0"]) == 0
    model, train, schedule = route_settings(dict(pair.split("=") for pair in TINY[1::2]))
    job = TrainingJob(data=str(data), out=str(sweep), model=model, schedule=schedule, validate_every=1,
                      train={**train, "epochs": 3, "batch_size": 8})
    # the second trial barely learns: ASHA compares it with the first at the first validation and stops it
    summary = run_sweep(job, samples=1, space={"learning_rate": tune.grid_search([3e-3, 1e-7])})
    by_rate = {trial["config"]["learning_rate"]: trial for trial in summary["trials"]}
    assert by_rate[3e-3]["status"] == "completed" and by_rate[3e-3]["validations"] == 3
    assert by_rate[1e-7]["status"] == "stopped early" and by_rate[1e-7]["validations"] < 3
    assert summary["best_trial"] == by_rate[3e-3]["trial_id"]
    exported = T2PModel.load(sweep / "best").state_dict()
    trial_model = T2PModel.load(sweep / "trials" / summary["best_trial"] / "best").state_dict()
    for name, weights in trial_model.items():
        torch.testing.assert_close(exported[name], weights, msg=name)
    rows = list(csv.DictReader(open(sweep / "progress.csv")))
    assert {row["trial_id"] for row in rows} == {by_rate[3e-3]["trial_id"], by_rate[1e-7]["trial_id"]}
    assert (sweep / "progress.png").stat().st_size > 0 and (sweep / "trials.csv").is_file()
