import pytest
import torch

from t2p.model import RefinementSchedule, ScheduleConfig
from t2p.training import TrainConfig


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 1000])
def test_cosine_schedule_ends_at_the_starting_sequence_and_increases(steps):
    betas = RefinementSchedule().betas(steps)
    assert betas.shape == (steps,)
    assert betas[-1] == 1.0
    assert (betas[1:] > betas[:-1]).all()
    assert (betas > 0).all()


def test_mix_interpolates_between_start_and_clean():
    schedule = RefinementSchedule()
    start, clean = torch.zeros(2, 3, 1, 2), torch.ones(2, 3, 1, 2)
    mixed = schedule.mix(start, clean, torch.tensor([1.0, 0.25]))
    assert torch.equal(mixed[0], start[0])
    assert torch.allclose(mixed[1], torch.full_like(mixed[1], 0.75))


def test_training_betas_cover_the_first_step_and_the_open_interval():
    betas = RefinementSchedule().sample_training_betas(4000, 0.5, torch.Generator().manual_seed(0))
    assert ((betas > 0) & (betas <= 1)).all()
    assert (betas == 1).float().mean() > 0.2
    assert (betas < 0.1).any()


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_the_configured_share_of_training_examples_starts_at_the_first_step(share):
    betas = RefinementSchedule().sample_training_betas(8000, share, torch.Generator().manual_seed(0))
    assert abs(float((betas == 1).float().mean()) - share) < 0.02
    with pytest.raises(ValueError, match="first_step_share"):
        TrainConfig(first_step_share=1.5)


def test_step_counts_outside_the_range_are_rejected():
    with pytest.raises(ValueError, match="steps must be in 1..1000"):
        RefinementSchedule().betas(0)
    with pytest.raises(ValueError):
        ScheduleConfig(steps=0)


def test_schedule_holds_no_weights():
    assert not any(isinstance(v, torch.nn.Module) for v in vars(RefinementSchedule()).values())


@pytest.mark.parametrize("shape", ["cosine", "linear"])
def test_every_shape_ends_at_the_starting_sequence_and_trains_on_its_own_curve(shape):
    schedule = RefinementSchedule(ScheduleConfig(shape=shape))
    betas = schedule.betas(4)
    assert betas[-1] == 1.0 and (betas[1:] > betas[:-1]).all()
    if shape == "linear":
        assert torch.allclose(betas, torch.tensor([0.25, 0.5, 0.75, 1.0]))
    # the training draws follow the same curve: the median of u ~ U(0, 1] maps to the curve at 0.5
    drawn = schedule.sample_training_betas(20000, TrainConfig().first_step_share, torch.Generator().manual_seed(0))
    inside = drawn[drawn < 1]
    expected = 0.5 if shape == "linear" else 1 - torch.cos(torch.tensor(0.25 * torch.pi)).item()
    assert abs(inside.median().item() - expected) < 0.05
    with pytest.raises(ValueError, match="shape must be one of cosine, linear"):
        ScheduleConfig(shape="exponential")


def test_a_sweep_can_search_the_schedule_shape():
    from t2p.training.tune import parse_search
    space = parse_search(["shape=cosine,linear", "steps=1,3"])
    assert space["shape"].categories == ["cosine", "linear"] and space["steps"].categories == [1, 3]


def test_a_grid_tries_every_value_beside_a_random_search():
    from t2p.training.tune import parse_search
    space = parse_search(["steps=1,3"], grid=["learning_rate=0.003,1e-07"])
    assert space["learning_rate"] == {"grid_search": [0.003, 1e-07]}  # every value, in order
    assert space["steps"].categories == [1, 3]
    with pytest.raises(ValueError, match="--grid expects KEY=a,b,c"):
        parse_search(["steps=1,3"], grid=["steps=1,3"])  # one key is searched one way
    with pytest.raises(ValueError, match="unknown setting 'learning_rat'"):
        parse_search([], grid=["learning_rat=0.1,0.2"])
