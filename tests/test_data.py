import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import POSES

from t2p.data import PreparationError, load_manifest, prepare, read_items, shard_paths
from t2p.data.sources import fingerspelling_items, index_items, lexicon_items
from t2p.notation import tokenize
from t2p.training.batches import ShardExamples, collate
from t2p.training.job import model_config_from_manifest


@pytest.fixture(scope="module")
def fingerspelling(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("fingerspelling")
    return out, prepare(fingerspelling_items(), out, source="fingerspelling", progress=False)


def test_fingerspelling_source_is_the_600_real_letters_without_the_fsl_duplicates():
    items = fingerspelling_items()
    assert len(items) == 600
    assert not any(item.language == "fsl" for item in items)
    assert len({item.key for item in items}) == 600
    assert all(item.path.is_file() for item in items)


def test_prepare_writes_every_row_into_disjoint_splits(fingerspelling):
    out, manifest = fingerspelling
    # every letter but the one recording longer than a model's frames (the next test)
    assert manifest["counts"] == {"train": 479, "validation": 60, "test": 60}
    assert sum(shard["rows"] for shard in manifest["shards"]) == 599
    keys = {split: {item.key for item in read_items(out, split)} for split in ("train", "validation", "test")}
    assert sum(len(k) for k in keys.values()) == 599
    assert not (keys["train"] & keys["validation"]) and not (keys["train"] & keys["test"])
    assert not (keys["validation"] & keys["test"])


def test_a_sequence_over_max_frames_is_skipped_named_and_counted_and_no_model_cuts_the_rest(fingerspelling):
    _, manifest = fingerspelling
    # a badly trimmed Greek letter: 269 frames at 25 fps, where a model holds 256 by default
    [skip] = manifest["skipped"]
    assert skip["path"].endswith("gss/fs-stsac418fb13dce8b253c46824b350b6927.pose")
    assert skip["reason"].startswith("269 frames at 25 fps, more than max_frames 256")
    assert manifest["max_frames"] == {"limit": 256, "longest": 105, "skipped": 1}
    assert model_config_from_manifest(manifest).max_frames == 256  # the limit the data was prepared for
    assert model_config_from_manifest(manifest, max_frames=105).max_frames == 105
    with pytest.raises(ValueError, match=r"max_frames 104 is below the data's longest sequence \(105 frames\)"):
        model_config_from_manifest(manifest, max_frames=104)


def test_manifest_describes_skeleton_statistics_and_vocabulary(fingerspelling):
    out, manifest = fingerspelling
    assert load_manifest(out) == manifest
    assert manifest["source"] == "fingerspelling" and manifest["fps"] == 25.0
    joints = sum(len(c["points"]) for c in manifest["skeleton"]["components"])
    assert joints == 50 and len(manifest["statistics"]["neutral_pose"]) == 50 * 3
    assert "lang:ase" in manifest["vocabulary"] and "text:A" in manifest["vocabulary"]
    assert not list(out.glob("*.partial"))


def test_splits_are_deterministic_and_follow_the_seed(fingerspelling, tmp_path):
    out, _ = fingerspelling
    items = fingerspelling_items()[:60]
    prepare(items, tmp_path / "a", source="fingerspelling", seed=1, progress=False)
    prepare(items, tmp_path / "b", source="fingerspelling", seed=1, progress=False)
    prepare(items, tmp_path / "c", source="fingerspelling", seed=2, progress=False)
    test_keys = lambda path: sorted(item.key for item in read_items(path, "test"))
    assert test_keys(tmp_path / "a") == test_keys(tmp_path / "b")
    assert test_keys(tmp_path / "a") != test_keys(tmp_path / "c")


def test_signwriting_notation_keeps_letters_the_signwriting_package_can_spell(tmp_path):
    items = fingerspelling_items("signwriting")
    assert 250 < len(items) < 600
    assert {"ase", "gsg", "sgg"} <= {item.language for item in items}
    for item in items[:50]:
        assert tokenize_ok(item)
    # the same texts every time: `spell` picks among a letter's variants at random unless seeded
    assert [item.text for item in fingerspelling_items("signwriting")] == [item.text for item in items]


def tokenize_ok(item):
    from t2p.notation import SignText
    return len(tokenize(SignText(item.text, "signwriting", item.language))) > 3


def test_lexicon_source_reads_the_spoken_to_signed_format(tmp_path):
    items = lexicon_items(POSES / "lexicon_sgg" / "index.csv")
    assert sorted(item.text for item in items) == ["essen", "kinder", "kleine", "pizza"]
    manifest = prepare(items, tmp_path, source="lexicon", fractions=(0.5, 0.25, 0.25), progress=False)
    assert manifest["counts"] == {"train": 2, "validation": 1, "test": 1}


def _write_index(folder, rows):
    """`folder`/index.jsonl holding these rows, one JSON object a line."""
    index = folder / "index.jsonl"
    index.write_text("\n".join(json.dumps(row) for row in rows))
    return index


def _index_with_bad_files(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    shutil.copy(POSES / "lexicon_sgg" / "essen.pose", folder / "essen.pose")
    shutil.copy(POSES / "lexicon_sgg" / "pizza.pose", folder / "pizza.pose")
    (folder / "broken.pose").write_bytes(b"\x00\x01 definitely not a pose")
    rows = [{"path": "essen.pose", "text": "ESSEN", "notation": "text", "language": "sgg", "split": "train"},
            {"path": "pizza.pose", "text": "PIZZA", "notation": "text", "language": "sgg", "split": "validation"},
            {"path": "broken.pose", "text": "KAPUTT", "notation": "text", "language": "sgg"},
            {"path": "missing.pose", "text": "FEHLT", "notation": "text", "language": "sgg"}]
    return _write_index(folder, rows)


def test_a_bad_file_fails_prepare_with_its_path_and_writes_no_manifest(tmp_path):
    index = _index_with_bad_files(tmp_path)
    with pytest.raises(PreparationError, match=r"broken\.pose.*--skip-bad"):
        prepare(index_items(index), tmp_path / "out", source="index", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_skip_bad_counts_what_it_skipped(tmp_path):
    index = _index_with_bad_files(tmp_path)
    manifest = prepare(index_items(index), tmp_path / "out", source="index", skip_bad=True, progress=False)
    assert len(manifest["skipped"]) == 2
    assert {"broken.pose", "missing.pose"} == {entry["path"].split("/")[-1] for entry in manifest["skipped"]}
    assert manifest["counts"] == {"train": 1, "validation": 1, "test": 0}  # the index's own splits are kept


def _index_with_a_file_of_another_layout(tmp_path):
    """Four real recordings and one readable .pose of a layout no skeleton maps (one 'BODY' point):
    the scan reads it, only the conversion onto the skeleton fails."""
    from t2p.pose import Skeleton, SkeletonComponent, to_pose, write_pose
    toy = Skeleton("toy", (SkeletonComponent("BODY", ("P",), (), ((255, 0, 0),), "XYC"),), 2)
    write_pose(to_pose(np.zeros((3, 1, 2), np.float32), toy, fps=25), tmp_path / "toy.pose")
    rows = [{"path": str(POSES / "lexicon_sgg" / f"{word}.pose"), "text": word, "notation": "text", "language": "sgg"}
            for word in ("essen", "kinder", "kleine", "pizza")]
    rows.insert(2, {"path": str(tmp_path / "toy.pose"), "text": "toy", "notation": "text", "language": "sgg"})
    return _write_index(tmp_path, rows)


def test_a_file_that_fails_conversion_is_named_and_counted_or_fails_the_run_leaving_no_shards(tmp_path):
    index = _index_with_a_file_of_another_layout(tmp_path)
    with pytest.raises(PreparationError, match=r"toy\.pose: .*unsupported pose layout.*--skip-bad"):
        prepare(index_items(index), tmp_path / "failed", source="index", fractions=(1, 0, 0), progress=False)
    assert not list((tmp_path / "failed").iterdir())
    manifest = prepare(index_items(index), tmp_path / "out", source="index", fractions=(1, 0, 0), skip_bad=True,
                       progress=False)
    [skip] = manifest["skipped"]
    assert skip["path"] == str(tmp_path / "toy.pose") and "unsupported pose layout" in skip["reason"]
    assert manifest["counts"]["train"] == 4 == sum(shard["rows"] for shard in manifest["shards"])


def test_rows_do_not_depend_on_how_many_go_into_one_shard_task(tmp_path):
    # one Ray task per shard: four tasks of one row each write what one task of four writes
    items = lexicon_items(POSES / "lexicon_sgg" / "index.csv")
    whole = prepare(items, tmp_path / "whole", source="lexicon", fractions=(1, 0, 0), progress=False)
    apart = prepare(items, tmp_path / "apart", source="lexicon", fractions=(1, 0, 0), shard_rows=1, progress=False)
    assert [shard["rows"] for shard in whole["shards"]] == [4] and [s["rows"] for s in apart["shards"]] == [1] * 4
    rows = lambda folder, manifest: [row for shard in manifest["shards"]  # noqa: E731
                                     for row in pq.read_table(folder / shard["path"]).to_pylist()]
    assert rows(tmp_path / "whole", whole) == rows(tmp_path / "apart", apart)  # the same rows in the same order
    same = ("statistics", "vocabulary", "output_normalization", "output_canvas", "frame_rate", "max_frames")
    assert {key: whole[key] for key in same} == {key: apart[key] for key in same}


def test_index_rejects_unknown_splits_and_missing_columns(tmp_path):
    bad_split = tmp_path / "a.csv"
    bad_split.write_text("path,text,notation,language,split\nx.pose,A,text,ase,dev\n")
    with pytest.raises(ValueError, match="split must be one of train, validation, test"):
        index_items(bad_split)
    no_text = tmp_path / "b.csv"
    no_text.write_text("path,notation,language\nx.pose,text,ase\n")
    with pytest.raises(ValueError, match="lacks column"):
        index_items(no_text)


def test_shard_rows_decode_into_examples_that_collate_into_a_padded_masked_batch(fingerspelling):
    out, manifest = fingerspelling
    table = pq.read_table(shard_paths(out, "validation")[0]).slice(0, 5)
    columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    batch = collate(ShardExamples(manifest["vocabulary"], (50, 3))(columns), max_frames=256)
    items = read_items(out, "validation", limit=5)
    assert batch.lengths.tolist() == [item.sequence.num_frames for item in items]
    for i, item in enumerate(items):
        np.testing.assert_array_equal(batch.poses[i, :item.sequence.num_frames].numpy(), item.sequence.data)
        assert not batch.frame_mask[i, item.sequence.num_frames:].any()
        assert (batch.confidence[i, item.sequence.num_frames:] == 0).all()
