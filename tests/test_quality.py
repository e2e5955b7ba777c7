"""Quality specifications: the model reproduces the sign its text asks for, not the average motion.

The six real labelled recordings of tests/data (four Swiss-German glosses, an ASL and a Czech SL
sign in SignWriting) are learned from text alone and generated back with the length the model
predicts and its default step count, from their own first frame and from the model's neutral pose
(what a user without a first pose gets, where nothing but the text tells the signs apart). A model
that outputs the mean sequence, the mean motion or the first pose held still fails every assertion
here, and so does one that ignores the text.
"""
import numpy as np
import pytest
import torch
from conftest import train_six_real_signs

from t2p.data import PreparedItem
from t2p.evaluation import JointGroups
from t2p.evaluation.baselines import MeanBaseline, static_baseline
from t2p.evaluation.handshape import handshape_distance
from t2p.evaluation.metrics import dtw_mje
from t2p.generation import SignRequest, generate, starting_poses
from t2p.generation.compose import sign_requests


@pytest.fixture(scope="module")
def six_signs(six_real_signs_model):
    return six_real_signs_model


def _error(output, reference) -> float:
    """DTW-MJE as `t2p evaluate` scores it: trajectories where a joint is there on both sides."""
    data, confidence = output
    return dtw_mje(data, reference.data, reference.confidence, predicted_confidence=confidence)


def test_six_real_signs_are_reproduced_from_text_far_below_every_text_blind_baseline(six_signs):
    model, signs, sequences = six_signs
    generated = generate(model, [SignRequest(sign, first_pose=s) for sign, s in zip(signs, sequences)])
    training = [PreparedItem(str(i), str(i), "train", sign, sign.text, s, "") for i, (sign, s) in
                enumerate(zip(signs, sequences))]
    mean_sequence = MeanBaseline(training)
    for sign, output, reference in zip(signs, generated, sequences):
        first = reference.data[0]
        model_error = _error((output.data, output.confidence), reference)
        static_error = _error(static_baseline(first, reference.num_frames), reference)
        mean_error = _error(mean_sequence(reference.num_frames, first), reference)
        print(f"{sign.text}: model {model_error:.3f}, static {static_error:.3f}, mean {mean_error:.3f}, "
              f"frames {len(output)} of {reference.num_frames}")
        assert model_error <= 0.3 * static_error, sign
        assert model_error <= 0.5 * mean_error, sign
        assert abs(len(output) - reference.num_frames) <= 0.1 * reference.num_frames, sign


def test_another_text_gives_another_sign(six_signs):
    """The same signer and length with another item's text is further from the reference than
    with its own text: the text, not the first pose, says what is signed."""
    model, signs, sequences = six_signs
    for i, reference in enumerate(sequences):
        outputs = generate(model, sign_requests(signs, first_pose=reference, length=reference.num_frames))
        errors = [_error((output.data, output.confidence), reference) for output in outputs]
        others = [error for j, error in enumerate(errors) if j != i]
        assert errors[i] <= 2 / 3 * min(others), (signs[i].text, np.round(errors, 3).tolist())


def test_from_the_neutral_start_six_real_signs_are_reproduced_well_under_the_static_baseline(six_signs):
    model, signs, sequences = six_signs
    neutral = starting_poses(model, [None])[0]
    generated = generate(model, signs)  # the neutral start, predicted lengths, default steps
    for sign, output, reference in zip(signs, generated, sequences):
        model_error = _error((output.data, output.confidence), reference)
        static_error = _error(static_baseline(neutral, reference.num_frames), reference)
        print(f"{sign.text}: model {model_error:.3f}, neutral held still {static_error:.3f}, "
              f"frames {len(output)} of {reference.num_frames}")
        assert model_error <= 0.5 * static_error, sign
        assert abs(len(output) - reference.num_frames) <= 0.2 * reference.num_frames, sign


def test_from_the_neutral_start_another_text_gives_another_sign_and_another_hand(six_signs):
    """With nothing but the text to go on, the right text is 1.5x closer to the reference than
    any other sign's text, and its hands are closer than most other texts' hands (a text-blind
    model gives every text the same output: a ratio of 1)."""
    model, signs, sequences = six_signs
    hands = JointGroups.of(model.skeleton).hand_shapes
    for i, reference in enumerate(sequences):
        outputs = generate(model, sign_requests(signs, length=reference.num_frames))
        errors = [_error((output.data, output.confidence), reference) for output in outputs]
        shapes = [handshape_distance(o.data, reference.data, hands, reference.confidence, o.confidence)
                  for o in outputs]
        assert 1.5 * errors[i] <= min(e for j, e in enumerate(errors) if j != i), (signs[i].text, np.round(errors, 3))
        if np.isfinite(shapes[i]):  # a reference whose hands are mostly untracked has no signing hand to judge
            assert shapes[i] < np.median([e for j, e in enumerate(shapes) if j != i]), (signs[i].text, np.round(shapes, 3))


def test_a_missing_hand_is_predicted_absent(six_signs):
    """kinder and the ASL sample are one-handed (one hand never tracked): the model writes that
    hand with confidence 0 rather than drawing it, and keeps the hands that are there."""
    model, signs, sequences = six_signs
    generated = generate(model, [SignRequest(sign, first_pose=s, length=s.num_frames)
                                 for sign, s in zip(signs, sequences)])
    hands = [[model.skeleton.joints.index(joint) for joint in model.skeleton.joints if joint[0] == name]
             for name in ("LEFT_HAND_LANDMARKS", "RIGHT_HAND_LANDMARKS")]
    absent_hands = 0
    for sign, output, reference in zip(signs, generated, sequences):
        agreement = ((output.confidence > 0) == (reference.confidence > 0)).mean()
        assert agreement >= 0.9, (sign.text, agreement)
        for hand in hands:
            if not (reference.confidence[:, hand] > 0).any():
                absent_hands += 1
                # 0.91-1.0 of frames over training seeds 0-2; a model that draws the hand scores near 0
                assert (output.confidence[:, hand] == 0).mean() >= 0.9, sign.text
    assert absent_hands >= 2, "the data holds one-handed signs"


def test_training_is_reproducible_with_the_same_seed():
    first, _, _ = train_six_real_signs(seed=3, iterations=10)
    second, _, _ = train_six_real_signs(seed=3, iterations=10)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
