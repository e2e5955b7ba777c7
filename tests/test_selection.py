"""What a run is selected on: the best checkpoint, the saved steps and guidance, and a sweep's best
trial follow `--select-on`, so a sweep over a hand loss weight can be judged on the hand."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from t2p.training.config import SELECTION_METRICS

# own-start DTW-MJE favours the second checkpoint and 10 steps, the neutral start's hand the first and 1 step
FIRST = {"epoch": 4, "val_dtw_mje": 0.20, "val_neutral_dtw_mje": 0.18, "val_neutral_handshape": 0.55}
SECOND = {"epoch": 9, "val_dtw_mje": 0.16, "val_neutral_dtw_mje": 0.19, "val_neutral_handshape": 0.70}


def _training_result(tmp_path):
    from ray.train import Checkpoint

    from t2p.training.checkpoints import HISTORY_FILE
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
    from t2p.training.job import export_run
    best = export_run(tmp_path, _training_result(tmp_path), select_on)
    assert best["epoch"] == epoch
    assert (tmp_path / "best" / "epoch.txt").read_text() == str(epoch)
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 3  # header and both validations


def test_the_saved_steps_are_the_cheapest_good_ones_on_the_selected_metric(six_real_signs_model, monkeypatch):
    from dataclasses import replace

    import t2p.training.validation as validation
    real_model, _, _ = six_real_signs_model
    scores = {1: {"val_dtw_mje": 0.30, "val_neutral_dtw_mje": 0.20, "val_neutral_handshape": 0.50},
              10: {"val_dtw_mje": 0.15, "val_neutral_dtw_mje": 0.21, "val_neutral_handshape": 0.60}}
    monkeypatch.setattr(validation, "validation_metrics", lambda model, items, steps, guidance: scores[steps])
    before = replace(real_model.schedule_config)
    for metric, steps in (("val_dtw_mje", 10), ("val_neutral_handshape", 1)):
        schedule, table = validation.choose_generation_defaults(real_model, [], steps=(1, 10), guidance=(1.0,),
                                                                metric=metric)
        assert [row["steps"] for row in table if row["chosen"]] == [steps]
        assert schedule.steps == steps
    assert real_model.schedule_config == before  # chosen, not set: the caller saves it
    with pytest.raises(ValueError, match="unknown selection metric"):
        validation.choose_generation_defaults(real_model, [], metric="val_loss")


def test_a_run_refuses_an_unknown_selection_metric_before_any_work(tmp_path, capsys):
    from t2p.cli import main
    from t2p.training import TrainingJob
    with pytest.raises(ValueError, match="select_on"):
        TrainingJob.from_dict({"data": "d", "out": "o", "select_on": "val_loss"})
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--select-on", "val_loss"])
    assert "invalid choice: 'val_loss'" in capsys.readouterr().err


def test_validation_reports_every_metric_a_run_can_be_selected_on(six_real_signs_model):
    from t2p.data import PreparedItem
    from t2p.training.validation import validation_metrics
    real_model, signs, sequences = six_real_signs_model
    items = [PreparedItem(str(i), str(i), "validation", sign, sign.text, sequence, "")
             for i, (sign, sequence) in enumerate(zip(signs[:2], sequences[:2]))]
    metrics = validation_metrics(real_model, items, steps=1)
    assert set(SELECTION_METRICS) <= set(metrics)
    # each is what evaluation's own functions give for the same outputs
    from t2p.evaluation import JointGroups
    from t2p.evaluation.handshape import handshape_distance
    from t2p.evaluation.metrics import dtw_mje
    from t2p.generation import SignRequest, generate
    own = generate(real_model, [SignRequest(item.sign, first_pose=item.sequence, steps=1) for item in items])
    neutral = generate(real_model, [SignRequest(item.sign, steps=1) for item in items])
    hands = JointGroups.of(real_model.skeleton).hand_shapes
    expected = {
        "val_dtw_mje": np.mean([dtw_mje(o.data, i.sequence.data, i.sequence.confidence, predicted_confidence=o.confidence)
                                for o, i in zip(own, items)]),
        "val_neutral_dtw_mje": np.mean([dtw_mje(o.data, i.sequence.data, i.sequence.confidence,
                                                predicted_confidence=o.confidence) for o, i in zip(neutral, items)]),
        "val_neutral_handshape": np.nanmean([handshape_distance(o.data, i.sequence.data, hands, i.sequence.confidence,
                                                                o.confidence) for o, i in zip(neutral, items)])}
    for name in SELECTION_METRICS:
        assert np.isfinite(metrics[name]) and metrics[name] == pytest.approx(expected[name], rel=1e-6), name
    # and the fitted model's own-start path is well under holding its first pose still
    assert metrics["val_dtw_mje"] < 0.5 * metrics["val_static_dtw_mje"], metrics
