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
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
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

    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]  # continued, not restarted

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



def test_tune_sweeps_steps_with_one_trainer_per_trial(ray_session, real_index, tmp_path, capsys):
    data, sweep = tmp_path / "data", tmp_path / "sweep"
    assert main(["prepare", "--source", "index", "--index", str(real_index), "--out", str(data),
                 "--split", "0.75,0.25,0"]) == 0
    tiny = [arg for arg in TINY if arg != "steps=2"][:-1]
    assert main(["tune", "--data", str(data), "--out", str(sweep), "--samples", "2", "--epochs", "1",
                 "--batch-size", "8", *tiny, "--search", "steps=1,2"]) == 0
    summary = json.loads((sweep / "sweep.json").read_text())
    assert len(summary["trials"]) == 2
    assert all(trial["error"] is None and trial["val_dtw_mje"] > 0 for trial in summary["trials"])
    assert summary["best_config"]["steps"] in (1, 2)
    best = T2PModel.load(sweep / "best")
    assert best.schedule_config.steps == summary["best_config"]["steps"]  # the swept setting is saved with the model
