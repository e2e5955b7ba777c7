import numpy as np
import pytest
from conftest import ALL_POSE_FILES, POSES

from t2p.pose import ALIASES, PoseFormatError, Skeleton, load_sequence, read_pose, to_pose, to_sequence, write_pose


@pytest.fixture(scope="module")
def skeleton():
    return Skeleton.from_pose(read_pose(POSES / "layouts" / "mediapipe.pose"))


def test_default_skeleton_is_upper_body_and_both_hands_in_3d(skeleton):
    assert skeleton.dims == 3
    assert skeleton.num_joints == 8 + 21 + 21
    assert ("POSE_LANDMARKS", "LEFT_SHOULDER") in skeleton.joints
    assert not any("KNEE" in point or "FACE" in component for component, point in skeleton.joints)


def test_face_skeleton_adds_face_contours():
    face = Skeleton.from_pose(read_pose(POSES / "layouts" / "mediapipe.pose"), "upper_body_face")
    assert face.num_joints == 50 + 128


@pytest.mark.parametrize("path", ALL_POSE_FILES, ids=lambda p: p.name)
def test_every_shipped_layout_loads_onto_the_skeleton(path, skeleton):
    pose = read_pose(path)
    sequence = to_sequence(pose, skeleton)
    assert sequence.data.shape == (pose.body.data.shape[0], 50, 3)
    assert np.isfinite(sequence.data).all()
    # shoulder normalisation: the shoulders are one unit apart on average
    left, right = skeleton.joint_index("POSE_LANDMARKS", "LEFT_SHOULDER"), skeleton.joint_index("POSE_LANDMARKS", "RIGHT_SHOULDER")
    both = (sequence.confidence[:, left] > 0) & (sequence.confidence[:, right] > 0)
    width = np.linalg.norm(sequence.data[both, left, :2] - sequence.data[both, right, :2], axis=-1).mean()
    assert 0.5 < width < 1.5
    # hands are found (by name for Holistic, by alias for OpenPose)
    wrist = skeleton.joint_index("RIGHT_HAND_LANDMARKS", "WRIST")
    assert sequence.confidence[:, wrist].max() > 0


def test_openpose_points_map_by_alias_and_missing_depth_is_zero(skeleton):
    sequence = load_sequence(POSES / "layouts" / "openpose.pose", skeleton)
    assert (sequence.data[..., 2] == 0).all()
    assert sequence.confidence[:, skeleton.joint_index("POSE_LANDMARKS", "RIGHT_ELBOW")].mean() > 0.3


def test_missing_points_are_masked_with_zero_confidence(skeleton):
    sequence = load_sequence(POSES / "lexicon_sgg" / "essen.pose", skeleton)
    missing = sequence.confidence == 0
    assert missing.any()
    assert (sequence.data[missing] == 0).all()


@pytest.mark.parametrize("path", ALL_POSE_FILES, ids=lambda p: p.name)
def test_written_prediction_reads_back_with_same_shape_names_and_fps(path, skeleton, tmp_path):
    sequence = load_sequence(path, skeleton)
    pose = to_pose(sequence.data, skeleton, sequence.fps, sequence.normalization, sequence.confidence)
    write_pose(pose, tmp_path / "out.pose")
    back = read_pose(tmp_path / "out.pose")
    assert back.body.data.shape == (sequence.num_frames, 1, 50, 3)
    assert back.body.fps == pytest.approx(sequence.fps, rel=1e-5)
    assert [(c.name, tuple(c.points)) for c in back.header.components] == \
        [(c.name, c.points) for c in skeleton.components]
    again = to_sequence(back, skeleton)
    observed = sequence.confidence > 0
    assert np.abs(again.data[observed] - sequence.data[observed]).max() < 1e-4


def test_inverse_normalisation_restores_the_original_coordinates(skeleton):
    pose = read_pose(POSES / "lexicon_sgg" / "pizza.pose")
    sequence = to_sequence(pose, skeleton)
    restored = sequence.normalization.invert(sequence.data)
    original = np.ma.filled(pose.body.data[:, 0, skeleton.joint_index("POSE_LANDMARKS", "LEFT_WRIST")], 0)
    observed = sequence.confidence[:, skeleton.joint_index("POSE_LANDMARKS", "LEFT_WRIST")] > 0
    np.testing.assert_allclose(restored[observed, skeleton.joint_index("POSE_LANDMARKS", "LEFT_WRIST")],
                               original[observed], rtol=1e-4, atol=1e-2)


def test_skeleton_round_trips_through_a_dict(skeleton):
    assert Skeleton.from_dict(skeleton.to_dict()) == skeleton


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.pose"
    bad.write_bytes(b"not a pose")
    with pytest.raises(PoseFormatError, match="broken.pose"):
        read_pose(bad)
    with pytest.raises(PoseFormatError, match="no such"):
        read_pose(tmp_path / "absent.pose")


@pytest.mark.parametrize("layout", ["mediapipe", "openpose"])
def test_each_hand_is_found_with_its_wrist_first(layout):
    skeleton = Skeleton.from_pose(read_pose(POSES / "layouts" / f"{layout}.pose"))
    hands = skeleton.hands()
    assert len(hands) == 2 and all(len(hand.joints) == 21 and len(hand.angles) == 19 for hand in hands)
    for hand in hands:
        wrist = skeleton.joints[hand.wrist]
        assert hand.joints[0] == hand.wrist and wrist[0] == hand.name
        assert any(point == "WRIST" for _, point in ALIASES.get(wrist, (wrist,)))  # OpenPose's by alias
        assert {skeleton.joints[joint][0] for joint in hand.joints} == {hand.name}  # one component each
