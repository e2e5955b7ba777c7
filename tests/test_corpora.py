"""Real corpora's layouts (issue 18): Ham2Pose's data.json + <id>.pose folder, lexicon segments, signers.

The Ham2Pose tests are loader tests: its poses are not shipped, so the fixture places the shipped
layout files (tests/data/poses/layouts) under real ids of Ham2Pose's data.json.
"""
import csv
import json
import shutil

import numpy as np
import pytest
from conftest import DATA, POSES

from t2p.cli import main
from t2p.data import PreparationError, SourceItem, prepare, read_items
from t2p.data.ham2pose import ham2pose_items
from t2p.data.prepare import assign_splits
from t2p.data.sources import index_items, lexicon_items
from t2p.pose import Skeleton, mirror, read_pose, segment, to_sequence

HAM2POSE_INDEX = DATA / "hamnosys" / "ham2pose_data.json"
# real ids, one or two per source corpus; the language Ham2Pose's id rule gives each
IDS = {"10010": "gsg", "gsl_1024": "gss", "pjm_9": "pso", "pjm_12": "pso", "FEUILLE": "fsl", "ACCEPTER": "fsl"}


@pytest.fixture
def ham2pose_folder(tmp_path):
    poses = tmp_path / "poses"
    poses.mkdir()
    for sign_id in IDS:
        layout = "mediapipe" if sign_id == "ACCEPTER" else "openpose"  # "in whatever layout they are"
        shutil.copy(POSES / "layouts" / f"{layout}.pose", poses / f"{sign_id}.pose")
    (tmp_path / "left.json").write_text(json.dumps(["pjm_9", "pjm_not_in_the_index"]))
    return tmp_path


def test_ham2pose_reads_data_json_with_languages_from_the_source_and_counts_ids_without_a_file(ham2pose_folder):
    entries = json.loads(HAM2POSE_INDEX.read_text(encoding="utf-8"))
    source = ham2pose_items(HAM2POSE_INDEX, ham2pose_folder / "poses", ham2pose_folder / "left.json")
    assert {item.path.stem: item.language for item in source.items} == IDS
    assert len(source.missing) == len(entries) - len(IDS) and not set(source.missing) & set(IDS)
    for item in source.items:
        assert item.notation == "hamnosys" and item.text == entries[item.path.stem]["hamnosys"]
        assert item.gloss == entries[item.path.stem]["type_name"]
        assert item.mirror == (item.path.stem == "pjm_9")
    assert source.unknown_mirrors == ["pjm_not_in_the_index"]


def test_ham2pose_prepare_lists_missing_ids_in_the_manifest_and_mirrors_the_listed_signer(ham2pose_folder, capsys):
    out = ham2pose_folder / "out"
    assert main(["prepare", "--source", "ham2pose", "--index", str(HAM2POSE_INDEX), "--poses",
                 str(ham2pose_folder / "poses"), "--mirror-list", str(ham2pose_folder / "left.json"),
                 "--out", str(out), "--split", "1,0,0"]) == 0
    printed = capsys.readouterr().out
    assert "6 of 5752 ids" in printed and "5746 without one are left out" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["missing"]["count"] == 5746 and "10014" in manifest["missing"]["ids"]
    assert manifest["mirrored"] == 1 and manifest["counts"]["train"] == 6 and manifest["notation"] == ["hamnosys"]
    rows = {item.source_path.split("/")[-1][:-5]: item.sequence for item in read_items(out, "train")}
    skeleton = Skeleton.from_dict(manifest["skeleton"])
    hands = {hand.name: list(hand.joints) for hand in skeleton.hands()}
    left, right = hands["hand_left_keypoints_2d"], hands["hand_right_keypoints_2d"]
    plain, mirrored = rows["pjm_12"], rows["pjm_9"]  # the same recording, pjm_9 mirrored
    # the mirrored right hand is the plain left hand reflected about the shoulders' centre
    np.testing.assert_array_equal(mirrored.confidence[:, right], plain.confidence[:, left])
    seen = plain.confidence[:, left] > 0
    assert seen.sum() > 100
    np.testing.assert_allclose(mirrored.data[:, right][seen], plain.data[:, left][seen] * [-1, 1], atol=1e-4)
    shoulders = [skeleton.joint_index("pose_keypoints_2d", name) for name in ("LShoulder", "RShoulder")]
    np.testing.assert_allclose(mirrored.data[:, shoulders[0]], plain.data[:, shoulders[1]] * [-1, 1], atol=1e-4)


def test_ham2pose_without_any_pose_file_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "poses").mkdir()
    assert main(["prepare", "--source", "ham2pose", "--index", str(HAM2POSE_INDEX), "--poses",
                 str(tmp_path / "poses"), "--out", str(tmp_path / "out")]) == 2
    assert "no id of" in capsys.readouterr().err
    assert main(["prepare", "--source", "ham2pose", "--index", str(HAM2POSE_INDEX), "--out", str(tmp_path)]) == 2
    assert "needs --poses DIR" in capsys.readouterr().err


def test_mirroring_twice_gives_back_the_recording_for_both_layouts():
    for layout in ("openpose", "mediapipe"):
        pose = read_pose(POSES / "layouts" / f"{layout}.pose")
        twice = mirror(mirror(pose))
        kept = twice.body.confidence > 0
        np.testing.assert_allclose(np.ma.filled(twice.body.data, 0)[kept], np.ma.filled(pose.body.data, 0)[kept], atol=1e-3)
        face = [name == "FACE_LANDMARKS" for c in pose.header.components for name in [c.name] * len(c.points)]
        observed = pose.body.confidence > 0
        # every point comes back; a Holistic face mesh is missing (its mirror table is mediapipe's)
        np.testing.assert_array_equal(kept, observed & ~np.asarray(face) if layout == "mediapipe" else observed)


def _two_halves(tmp_path, end_of_second: int):
    """essen.pose (73 frames at 24 fps) as two lexicon rows cut at 1500 ms."""
    shutil.copy(POSES / "lexicon_sgg" / "essen.pose", tmp_path / "essen.pose")
    rows = [{"path": "essen.pose", "spoken_language": "de", "signed_language": "sgg", "start": start, "end": end,
             "words": word, "glosses": word, "priority": 0, "signer": "s1"}
            for word, start, end in (("essen-a", 0, 1500), ("essen-b", 1500, end_of_second))]
    with open(tmp_path / "index.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_lexicon_segments_are_the_frames_spoken_to_signed_cuts(tmp_path):
    from spoken_to_signed.gloss_to_pose.lookup.lookup import PoseLookup
    rows = _two_halves(tmp_path, end_of_second=73 * 1000 // 24 + 1)
    package = PoseLookup([{k: str(v) for k, v in row.items()} for row in rows], directory=str(tmp_path))
    recording = read_pose(tmp_path / "essen.pose")
    theirs = {row["words"]: package.lookup(row["words"], row["words"], "de", "sgg").pose for row in rows}
    for row in rows:
        ours = segment(recording, row["start"], row["end"])
        np.testing.assert_array_equal(np.ma.filled(ours.body.data, 0), np.ma.filled(theirs[row["words"]].body.data, 0))
    assert sum(len(pose.body.data) for pose in theirs.values()) == 73  # the two halves are the recording
    manifest = prepare(lexicon_items(tmp_path / "index.csv"), tmp_path / "out", source="lexicon",
                       fractions=(1, 0, 0), progress=False)
    frames = {item.gloss: item.sequence.num_frames for item in read_items(tmp_path / "out", "train")}
    assert frames == {word: len(pose.body.data) for word, pose in theirs.items()} == {"essen-a": 36, "essen-b": 37}
    assert manifest["counts"]["train"] == 2


def test_lexicon_end_zero_runs_to_the_end_of_the_file(tmp_path):
    # spoken-to-signed slices [start:-1] for end 0 and so drops the last frame; "0 = whole file" keeps it
    _two_halves(tmp_path, end_of_second=0)
    items = lexicon_items(tmp_path / "index.csv")
    assert [(item.start_ms, item.end_ms) for item in items] == [(0, 1500), (1500, 0)]
    assert len(segment(read_pose(tmp_path / "essen.pose"), 1500, 0).body.data) == 37


def test_lexicon_rejects_bad_segments_with_their_line(tmp_path):
    index = tmp_path / "index.csv"
    index.write_text("path,signed_language,start,end,words\nessen.pose,sgg,2000,1000,essen\n")
    with pytest.raises(ValueError, match=r"index.csv:2: end 1000 ms is not after start 2000 ms"):
        lexicon_items(index)
    index.write_text("path,signed_language,start,end,words\nessen.pose,sgg,1.5s,0,essen\n")
    with pytest.raises(ValueError, match=r"index.csv:2: start must be whole milliseconds"):
        lexicon_items(index)
    shutil.copy(POSES / "lexicon_sgg" / "essen.pose", tmp_path / "essen.pose")
    index.write_text("path,signed_language,start,end,words\nessen.pose,sgg,60000,0,essen\n")
    with pytest.raises(PreparationError, match=r"essen.pose: segment 60000-0 ms is empty: the recording has 73 frames"):
        prepare(lexicon_items(index), tmp_path / "out", source="lexicon", progress=False)


def test_split_by_signer_keeps_every_signer_in_one_split():
    items = [SourceItem(f"{signer}-{sign}.pose", f"sign{sign}", "text", "gsg", f"gsg:sign{sign}", signer=f"s{signer}")
             for signer in range(10) for sign in range(5)]
    splits = assign_splits(items, seed=3, by="signer")
    per_signer = {}
    for item, split in zip(items, splits):
        per_signer.setdefault(item.signer, set()).add(split)
    assert all(len(found) == 1 for found in per_signer.values())
    assert sorted(next(iter(s)) for s in per_signer.values()).count("train") == 8 and set(splits) == {
        "train", "validation", "test"}
    with pytest.raises(ValueError, match="needs a signer for every item; 1 of 51"):
        assign_splits(items + [SourceItem("x.pose", "x", "text", "gsg", "gsg:x")], by="signer")
    fixed = items[:2] + [SourceItem("y.pose", "y", "text", "gsg", "gsg:y", split="test", signer="s0")]
    assert assign_splits(fixed, by="signer") == ["test"] * 3  # an index's split carries its signer along
    fixed.append(SourceItem("z.pose", "z", "text", "gsg", "gsg:z", split="train", signer="s0"))
    with pytest.raises(ValueError, match="signer 's0' is fixed to both test and train"):
        assign_splits(fixed, by="signer")


def test_signer_column_reaches_the_shards_and_the_manifest_counts_signers_per_split(tmp_path):
    index = tmp_path / "index.jsonl"
    signers = {"essen": "anna", "kinder": "anna", "kleine": "ben", "pizza": 7}  # a number is a name too
    index.write_text("\n".join(json.dumps({"path": str(POSES / "lexicon_sgg" / f"{word}.pose"), "text": word,
                                           "notation": "text", "language": "sgg", "signer": signer})
                               for word, signer in signers.items()))
    manifest = prepare(index_items(index), tmp_path / "out", source="index", split_by="signer",
                       fractions=(0.34, 0.33, 0.33), progress=False)
    assert manifest["splits"]["held_out_by"] == "signer"
    assert sum(manifest["signers"].values()) == 3 and sum(manifest["counts"].values()) == 4
    found = {}
    for split in ("train", "validation", "test"):
        for item in read_items(tmp_path / "out", split):
            found.setdefault(item.signer, set()).add(split)
    assert set(found) == {"anna", "ben", "7"} and all(len(s) == 1 for s in found.values())
    assert manifest["counts"][next(iter(found["anna"]))] == 2


# --- One clock (issue 18 item 2) and 2D is 2D (item 3) ---------------------------------------

def _one_recording_at(tmp_path, rates=(25, 50)):
    """openpose.pose (93 frames at 24 fps, 2D) interpolated by pose-format to each rate: the same
    motion, the same duration, other frame counts. An index lists them as one sign each."""
    from pose_format import Pose
    recording = read_pose(POSES / "layouts" / "openpose.pose")
    rows = []
    for rate in rates:
        path = tmp_path / f"openpose_{rate}fps.pose"
        with open(path, "wb") as handle:
            Pose(recording.header, recording.body.interpolate(new_fps=rate)).write(handle)
        rows.append({"path": str(path), "text": f"at{rate}", "notation": "text", "language": "gsg"})
    index = tmp_path / "index.jsonl"
    index.write_text("\n".join(json.dumps(row) for row in rows))
    return index


def test_prepare_resamples_a_50_fps_and_a_25_fps_recording_of_one_sign_to_the_same_frames(tmp_path):
    index = _one_recording_at(tmp_path)
    assert [read_pose(item.path).body.data.shape[0] for item in index_items(index)] == [97, 194]
    manifest = prepare(index_items(index), tmp_path / "out", source="index", fps=25, fractions=(1, 0, 0),
                       progress=False)
    assert manifest["fps"] == 25 and manifest["frame_rate"] == {"fps": 25, "chosen": "given",
                                                                "recordings": {"25": 1, "50": 1}, "resampled": 1}
    rows = {item.sign.text: item.sequence for item in read_items(tmp_path / "out", "train")}
    slow, fast = rows["at25"], rows["at50"]
    assert slow.fps == fast.fps == 25 and slow.num_frames == fast.num_frames == 97  # 3.88 s each
    # the same positions: pose-format's cubic interpolation of the 50 fps one, where both are observed
    both = (slow.confidence > 0) & (fast.confidence > 0)
    assert both.sum() > 0.95 * (slow.confidence > 0).sum()
    np.testing.assert_allclose(fast.data[both], slow.data[both], atol=0.02)  # shoulder widths
    # without --fps the median of the rates, the lower of two: no frames are made up
    again = prepare(index_items(index), tmp_path / "median", source="index", fractions=(1, 0, 0), progress=False)
    assert again["fps"] == 25 and again["frame_rate"]["chosen"] == "median"


def test_a_resampled_gap_stays_missing():
    from t2p.pose import resample_to_fps
    sequence = to_sequence(read_pose(POSES / "layouts" / "openpose.pose"), Skeleton.from_pose(
        read_pose(POSES / "layouts" / "openpose.pose")))
    sequence.confidence[40:50] = 0  # the tracker lost ten frames (0.42 s)
    doubled = resample_to_fps(sequence, 48)
    assert doubled.num_frames == 186 and doubled.fps == 48
    assert not doubled.confidence[81:99].any()  # the gap, at twice the rate, never filled by the spline
    assert np.all(doubled.data[doubled.confidence == 0] == 0)
    assert resample_to_fps(sequence, sequence.fps) is sequence


def test_generation_writes_the_models_rate_whatever_the_first_poses(tmp_path):
    from t2p.data import load_manifest
    from t2p.generation import SignRequest, as_pose, generate
    from t2p.model import T2PModel
    from t2p.pose import load_sequence
    from t2p.training.job import model_config_from_manifest
    index = _one_recording_at(tmp_path)
    prepare(index_items(index), tmp_path / "out", source="index", fps=25, fractions=(1, 0, 0), progress=False)
    model = T2PModel(model_config_from_manifest(load_manifest(tmp_path / "out"), d_model=32, heads=2, text_layers=1,
                                                refiner_layers=1, max_frames=128))
    durations = []
    for item in index_items(index):
        first = load_sequence(item.path, model.skeleton)
        [sequence] = generate(model, [SignRequest("at25", first_pose=first, steps=2)])
        pose = as_pose(model, sequence, first)
        assert pose.body.fps == model.config.fps == 25
        durations.append(pose.body.data.shape[0] / pose.body.fps)
    assert durations[0] == durations[1]  # seconds, from a 25 and a 50 fps first pose alike


def test_a_2d_and_a_3d_recording_make_a_2d_corpus_whose_manifest_reports_the_mix(tmp_path):
    index = tmp_path / "index.jsonl"
    # the 3D one first: the skeleton's dimensions come from every file, not the first one read
    index.write_text("\n".join(json.dumps({"path": str(POSES / "layouts" / f"{layout}.pose"), "text": layout,
                                           "notation": "text", "language": "gsg"})
                               for layout in ("mediapipe", "openpose")))
    manifest = prepare(index_items(index), tmp_path / "out", source="index", fractions=(1, 0, 0), progress=False)
    assert manifest["dimensions"] == {"skeleton": 2, "recordings": {"2": 1, "3": 1}, "mixed": True,
                                      "depth_dropped": 1}
    skeleton = Skeleton.from_dict(manifest["skeleton"])
    assert skeleton.dims == 2 and {c.point_format for c in skeleton.components} == {"XYC"}
    assert skeleton.components[0].name == "POSE_LANDMARKS"  # named as the first file names its points
    assert len(manifest["statistics"]["pose_mean"]) == skeleton.num_joints * 2
    rows = {item.sign.text: item.sequence for item in read_items(tmp_path / "out", "train")}
    assert rows["openpose"].data.shape[-1] == rows["mediapipe"].data.shape[-1] == 2
    # the 3D recording's x, y, normalised by its 2D shoulder width as a 2D recording is
    recorded = read_pose(POSES / "layouts" / "mediapipe.pose")
    flat = to_sequence(recorded, skeleton)
    np.testing.assert_allclose(rows["mediapipe"].data, flat.data, atol=1e-5)
    right, left = (skeleton.joint_index("POSE_LANDMARKS", side + "_SHOULDER") for side in ("RIGHT", "LEFT"))
    seen = (flat.confidence[:, right] > 0) & (flat.confidence[:, left] > 0)
    width = np.linalg.norm(flat.data[seen, right] - flat.data[seen, left], axis=-1).mean()
    assert width == pytest.approx(1.0, abs=0.01)


def test_a_3d_corpus_keeps_its_depth_and_a_2d_one_has_none(tmp_path):
    for layout, dims in (("mediapipe", 3), ("openpose", 2)):
        items = [SourceItem(POSES / "layouts" / f"{layout}.pose", word, "text", "gsg", f"gsg:{word}")
                 for word in ("a", "b")]
        manifest = prepare(items, tmp_path / layout, source="index", fractions=(1, 0, 0), progress=False)
        assert manifest["skeleton"]["dims"] == dims and manifest["dimensions"] == {
            "skeleton": dims, "recordings": {str(dims): 2}, "mixed": False, "depth_dropped": 0}
