"""What a run is selected on: the best checkpoint, the saved steps and guidance, and a sweep's best
trial follow `--select-on`, so a sweep over a hand loss weight can be judged on the hand."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from t2p.metrics import SELECTION_METRICS

# own-start DTW-MJE favours the second checkpoint and 10 steps, the neutral start's hand the first and 1 step
FIRST = {"epoch": 4, "val_dtw_mje": 0.20, "val_neutral_dtw_mje": 0.18, "val_neutral_handshape": 0.55}
SECOND = {"epoch": 9, "val_dtw_mje": 0.16, "val_neutral_dtw_mje": 0.19, "val_neutral_handshape": 0.70}


def _training_result(tmp_path):
    from ray.train import Checkpoint

    from t2p.ray_train import HISTORY_FILE
    checkpoints = []
    for metrics in (FIRST, SECOND):
        folder = tmp_path / f"checkpoint_{metrics['epoch']}"
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "epoch.txt").write_text(str(metrics["epoch"]))
        (folder / HISTORY_FILE).write_text(json.dumps([FIRST, SECOND][:1 + (metrics is SECOND)]))
        checkpoints.append((Checkpoint.from_directory(str(folder)), metrics))
    return SimpleNamespace(best_checkpoints=checkpoints, checkpoint=checkpoints[-1][0])


@pytest.mark.parametrize("select_on, epoch", [("val_dtw_mje", 9), ("val_neutral_dtw_mje", 4),
                                              ("val_neutral_handshape", 4)])
def test_the_exported_model_is_the_checkpoint_best_on_the_selected_metric(tmp_path, select_on, epoch):
    from t2p.ray_train import export_run
    best = export_run(tmp_path, _training_result(tmp_path), select_on)
    assert best["epoch"] == epoch
    assert (tmp_path / "best" / "epoch.txt").read_text() == str(epoch)
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 3  # header and both validations


def test_the_saved_steps_are_the_cheapest_good_ones_on_the_selected_metric(six_real_signs_model, monkeypatch):
    from dataclasses import replace

    import t2p.validation as validation
    real_model, _, _ = six_real_signs_model
    scores = {1: {"val_dtw_mje": 0.30, "val_neutral_dtw_mje": 0.20, "val_neutral_handshape": 0.50},
              10: {"val_dtw_mje": 0.15, "val_neutral_dtw_mje": 0.21, "val_neutral_handshape": 0.60}}
    monkeypatch.setattr(validation, "validation_metrics", lambda model, items, steps, guidance: scores[steps])
    saved = real_model.schedule_config
    try:
        for metric, steps in (("val_dtw_mje", 10), ("val_neutral_handshape", 1)):
            table = validation.choose_generation_defaults(real_model, [], steps=(1, 10), guidance=(1.0,), metric=metric)
            assert [row["steps"] for row in table if row["chosen"]] == [steps]
            assert real_model.schedule_config.steps == steps
        with pytest.raises(ValueError, match="unknown selection metric"):
            validation.choose_generation_defaults(real_model, [], metric="val_loss")
    finally:
        real_model.schedule_config = replace(saved)


def test_a_run_refuses_an_unknown_selection_metric_before_any_work(tmp_path, capsys):
    from t2p.cli import main
    from t2p.ray_train import TrainingJob
    with pytest.raises(ValueError, match="select_on"):
        TrainingJob.from_dict({"data": "d", "out": "o", "select_on": "val_loss"})
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--select-on", "val_loss"])
    assert "invalid choice: 'val_loss'" in capsys.readouterr().err


def test_validation_reports_every_metric_a_run_can_be_selected_on(six_real_signs_model):
    from t2p.data import PreparedItem
    from t2p.validation import validation_metrics
    real_model, signs, sequences = six_real_signs_model
    items = [PreparedItem(str(i), str(i), "validation", sign, sign.text, sequence, "")
             for i, (sign, sequence) in enumerate(zip(signs[:2], sequences[:2]))]
    metrics = validation_metrics(real_model, items, steps=1)
    assert all(metrics[name] > 0 for name in SELECTION_METRICS), metrics
