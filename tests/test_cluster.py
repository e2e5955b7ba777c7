"""The cluster path as a team uses it: cluster.yaml checked by Ray's own schema, and the test session's
Ray (a head with the job API) running the job entrypoints through `ray job submit --working-dir .`
(test_serve starts the Serve config through `serve run` on the same Ray)."""
from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BIN, TINY, venv_environment

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_passes_rays_own_schema():
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on any field Ray does not know
    assert config["available_node_types"]["gpu_worker"]["resources"]["GPU"] >= 1
    assert "." in config["file_mounts"].values()  # the project reaches every node
    assert not any("|| true" in command for command in config["setup_commands"])  # failures are loud
    broken = dict(config, setup_comands=config["setup_commands"])  # a typo must not pass
    with pytest.raises(Exception, match="setup_comands"):
        validate_config(prepare_config(broken))


def _submit(command: list[str], env: dict, timeout: int = 280) -> str:
    deadline = time.time() + 90
    while True:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        # a head just started may not have its job agent up yet; Ray's answer is "try again later"
        if "No available agent to submit job" not in done.stdout + done.stderr or time.time() > deadline:
            break
        time.sleep(3)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_a_sweep_submitted_as_a_job_stops_a_trailing_trial_and_trains_what_t2p_train_trains(
        ray_session, real_corpus, trained_run, tmp_path):
    """`ray job submit --working-dir .` of prepare and a Tune sweep, as a team runs them on a cluster
    (each Ray Train run costs 15 s here, so the sweep is also this suite's Tune test)."""
    from t2p.model import T2PModel
    from t2p.training import TrainConfig
    data, sweep = tmp_path / "data", tmp_path / "sweep"
    index = real_corpus.folder.parent / "index.jsonl"  # the recordings `trained_run` trained on
    prepare = [sys.executable, "jobs/prepare.py", "--source", "index", "--index", str(index), "--out", str(data),
               "--split", "0.75,0.25,0"]
    # the job `trained_run` ran (3 epochs of batch 8, validated every epoch), at two learning rates: the
    # default, so that the first trial trains what `trained_run` trained, and one that barely learns,
    # which ASHA compares with the first at the first validation and stops
    learns = TrainConfig().learning_rate
    tune = [sys.executable, "jobs/tune.py", "--data", str(data), "--out", str(sweep), "--samples", "1",
            "--grid", f"learning_rate={learns},1e-07", "--epochs", "3", "--batch-size", "8", "--validate-every", "1",
            *TINY]
    # the job's `python` is this environment's (`venv_environment`); both entrypoints in one job, one
    # after the other, as a pipeline is submitted (each submission costs a CLI, an upload of the
    # working dir and a job supervisor)
    output = _submit([str(BIN / "ray"), "job", "submit", "--address", ray_session.jobs, "--working-dir", ".",
                      "--runtime-env-json", json.dumps({"env_vars": {"OMP_NUM_THREADS": "1"}}), "--",
                      "bash", "-c", f"{shlex.join(prepare)} && {shlex.join(tune)}"], venv_environment())
    assert "succeeded" in output.lower()
    assert "prepared 32 sequences" in output  # the job's output, both commands' ...
    assert json.loads((data / "manifest.json").read_text())["counts"]["train"] == 24  # ... and what they wrote
    assert "<- best" in output

    summary = json.loads((sweep / "sweep.json").read_text())
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
    # same recordings prepared again, same seed, one worker: the same model as `t2p train` trained in
    # this process (Ray Data's order and every draw are seeded), though a Tune trial in a job's
    # driver trained it
    alone = T2PModel.load(trained_run.folder / "best").state_dict()
    assert alone.keys() == trial_model.keys()
    for name, weights in alone.items():
        torch.testing.assert_close(trial_model[name], weights, rtol=1e-5, atol=1e-6, msg=name)
