import json

import numpy as np
import pytest
from conftest import POSES

from t2p.cli import main
from t2p.data import PreparedItem, prepare
from t2p.data.sources import lexicon_items
from t2p.evaluation import STARTS, EvaluationConfig, evaluate
from t2p.evaluation.baselines import MeanBaseline, RetrievalBaseline, constant_length, edit_distance, static_baseline
from t2p.evaluation.evaluate import other_texts
from t2p.evaluation.metrics import METRICS
from t2p.evaluation.report import SET_METRICS, SYSTEMS
from t2p.model import T2PModel
from t2p.notation import SignText
from t2p.pose import Normalization, PoseSequence, start_from
from t2p.training.job import model_config_from_manifest


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """The 4 real Swiss-German signs, one per validation/test split, and an untrained tiny model
    (an untrained refiner is the identity: it starts as the static baseline)."""
    root = tmp_path_factory.mktemp("evaluation")
    manifest = prepare(lexicon_items(POSES / "lexicon_sgg" / "index.csv"), root / "data", source="lexicon",
                       fractions=(0.5, 0.25, 0.25), progress=False)
    model = T2PModel(model_config_from_manifest(manifest, d_model=32, heads=2, text_layers=1, refiner_layers=1,
                                                dropout=0.0))
    model.save(root / "model")
    return root, model


def _item(identifier, text, language, gloss, frames=6, value=0.0, notation="text"):
    data = np.full((frames, 2, 2), value, dtype=np.float32)
    data[:, 1, 0] += np.arange(frames)  # the second joint moves
    sequence = PoseSequence(data, np.ones((frames, 2), np.float32), 25.0, Normalization(np.zeros(2, np.float32), 1.0))
    return PreparedItem(identifier, f"{language}:{text}", "train", SignText(text, notation, language), gloss,
                        sequence, "")


def test_evaluation_writes_both_reports_with_every_baseline(tiny_set, tmp_path):
    root, model = tiny_set
    report = evaluate(model, root / "data", tmp_path, EvaluationConfig(steps=(2,), examples=1, progress=False),
                      model_name="tiny")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["systems"] == list(SYSTEMS) and saved["items"] == 1
    for system in SYSTEMS:
        assert set(saved["summary"][system]) == set(METRICS) | set(SET_METRICS)
        assert set(saved["summary"][system]["dtw_mje"]) == {"mean", "median"}
        assert set(saved["by_language"]["sgg"][system]) == set(METRICS) | set(SET_METRICS)
    assert saved["generation_time"]["seconds"] > 0
    assert "predicted" in saved["lengths"]["retrieval"]
    markdown = (tmp_path / "report.md").read_text()
    for name in (*SYSTEMS, *METRICS, "sgg"):
        assert name in markdown
    for metric in METRICS:
        assert (tmp_path / saved["plots"][metric]).read_bytes()[:4] == b"\x89PNG"
    assert len(saved["examples"]) == 1 and (tmp_path / saved["examples"][0]).is_file()
    item = report.items[0]
    assert item.frames["static"] == item.reference_frames
    assert item.frames["retrieval"] == item.frames["mean"] == item.frames["mean_motion"] == item.frames["model"]


def test_an_untrained_model_is_frozen_like_the_static_baseline(tiny_set):
    root, model = tiny_set
    report = evaluate(model, root / "data", config=EvaluationConfig(steps=(3,), baseline_length="reference",
                                                                    metrics=("mje", "displacement_ratio"),
                                                                    progress=False))
    scores = report.items[0].scores
    assert scores["model"]["mje"] == pytest.approx(scores["static"]["mje"], rel=1e-5)  # the same pose, held
    assert scores["model"]["displacement_ratio"] == pytest.approx(0.0, abs=1e-6)  # frozen output
    assert scores["static"]["displacement_ratio"] == 0.0
    assert scores["retrieval"]["displacement_ratio"] > 0.1


def test_evaluate_command_writes_the_report(tiny_set, tmp_path, capsys):
    root, _ = tiny_set
    out = tmp_path / "report"
    assert main(["evaluate", "--model", str(root / "model"), "--data", str(root / "data"), "--split", "validation",
                 "--out", str(out), "--steps", "1", "--examples", "0", "--metric", "mje", "--metric", "dtw_mje"]) == 0
    assert (out / "report.md").is_file() and (out / "report.json").is_file()
    assert list(json.loads((out / "report.json").read_text())["metrics"]) == ["mje", "dtw_mje", "back_retrieval_top1",
                                                                             "back_retrieval_top5"]
    assert "dtw_mje mean" in capsys.readouterr().out


def test_evaluate_command_without_a_model_fails_with_one_line(tiny_set, tmp_path, capsys):
    root, _ = tiny_set
    assert main(["evaluate", "--model", str(tmp_path / "nothing"), "--data", str(root / "data"),
                 "--out", str(tmp_path / "report")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_static_baseline_repeats_the_first_pose():
    first = np.arange(6, dtype=np.float32).reshape(3, 2)
    data, confidence = static_baseline(first, 5)
    assert data.shape == (5, 3, 2) and (data == first).all() and (confidence == 1).all()


def test_borrowed_motion_starts_from_the_first_pose_and_keeps_gaps():
    data = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    confidence = np.ones((3, 2), np.float32)
    confidence[0, 1] = 0  # the second joint is first seen in frame 1
    first = np.zeros((2, 2), np.float32)
    moved, moved_confidence = start_from(data, confidence, first)
    np.testing.assert_array_equal(moved[0, 0], first[0])
    np.testing.assert_array_equal(moved[1, 1], first[1])
    np.testing.assert_array_equal(moved[2] - moved[1], data[2] - data[1])  # the motion is kept
    assert moved[0, 1].tolist() == [0, 0] and moved_confidence[0, 1] == 0


def test_retrieval_prefers_the_same_word_in_another_language_then_edit_distance():
    training = [_item("1", "kinder", "gsg", "Kinder"), _item("2", "a", "ase", "a"),
                _item("3", "b", "gsg", "b"), _item("4", "essen", "sgg", "essen")]
    retrieval = RetrievalBaseline(training)
    assert retrieval.closest(SignText("a", "text", "fsl"), "a").id == "2"           # the letter, elsewhere
    assert retrieval.closest(SignText("kind", "text", "sgg"), "kind").id == "1"     # then edit distance
    assert retrieval.closest(SignText("M518x", "signwriting", "gsg"), "Essen").id == "4"  # glosses across notations
    assert edit_distance("kitten", "sitting") == 3


def test_retrieval_and_mean_have_the_requested_length_and_start_pose():
    training = [_item("1", "a", "ase", "a", frames=6, value=1.0), _item("2", "b", "ase", "b", frames=10, value=3.0)]
    first = np.full((2, 2), 7.0, np.float32)
    for data, confidence in (RetrievalBaseline(training)(SignText("a", "text", "gsg"), "a", 8, first),
                             MeanBaseline(training)(8, first)):
        assert data.shape == (8, 2, 2) and confidence.shape == (8, 2)
        np.testing.assert_allclose(data[0], first)
    mean, observed = MeanBaseline(training).mean(8)
    np.testing.assert_allclose(mean[:, 0], 2.0)  # the average of the two still joints
    assert (observed == 1).all()


def test_mean_motion_adds_the_training_mean_displacement_to_the_first_pose():
    training = [_item("1", "a", "ase", "a", frames=6, value=1.0), _item("2", "b", "ase", "b", frames=6, value=5.0)]
    first = np.full((2, 2), 7.0, np.float32)
    data, confidence = MeanBaseline(training, motion=True)(6, first)
    np.testing.assert_allclose(data[:, 0], 7.0)  # the still joint stays where this signer has it
    np.testing.assert_allclose(data[:, 1, 0], 7.0 + np.arange(6))  # the moving joint moves as in training
    assert (confidence == 1).all()


def test_the_other_text_control_takes_another_text_of_the_same_language():
    items = [_item("1", "a", "ase", "a"), _item("2", "b", "gsg", "b"), _item("3", "c", "ase", "c"),
             _item("4", "a", "ase", "a")]
    # b has no other gsg item: the next item with another text stands in
    assert [sign.text for sign in other_texts(items)] == ["c", "c", "a", "c"]


def test_constant_length_is_the_training_mean():
    assert constant_length([_item("1", "a", "ase", "a", frames=6), _item("2", "b", "ase", "b", frames=11)]) == 8


def test_evaluation_sweeps_steps_and_guidance_and_names_the_best(tiny_set):
    root, model = tiny_set
    report = evaluate(model, root / "data", config=EvaluationConfig(steps=(1, 2), guidance=(1.0, 3.0),
                                                                    metrics=("dtw_mje",), progress=False))
    assert [(s.steps, s.guidance) for s in report.sweep] == [(1, 1.0), (1, 3.0), (2, 1.0), (2, 3.0)]
    assert report.best_setting.scores["dtw_mje"] == min(s.scores["dtw_mje"] for s in report.sweep)
    markdown = report.to_markdown()
    assert "## Steps and guidance" in markdown and "**best**" in markdown


def test_evaluate_command_refuses_a_malformed_sweep(tiny_set, tmp_path, capsys):
    root, _ = tiny_set
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", str(root / "model"), "--data", str(root / "data"), "--out", str(tmp_path),
              "--steps", "1,x"])
    assert "expected ints separated by commas, got '1,x'" in capsys.readouterr().err


def test_every_system_is_scored_from_every_start(tiny_set):
    """neutral: the model's neutral pose; own: the reference's first frame; other: another item's.
    An untrained refiner holds its start, so it scores as that start held still (static) from each
    start, and the starts differ from one another."""
    root, model = tiny_set
    report = evaluate(model, root / "data", config=EvaluationConfig(split="train", steps=(1,), metrics=("mje",),
                                                                    baseline_length="reference", progress=False))
    assert [start.start for start in report.starts] == list(STARTS) and report.items is report.starts[0].items
    by_start = {}
    for start in report.starts:
        for item in start.items:
            assert item.scores["model"]["mje"] == pytest.approx(item.scores["static"]["mje"], rel=1e-5), start.start
        by_start[start.start] = [item.scores["static"]["mje"] for item in start.items]
    assert by_start["neutral"] != by_start["own"] and by_start["own"] != by_start["other"] \
        and by_start["neutral"] != by_start["other"]  # three different starts
    assert "## Does the text choose the sign? Every start" in report.to_markdown()
    assert set(report.to_dict()["by_start"]) == set(STARTS)


def test_evaluate_refuses_an_unknown_start(tiny_set, tmp_path, capsys):
    root, _ = tiny_set
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", str(root / "model"), "--data", str(root / "data"), "--out", str(tmp_path),
              "--start", "neutral,sideways"])
    assert "starts are neutral, own, other" in capsys.readouterr().err
    with pytest.raises(ValueError, match="starts must be distinct"):
        EvaluationConfig(starts=("own", "own"))


def test_retrieval_plays_the_recorded_handshape_from_the_start_wrist():
    """Each hand moves as a whole with its wrist: the recorded handshape is shown, not the start's."""
    from t2p.pose import Hand
    frames = 4
    data = np.zeros((frames, 3, 2), np.float32)
    data[:, 1] = [1.0, 0.0]                     # the wrist
    data[:, 2] = [1.0, 0.5] + np.arange(frames)[:, None] * [0.0, 0.1]  # a finger opening
    confidence = np.ones((frames, 3), np.float32)
    sequence = PoseSequence(data, confidence, 25.0, Normalization(np.zeros(2, np.float32), 1.0))
    training = [PreparedItem("1", "ase:a", "train", SignText("a", "text", "ase"), "a", sequence, "")]
    start = np.array([[0.0, 0.0], [3.0, 3.0], [3.0, 2.0]], np.float32)  # the start's finger points down
    hand = Hand("RIGHT_HAND_LANDMARKS", 1, (1, 2), ())
    moved, _ = RetrievalBaseline(training, [hand])(SignText("a", "text", "gsg"), "a", frames, start)
    np.testing.assert_allclose(moved[:, 1], [[3.0, 3.0]] * frames)                 # the wrist starts at the start's
    np.testing.assert_allclose(moved[:, 2] - moved[:, 1], data[:, 2] - data[:, 1], atol=1e-6)  # the recorded finger
    per_joint, _ = RetrievalBaseline(training)(SignText("a", "text", "gsg"), "a", frames, start)
    np.testing.assert_allclose(per_joint[0, 2], start[2])  # without hands: every joint from the start's
