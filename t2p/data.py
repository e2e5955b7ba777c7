"""Training examples and batches: typed, padded, masked.

An `Example` is one sign: its token ids and its pose sequence. `collate` pads a list of them into a
`PoseBatch`; `statistics` turns training sequences into the normaliser statistics and neutral pose
that are stored with the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from t2p.model import pad_tokens
# preparation, also reachable from here as before it had a module of its own
from t2p.preparation import (MANIFEST_FILE, SHARD_FORMAT_VERSION, SPLIT_BY,  # noqa: F401
                             PreparationError, assign_splits, prepare, statistics)
# the sources' loaders, also reachable from here as before they had a module of their own
from t2p.sources import (SPLITS, SourceItem, fingerspelling_items, fingerspelling_lexicon_dir,  # noqa: F401
                         index_items, lexicon_items)

if TYPE_CHECKING:
    from t2p.model import ModelConfig
    from t2p.notation import SignText
    from t2p.pose import PoseSequence


@dataclass
class Example:
    tokens: list[int]
    poses: np.ndarray       # (frames, joints, dims) shoulder-normalised
    confidence: np.ndarray  # (frames, joints), 0 = missing


@dataclass
class PoseBatch:
    poses: torch.Tensor       # (batch, frames, joints, dims)
    confidence: torch.Tensor  # (batch, frames, joints); 0 for missing keypoints and padding
    frame_mask: torch.Tensor  # (batch, frames) True = real frame
    lengths: torch.Tensor     # (batch,)
    tokens: torch.Tensor      # (batch, tokens)
    token_mask: torch.Tensor  # (batch, tokens) True = real token

    def to(self, device: torch.device | str) -> "PoseBatch":
        return PoseBatch(*(getattr(self, name).to(device) for name in
                           ("poses", "confidence", "frame_mask", "lengths", "tokens", "token_mask")))

    @property
    def size(self) -> int:
        return int(self.poses.shape[0])


def collate(examples: Sequence[Example], max_frames: int | None = None) -> PoseBatch:
    """Pad variable-length examples into one batch; sequences longer than max_frames are cut."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(e.poses) if max_frames is None else min(len(e.poses), max_frames) for e in examples]
    longest = max(lengths)
    joints, dims = examples[0].poses.shape[1:]
    poses = torch.zeros(len(examples), longest, joints, dims)
    confidence = torch.zeros(len(examples), longest, joints)
    tokens, token_mask = pad_tokens([example.tokens for example in examples])
    for i, (example, length) in enumerate(zip(examples, lengths)):
        poses[i, :length] = torch.as_tensor(example.poses[:length], dtype=torch.float32)
        confidence[i, :length] = torch.as_tensor(example.confidence[:length], dtype=torch.float32)
    length_tensor = torch.tensor(lengths)
    frame_mask = torch.arange(longest).unsqueeze(0) < length_tensor.unsqueeze(1)
    return PoseBatch(poses, confidence, frame_mask, length_tensor, tokens, token_mask)


@dataclass
class LengthBatch:
    """What the length predictor learns from: the text, the first pose and the length of examples
    drawn at random, not the length-grouped pose batch (whose near-equal lengths pulled every
    prediction towards the batch's length: held-out MAE 3.2 -> 3.6 frames, docs/quality.md)."""
    tokens: torch.Tensor            # (batch, tokens)
    token_mask: torch.Tensor        # (batch, tokens) True = real token
    first_pose: torch.Tensor        # (batch, joints, dims)
    first_confidence: torch.Tensor  # (batch, joints)
    lengths: torch.Tensor           # (batch,) frames

    def to(self, device: torch.device | str) -> "LengthBatch":
        return LengthBatch(*(getattr(self, name).to(device) for name in
                             ("tokens", "token_mask", "first_pose", "first_confidence", "lengths")))


def collate_lengths(examples: Sequence[Example]) -> LengthBatch:
    if not examples:
        raise ValueError("cannot collate an empty batch")
    tokens, token_mask = pad_tokens([example.tokens for example in examples])
    return LengthBatch(tokens, token_mask,
                       torch.as_tensor(np.stack([example.poses[0] for example in examples]), dtype=torch.float32),
                       torch.as_tensor(np.stack([example.confidence[0] for example in examples]), dtype=torch.float32),
                       torch.tensor([len(example.poses) for example in examples]))


# --- Prepared data: Parquet shards + manifest.json (written by `t2p.preparation.prepare`) -----

@dataclass
class PreparedItem:
    """One prepared row, as read back from a shard."""
    id: str
    key: str
    split: str
    sign: "SignText"
    gloss: str
    sequence: "PoseSequence"
    source_path: str
    signer: str | None = None


def load_manifest(data_dir: str | Path) -> dict:
    import json
    path = Path(data_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{data_dir} has no {MANIFEST_FILE}: run `t2p prepare` first")
    manifest = json.loads(path.read_text(encoding="utf-8"))
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
    from t2p.notation import SignText
    from t2p.pose import Normalization, PoseSequence
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
    dims = _skeleton_dims(manifest)
    items = []
    for path in shard_paths(data_dir, split):
        for row in pq.read_table(path).to_pylist():
            items.append(row_to_item(row, dims))
            if limit is not None and len(items) >= limit:
                return items
    return items


def _skeleton_dims(manifest: dict) -> tuple[int, int]:
    skeleton = manifest["skeleton"]
    return sum(len(c["points"]) for c in skeleton["components"]), int(skeleton["dims"])


class ShardExamples:
    """Ray Data batch (dict of column arrays) -> `Example`s: decodes poses, encodes texts."""

    def __init__(self, vocabulary: Sequence[str], skeleton_dims: tuple[int, int]):
        self.vocabulary_tokens = tuple(vocabulary)
        self.skeleton_dims = tuple(skeleton_dims)
        self._vocabulary = None

    def __call__(self, columns: dict) -> list[Example]:
        from t2p.notation import Vocabulary
        if self._vocabulary is None:
            self._vocabulary = Vocabulary(self.vocabulary_tokens)
        examples = []
        for i in range(len(columns["id"])):
            item = row_to_item({name: values[i] for name, values in columns.items()}, self.skeleton_dims)
            examples.append(Example(self._vocabulary.encode(item.sign), item.sequence.data, item.sequence.confidence))
        return examples


def training_texts(data_dir: str | Path) -> dict[str, list[str]]:
    """language ("" for none) -> the texts of the training split, read from its shards."""
    import pyarrow.parquet as pq
    texts: dict[str, set[str]] = {}
    for path in shard_paths(data_dir, "train"):
        table = pq.read_table(path, columns=["text", "language"]).to_pydict()
        for text, language in zip(table["text"], table["language"]):
            texts.setdefault(language or "", set()).add(text)
    return {language: sorted(values) for language, values in sorted(texts.items())}


def model_config_from_manifest(manifest: dict, **overrides) -> ModelConfig:
    """A model config for prepared data: vocabulary, skeleton, notations, frame limit, statistics and
    output space come from the manifest; hyperparameters from `overrides` (any `ModelConfig` field).

    A `max_frames` below the data's longest sequence raises: training would cut those sequences."""
    from t2p.config import from_dict
    from t2p.model import ModelConfig
    limit = manifest["max_frames"]
    settings = dict(vocabulary=manifest["vocabulary"], skeleton=manifest["skeleton"], fps=manifest["fps"],
                    default_notation=manifest["notation"][0], notations=manifest["notation"],
                    max_frames=limit["limit"], output_normalization=manifest["output_normalization"],
                    output_canvas=manifest["output_canvas"], **manifest["statistics"])
    settings.update(overrides)
    if settings["max_frames"] < limit["longest"]:
        raise ValueError(f"max_frames {settings['max_frames']} is below the data's longest sequence "
                         f"({limit['longest']} frames), which training would cut: use max_frames >= "
                         f"{limit['longest']}, or prepare again with --max-frames {settings['max_frames']} to skip "
                         "the longer ones")
    return from_dict(ModelConfig, settings, what="model config")
