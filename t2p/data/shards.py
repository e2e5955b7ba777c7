"""Prepared data: Parquet shards + manifest.json (written by `t2p.data.prepare`), read back.

`load_manifest` checks the shard format; `read_items` reads a split's rows as `PreparedItem`s (for
evaluation, validation and small data: training streams the shards through Ray Data and turns
rows into examples with `row_to_item`, `t2p.training.batches.ShardExamples`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2p.config import read_json
from t2p.data.sources import SPLITS
from t2p.notation import SignText
from t2p.pose import Normalization, PoseSequence

MANIFEST_FILE = "manifest.json"
# 2: decomposed (NFD) text characters; 3: a signer column; 4: one frame rate, 2D kept 2D;
# 5: sequences over max_frames skipped, the limit in the manifest (training checks its model against it)
SHARD_FORMAT_VERSION = 5


@dataclass
class PreparedItem:
    """One prepared row, as read back from a shard."""
    id: str
    key: str
    split: str
    sign: SignText
    gloss: str
    sequence: PoseSequence
    source_path: str
    signer: str | None = None


def load_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{data_dir} has no {MANIFEST_FILE}: run `t2p prepare` first")
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not a t2p manifest (expected a JSON object); prepare the data again (t2p prepare)")
    if manifest.get("t2p_shards") != SHARD_FORMAT_VERSION:
        raise ValueError(f"{path}: shard format {manifest.get('t2p_shards')!r}, this t2p reads format "
                         f"{SHARD_FORMAT_VERSION}; prepare the data again (t2p prepare)")
    return manifest


def shard_paths(data_dir: str | Path, split: str) -> list[str]:
    """Absolute paths of one split's shards, as listed in the manifest."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    manifest = load_manifest(data_dir)
    return [str((Path(data_dir) / shard["path"]).resolve()) for shard in manifest["shards"] if shard["split"] == split]


def row_to_item(row: dict, skeleton_dims: tuple[int, int]) -> PreparedItem:
    """A shard row (a dict of Python/numpy values) as a `PreparedItem`."""
    joints, dims = skeleton_dims
    frames = int(row["frames"])
    data = np.frombuffer(row["poses"], dtype=np.float32).reshape(frames, joints, dims).copy()
    confidence = np.frombuffer(row["confidence"], dtype=np.float32).reshape(frames, joints).copy()
    sequence = PoseSequence(data, confidence, float(row["fps"]),
                            Normalization(np.asarray(row["norm_center"], np.float32), float(row["norm_scale"])),
                            tuple(int(v) for v in row["canvas"]))
    return PreparedItem(row["id"], row["key"], row["split"], SignText(row["text"], row["notation"], row["language"]),
                        row["gloss"], sequence, row["source_path"], row.get("signer"))


def read_items(data_dir: str | Path, split: str, limit: int | None = None) -> list[PreparedItem]:
    """Rows of one split, read with pyarrow (for evaluation and small data; training streams via Ray Data)."""
    import pyarrow.parquet as pq
    manifest = load_manifest(data_dir)
    dims = skeleton_dims(manifest)
    items = []
    for path in shard_paths(data_dir, split):
        for row in pq.read_table(path).to_pylist():
            items.append(row_to_item(row, dims))
            if limit is not None and len(items) >= limit:
                return items
    return items


def skeleton_dims(manifest: dict) -> tuple[int, int]:
    skeleton = manifest["skeleton"]
    return sum(len(c["points"]) for c in skeleton["components"]), int(skeleton["dims"])


def training_texts(data_dir: str | Path) -> dict[str, list[str]]:
    """language ("" for none) -> the texts of the training split, read from its shards."""
    import pyarrow.parquet as pq
    texts: dict[str, set[str]] = {}
    for path in shard_paths(data_dir, "train"):
        table = pq.read_table(path, columns=["text", "language"]).to_pydict()
        for text, language in zip(table["text"], table["language"]):
            texts.setdefault(language or "", set()).add(text)
    return {language: sorted(values) for language, values in sorted(texts.items())}
