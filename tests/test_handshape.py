"""The handshape distance: the fingers' joint angles, compared by DTW.

Checked on the real recordings of the fingerspelling lexicon shipped in spoken-to-signed (a t2p
dependency): the same letter fingerspelled in two sign languages is closer than two different
letters in most pairs, which the shoulder-normalised DTW-MJE of the whole upper body is not.
"""
import itertools
import random

import numpy as np
import pytest

from t2p.data.sources import fingerspelling_items
from t2p.evaluation import JointGroups
from t2p.evaluation.handshape import hand_angles, handshape_distance
from t2p.evaluation.metrics import dtw_mje
from t2p.pose import Skeleton, load_sequence, read_pose


@pytest.fixture(scope="module")
def lexicon():
    """Letters recorded in at least three of the lexicon's languages, upper body and hands."""
    items = fingerspelling_items()
    skeleton = Skeleton.from_pose(read_pose(items[0].path))
    by_letter: dict[str, list] = {}
    for item in items:
        by_letter.setdefault(item.gloss.casefold(), []).append(item)
    chosen = [letter for letter in sorted(by_letter) if len({i.language for i in by_letter[letter]}) >= 3][:12]
    recordings = [(letter, item.language, load_sequence(item.path, skeleton))
                  for letter in chosen for item in by_letter[letter]]
    return skeleton, recordings


def _rotated(data: np.ndarray, joints: list[int], angle: float) -> np.ndarray:
    """The hand turned about its wrist (joint 0 of `joints`) in the image plane and about the depth axis."""
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    out = data.copy()
    wrist = data[:, joints[:1]]
    out[:, joints] = (data[:, joints] - wrist) @ rotation.T + wrist
    return out


def test_handshape_ignores_where_the_hand_is_how_it_is_turned_and_its_size(lexicon):
    skeleton, recordings = lexicon
    hands = skeleton.hands()
    _, _, sequence = next(r for r in recordings if (r[2].confidence[:, list(hands[1].joints)] > 0).all())
    joints = list(hands[1].joints)
    moved = sequence.data.copy()
    moved[:, joints] = 1.7 * _rotated(sequence.data, joints, 0.8)[:, joints] + np.array([0.3, -0.2, 0.1])
    assert handshape_distance(moved, sequence.data, hands[1:], sequence.confidence) == pytest.approx(0, abs=1e-5)
    # DTW-MJE sees the same hand as far away
    assert dtw_mje(moved, sequence.data, sequence.confidence) > 0.01


def test_a_closed_hand_is_far_from_an_open_one():
    skeleton = Skeleton.from_pose(read_pose(fingerspelling_items()[0].path))
    hand = skeleton.hands()[1]
    index = {point: skeleton.joint_index(hand.name, point) for point in
             ("WRIST", "INDEX_FINGER_MCP", "INDEX_FINGER_PIP", "INDEX_FINGER_DIP", "INDEX_FINGER_TIP")}
    straight = np.zeros((1, skeleton.num_joints, 3))
    for step, point in enumerate(index):
        straight[0, index[point]] = [0, step, 0]
    curled = straight.copy()
    curled[0, index["INDEX_FINGER_DIP"]] = [0.5, 2.5, 0]
    curled[0, index["INDEX_FINGER_TIP"]] = [0.5, 1.5, 0]
    bends = hand_angles(curled, hand) - hand_angles(straight, hand)
    assert bends.max() > 1.0  # the curled index bends by more than a radian at its last joints
    assert handshape_distance(curled, straight, [hand]) > 0.2


def test_the_same_letter_in_another_language_is_closer_than_another_letter_in_most_pairs(lexicon):
    skeleton, recordings = lexicon
    hands = JointGroups.of(skeleton).hand_shapes
    rng = random.Random(0)
    closer, pairs, ratios = 0, 0, []
    for (letter, language, anchor), (other_letter, other_language, same) in itertools.permutations(recordings, 2):
        if letter != other_letter or language == other_language:
            continue
        different = [s for l, lang, s in recordings if lang == other_language and l != letter]
        if not different:
            continue
        negative = rng.choice(different)
        same_distance = handshape_distance(same.data, anchor.data, hands, anchor.confidence, same.confidence)
        other_distance = handshape_distance(negative.data, anchor.data, hands, anchor.confidence, negative.confidence)
        pairs += 1
        closer += same_distance < other_distance
        ratios.append(other_distance / same_distance)
    share = closer / pairs
    print(f"handshape: the same letter in another language is closer than another letter in {closer}/{pairs} "
          f"pairs ({share:.0%}), another letter {np.median(ratios):.2f}x further (median)")
    assert pairs >= 100
    assert share >= 0.55


def test_an_untracked_hand_is_not_judged(lexicon):
    skeleton, recordings = lexicon
    hands = skeleton.hands()
    _, _, sequence = recordings[0]
    confidence = sequence.confidence.copy()
    confidence[:, list(hands[0].joints)] = 0  # the left hand never seen: only the right is the signing hand
    scrambled = sequence.data.copy()
    scrambled[:, list(hands[0].joints)] = np.random.default_rng(0).normal(size=scrambled[:, list(hands[0].joints)].shape)
    assert handshape_distance(scrambled, sequence.data, hands, confidence) == pytest.approx(
        handshape_distance(sequence.data, sequence.data, hands, confidence), abs=1e-6)
    nothing = np.zeros_like(confidence)
    assert np.isnan(handshape_distance(sequence.data, sequence.data, hands, nothing))


def test_the_training_angle_loss_measures_the_metrics_angles_and_ignores_a_turned_hand(lexicon):
    import torch

    from t2p.training.objective import hand_angle_loss, joint_angles

    skeleton, recordings = lexicon
    hands = skeleton.hands()
    sequence = next(r[2] for r in recordings if (r[2].confidence[:, list(hands[1].joints)] > 0).all())
    poses = torch.tensor(sequence.data, dtype=torch.float32).unsqueeze(0)  # (1, frames, joints, dims)
    pairs = torch.tensor(hands[1].angles)
    assert np.allclose(joint_angles(poses, pairs)[0].numpy(), hand_angles(sequence.data, hands[1]), atol=1e-3)

    observed = torch.tensor(sequence.confidence > 0).unsqueeze(0)
    turned = torch.tensor(1.3 * _rotated(sequence.data, list(hands[1].joints), 0.6), dtype=torch.float32).unsqueeze(0)
    assert float(hand_angle_loss(turned, poses, observed, observed, hands[1:])) == pytest.approx(0, abs=1e-6)

    # another letter's hand costs something, and its gradient is finite
    other = next(r[2] for r in recordings if r[0] != recordings[0][0] and
                 (r[2].confidence[:, list(hands[1].joints)] > 0).all())
    frames = min(len(other.data), len(sequence.data))
    wrong = torch.tensor(other.data[:frames], dtype=torch.float32, requires_grad=True)
    loss = hand_angle_loss(wrong.unsqueeze(0), poses[:, :frames], observed[:, :frames], observed[:, :frames], hands[1:])
    loss.backward()
    assert float(loss) > 0.01 and torch.isfinite(wrong.grad).all()
