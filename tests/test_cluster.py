"""The cluster path as a team uses it: cluster.yaml checked by Ray's own schema, and a separate local
Ray cluster (`ray start --head`) running the job entrypoints through `ray job submit --working-dir .`
and the Serve config through `serve run`."""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import start_interruptible
from t2p.data import fingerspelling_items
from ports import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


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


def _run(command: list[str], env: dict, timeout: int = 300) -> str:
    deadline = time.time() + 90
    while True:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        # a head just started may not have its job agent up yet; Ray's answer is "try again later"
        if "No available agent to submit job" not in done.stdout + done.stderr or time.time() > deadline:
            break
        time.sleep(3)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture
def local_cluster(tmp_path):
    """A Ray head started by `ray start --head` in its own temp dir; its processes are stopped by that
    dir, so the test session's own Ray instance is left alone."""
    temp_dir = Path("/tmp") / f"t2p-cluster-{os.getpid()}"  # short: Ray's socket paths have a length limit
    gcs_port, dashboard_port = free_port(), free_port()
    # the job's `python` is this environment's, as a node's own install is on a real cluster (CI does
    # not activate the venv)
    # token authentication off: a cluster of this test only, on loopback (the test session's own Ray
    # may have enabled tokens in the environment)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_TRAIN_V2_ENABLED": "1", "RAY_AUTH_MODE": "disabled",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    # in a process group of its own, which every process of this cluster inherits: the dashboard
    # agent and the client server do not name temp_dir, and left running they took a third of a core
    # from every test after this one
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", f"--port={gcs_port}", "--num-cpus=2",
                             "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    output, _ = head.communicate(timeout=300)
    try:
        assert head.returncode == 0, f"ray start failed:\n{output[-3000:]}"
        yield {"jobs": f"http://127.0.0.1:{dashboard_port}", "gcs": f"127.0.0.1:{gcs_port}", "env": env}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        subprocess.run(["pkill", "-TERM", "-f", str(temp_dir)], check=False)
        time.sleep(2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-KILL", "-f", str(temp_dir)], check=False)


def test_jobs_submitted_to_a_cluster_prepare_train_and_serve(local_cluster, tmp_path):
    items = [item for item in fingerspelling_items() if item.language == "ase"][:16]
    index = tmp_path / "index.jsonl"
    index.write_text("\n".join(json.dumps({"path": str(item.path), "text": item.text, "notation": "text",
                                           "language": item.language}) for item in items))
    data, run = tmp_path / "data", tmp_path / "run"
    env, jobs = local_cluster["env"], local_cluster["jobs"]
    prepare = ["python", "jobs/prepare.py", "--source", "index", "--index", str(index), "--out", str(data),
               "--split", "0.75,0.25,0"]
    train = ["python", "jobs/train.py", "--data", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "4",
             "--set", "d_model=32", "--set", "heads=2", "--set", "text_layers=1", "--set", "refiner_layers=1",
             "--set", "steps=2"]
    # both entrypoints in one job, one after the other, as a pipeline is submitted (each submission
    # costs a CLI, an upload of the working dir and a job supervisor: 8 s here)
    output = _run([str(BIN / "ray"), "job", "submit", "--address", jobs, "--working-dir", ".", "--",
                   "bash", "-c", f"{shlex.join(prepare)} && {shlex.join(train)}"], env)
    assert "succeeded" in output.lower()
    assert "prepared 16 sequences" in output  # the job's output, both commands' ...
    assert json.loads((data / "manifest.json").read_text())["counts"]["train"] == 12  # ... and what they wrote
    assert (run / "best" / "model.safetensors").is_file()

    # serve run with the repository's own config, pointed at this model and a free port
    port = free_port()
    config = yaml.safe_load((REPO / "serve_configs" / "local.yaml").read_text())
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["model"] = str(run / "best")
    serve_config = tmp_path / "serve.yaml"
    serve_config.write_text(yaml.safe_dump(config))
    # its output in a log, and its threads' stacks dumped there on SIGABRT (PYTHONFAULTHANDLER), for
    # when it does not exit on Ctrl-C (below)
    log = tmp_path / "serve.log"
    with open(log, "w") as output:
        server = start_interruptible([str(BIN / "serve"), "run", "--address", local_cluster["gcs"], str(serve_config)],
                                     cwd=REPO, env={**env, "PYTHONFAULTHANDLER": "1"}, stdout=output,
                                     stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", trust_env=False, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/generate", json={"text": "A", "language": "ase",
                                                                             "format": "json"},
                              trust_env=False, timeout=60)
        assert response.status_code == 200, response.text
        assert len(response.json()["frames"]) >= 1
    finally:
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
            # its threads' stacks into its log (PYTHONFAULTHANDLER), then stopped so no later test
            # shares the cores with it
            os.kill(server.pid, signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    printed = log.read_text()
    assert code is not None, f"serve run did not exit within 60 s of Ctrl-C; the end of its log:\n{printed[-6000:]}"
    assert code == 0 and "Got KeyboardInterrupt, shutting down" in printed, printed[-3000:]
