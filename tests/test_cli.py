"""The command line as a user meets it: every verb's --help (an example, each default once), and
one clear line for a mistake; the run-identity diff that `t2p train` refuses a changed rerun by."""
import re

import pytest

from t2p.cli import build_parser, main
from t2p.training import TrainingJob

VERBS = ["prepare", "train", "tune", "quickstart", "generate", "correct", "evaluate", "compare", "render", "serve"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_helps_with_an_example_and_prints_each_default_once(verb, capsys):
    with pytest.raises(SystemExit) as done:
        main([verb, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "example:" in text
    assert "(default: None)" not in text
    options = text.split("options:")[1].split("example:")[0]
    for option in options.split("\n  -")[1:]:  # one option's help, wrapped over lines
        assert len(re.findall(r"(?<!/)default", " ".join(option.split()).lower())) <= 1, option  # not runs/default


def test_every_verb_is_registered():
    parser = build_parser()
    choices = next(action.choices for action in parser._actions if action.dest == "verb")
    assert sorted(choices) == sorted(VERBS)


def test_a_mistake_exits_non_zero_with_one_line(tmp_path, capsys):
    assert main(["correct", str(tmp_path / "missing.pose"), "-o", str(tmp_path / "out.pose")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("t2p correct: error:") and "missing.pose" in error


def _job(**overrides):
    job = {"data": "data/fingerspelling", "out": "runs/a", "workers": 1, "gpu": False, "cpus_per_worker": 1.0,
           "model": {"d_model": 32}, "train": {"epochs": 2, "batch_size": 4}, "schedule": {}, "validation_items": 64,
           "validate_every": 0, "calibrate": True, "max_failures": 1, "wandb": False, "name": "ray"}
    return TrainingJob.from_dict({**job, **overrides})


def changed_settings(saved: TrainingJob, asked: TrainingJob, given=None) -> list[str]:
    return saved.changed_settings(asked, given)


def test_a_run_is_the_same_run_whatever_its_epochs():
    assert changed_settings(_job(), _job(train={"epochs": 9, "batch_size": 4})) == []
    assert changed_settings(_job(), _job(data="./data/fingerspelling")) == []  # the same folder


def test_a_rerun_with_other_settings_names_each_of_them():
    asked = _job(workers=2, train={"epochs": 2, "batch_size": 8}, model={"d_model": 64})
    assert changed_settings(_job(), asked) == ["workers", "batch_size", "set"]
    assert changed_settings(_job(), _job(model={})) == ["set"]  # a setting left out is a change too


def test_resuming_compares_only_what_was_given():
    asked = _job(workers=2, model={})  # neither --workers nor any --set given: the saved values stand
    assert changed_settings(_job(), asked, given=set()) == []
    assert changed_settings(_job(), asked, given={"workers"}) == ["workers"]
    assert changed_settings(_job(), _job(model={"d_model": 64}), given=set()) == ["set"]
