"""Training examples and batches: typed, padded, masked.

An `Example` is one sign: its token ids and its pose sequence. `collate` pads a list of them into a
`PoseBatch`; `statistics` turns training sequences into the normaliser statistics and neutral pose
that are stored with the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from t2p.config import written_whole
from t2p.model import pad_tokens
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


def statistics(sequences: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Normaliser statistics, neutral first pose and length prior from (poses, confidence) pairs.

    Returns keys of `ModelConfig`: pose_mean, pose_std, neutral_pose, log_length_prior.
    """
    if not sequences:
        raise ValueError("no sequences to compute statistics from")
    joints, dims = sequences[0][0].shape[1:]
    total = np.zeros((joints, dims))
    squares = np.zeros((joints, dims))
    count = np.zeros((joints, 1))
    first_total = np.zeros((joints, dims))
    first_count = np.zeros((joints, 1))
    for poses, confidence in sequences:
        observed = (confidence > 0)[..., None]
        total += (poses * observed).sum(0)
        squares += (poses ** 2 * observed).sum(0)
        count += observed.sum(0)
        first_total += poses[0] * observed[0]
        first_count += observed[0]
    mean = total / np.maximum(count, 1)
    # one spread per axis over all joints: per-joint spreads of near-static joints (or of depth)
    # are tiny and would make their errors dominate the loss
    overall_mean = total.sum(0) / max(count.sum(), 1)
    variance = squares.sum(0) / max(count.sum(), 1) - overall_mean ** 2
    axis_std = np.sqrt(np.maximum(variance, 0))
    axis_std = np.maximum(axis_std, max(0.1 * axis_std.max(), 1e-3))
    std = np.broadcast_to(axis_std, (joints, dims))
    # joints never seen in a first frame fall back to their overall mean
    neutral = np.where(first_count > 0, first_total / np.maximum(first_count, 1), mean)
    log_lengths = [math.log(max(len(poses), 1)) for poses, _ in sequences]
    return {"pose_mean": mean.reshape(-1).astype(float).tolist(),
            "pose_std": std.reshape(-1).astype(float).tolist(),
            "neutral_pose": neutral.reshape(-1).astype(float).tolist(),
            "log_length_prior": float(np.mean(log_lengths))}


# --- Preparation: Parquet shards + manifest.json ---------------------------------------------

MANIFEST_FILE = "manifest.json"
SHARD_FORMAT_VERSION = 4  # 2: decomposed (NFD) text characters; 3: a signer column; 4: one frame rate, 2D kept 2D
SPLIT_BY = ("key", "signer")


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


def assign_splits(items: Sequence[SourceItem], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  seed: int = 0, by: str = "key") -> list[str]:
    """Deterministic splits that hold out whole keys (the same sign), or with `by="signer"` whole
    signers (fractions of signers; every item needs one); an item's own split (from its index) wins,
    and with `by="signer"` it carries the signer's other items along (two such splits for one signer raise)."""
    import random
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    if by == "signer":
        return _assign_by_signer(items, fractions, seed)
    if by != "key":
        raise ValueError(f"split by one of {', '.join(SPLIT_BY)}, not {by!r}")
    keys = sorted({item.key for item in items if item.split is None})
    random.Random(seed).shuffle(keys)
    train_end = round(len(keys) * fractions[0])
    validation_end = train_end + round(len(keys) * fractions[1])
    if len(keys) >= 3 and fractions[1] > 0 and validation_end == train_end:
        validation_end, train_end = train_end, train_end - 1  # at least one validation key
    by_key = {key: ("train" if i < train_end else "validation" if i < validation_end else "test")
              for i, key in enumerate(keys)}
    return [item.split or by_key[item.key] for item in items]


def _assign_by_signer(items: Sequence[SourceItem], fractions: tuple[float, float, float], seed: int) -> list[str]:
    unsigned = [item for item in items if item.signer is None]
    if unsigned:
        raise ValueError(f"splitting by signer needs a signer for every item; {len(unsigned)} of {len(items)} have "
                         f"none (the first: {unsigned[0].path})")
    fixed: dict[str, str] = {}
    for item in items:
        if item.split is not None and fixed.setdefault(item.signer, item.split) != item.split:
            raise ValueError(f"signer {item.signer!r} is fixed to both {fixed[item.signer]} and {item.split} by the "
                             "index; a signer-independent split keeps every signer in one split")
    signers = [SourceItem(Path(), "", "text", None, signer, split=fixed.get(signer))
               for signer in sorted({item.signer for item in items})]
    by_signer = dict(zip((s.key for s in signers), assign_splits(signers, fractions, seed)))
    return [by_signer[item.signer] for item in items]


def prepare(items: Sequence[SourceItem], out_dir: str | Path, *, source: str, skeleton: str = "upper_body",
            fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0, skip_bad: bool = False,
            shard_rows: int = 256, progress: bool = True, max_length_ratio: float | None = None,
            split_by: str = "key", missing: Sequence[str] = (), fps: float | None = None) -> dict:
    """Read every item's `.pose` onto one skeleton and write Parquet shards per split + manifest.json.

    A missing or corrupt file raises `PreparationError` naming it, unless `skip_bad`, in which case
    it is skipped and counted. With `max_length_ratio`, a recording more than that many times as
    long as the median of its language is skipped too (badly trimmed files: two Greek letters of the
    fingerspelling lexicon run 105 and 258 frames against a median of 8, and their error was 90x
    the median example's, a few batches that made the training loss jump tenfold); every skip is
    listed in the manifest. Shards are written under a temporary name and renamed when complete;
    the manifest is written last, so it never lists a half-written shard.

    An item's `start_ms`/`end_ms` cut its segment out of the recording (`pose.segment`) and `mirror`
    flips a left-handed signer's recording (`pose.mirror`) before it is mapped onto the skeleton.
    `split_by` "signer" holds out whole signers (`assign_splits`); the manifest counts rows and
    signers per split. `missing` names index entries the source found no recording for (Ham2Pose's
    ids without a file); they are counted and listed in the manifest.

    One clock and one dimensionality for the corpus, both decided from every readable recording
    before any is converted: each sequence is resampled to `fps` (default the recordings' median
    rate, the lower one of an even count, so that no frames are made up between two rates) by
    pose-format's interpolation (`pose.resample`), and the skeleton is 2D if any recording is 2D (a
    3D one then loses its depth: a 2D recording's depth is unknown, and one missing axis would need
    a per-axis mask the model does not have). The manifest's `frame_rate` and `dimensions` say
    what was found and done.
    """
    import json
    from statistics import median_low

    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from t2p.notation import Vocabulary, SignText, tokenize
    from t2p.pose import PoseFormatError, Skeleton, num_dims, resample, to_sequence

    if not items:
        raise ValueError("nothing to prepare: the source has no items")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps:g}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = assign_splits(items, fractions, seed, by=split_by)
    skipped: list[dict] = []

    def failed(item: SourceItem, error: Exception) -> None:
        if not skip_bad:
            # read_pose's errors already name the file; the others get it in front
            message = str(error) if str(item.path) in str(error) else f"{item.path}: {error}"
            raise PreparationError(f"{message} (use --skip-bad to skip unreadable items)") from None
        skipped.append({"path": str(item.path), "reason": str(error)})

    # pass 1: every readable recording's frame rate and dimensionality (nothing kept but those)
    readable, rates, dimensions, first = [], [], [], None
    for number, (item, split) in enumerate(tqdm(list(zip(items, splits)), desc="scan", unit="pose",
                                                disable=not progress)):
        try:
            pose = _recording(item)
        except (PoseFormatError, ValueError) as error:
            failed(item, error)
            continue
        readable.append((number, item, split))
        rates.append(float(pose.body.fps))
        dimensions.append(num_dims(pose))
        first = pose if first is None else first
    if first is None:
        raise PreparationError(f"no readable item among {len(items)}")
    target_fps = float(fps) if fps is not None else float(median_low(rates))
    chosen_skeleton = Skeleton.from_pose(first, skeleton, dims=min(dimensions))

    # pass 2: each recording onto the skeleton, at the corpus's rate
    rows: dict[str, list[dict]] = {name: [] for name in SPLITS}
    train_sequences, train_signs = [], []
    mirrored = resampled = 0  # rows prepared from a mirrored recording / at another rate than recorded
    for number, item, split in tqdm(readable, desc="prepare", unit="pose", disable=not progress):
        sign = SignText(item.text, item.notation, item.language)
        try:
            tokenize(sign)
            recorded = to_sequence(_recording(item), chosen_skeleton)
            sequence = resample(recorded, target_fps)
        except (PoseFormatError, ValueError) as error:
            failed(item, error)
            continue
        row_id = f"{number:06d}"
        mirrored += item.mirror
        resampled += sequence is not recorded
        rows[split].append({
            "id": row_id, "key": item.key, "split": split, "text": item.text, "notation": item.notation,
            "language": item.language, "gloss": item.gloss, "source_path": str(item.path), "signer": item.signer,
            "frames": sequence.num_frames, "fps": sequence.fps,
            "poses": sequence.data.astype(np.float32).tobytes(),
            "confidence": sequence.confidence.astype(np.float32).tobytes(),
            "norm_center": [float(v) for v in sequence.normalization.center],
            "norm_scale": float(sequence.normalization.scale), "canvas": list(sequence.canvas),
        })
        if split == "train":
            train_sequences.append((sequence.data, sequence.confidence))
            train_signs.append(sign)
    if max_length_ratio is not None:
        rows, train_sequences, train_signs = _drop_long_outliers(rows, train_sequences, train_signs, max_length_ratio,
                                                                 skipped)
    if not train_sequences:
        raise PreparationError("the training split is empty: give more items or other split fractions")

    # rows in a seeded random order: sources come sorted (e.g. by language), and training reads shards
    # whole, so a shard of one language would be an epoch's worth of one language for a worker
    order = np.random.default_rng(seed)
    rows = {split: [split_rows[i] for i in order.permutation(len(split_rows))] for split, split_rows in rows.items()}
    shards = []
    for split, split_rows in rows.items():
        for begin in range(0, len(split_rows), shard_rows):
            name = f"{split}-{begin // shard_rows:05d}.parquet"
            table = pa.Table.from_pylist(split_rows[begin:begin + shard_rows], schema=_SHARD_SCHEMA)
            with written_whole(out_dir / name) as partial:
                pq.write_table(table, partial)
            shards.append({"path": name, "split": split, "rows": table.num_rows})

    train_rows = rows["train"]
    manifest = {
        "t2p_shards": SHARD_FORMAT_VERSION,
        "source": source,
        "notation": sorted({item.notation for item in items}),
        "skeleton": chosen_skeleton.to_dict(),
        "fps": target_fps,
        "frame_rate": {"fps": target_fps, "chosen": "given" if fps is not None else "median",
                       "recordings": _counts(f"{round(rate, 3):g}" for rate in rates), "resampled": resampled},
        "dimensions": {"skeleton": chosen_skeleton.dims, "recordings": _counts(str(d) for d in dimensions),
                       "mixed": len(set(dimensions)) > 1,
                       "depth_dropped": sum(d > chosen_skeleton.dims for d in dimensions)},
        "shards": shards,
        "counts": {split: len(split_rows) for split, split_rows in rows.items()},
        "signers": {split: len({r["signer"] for r in split_rows if r["signer"] is not None})
                    for split, split_rows in rows.items()},
        "splits": {"fractions": list(fractions), "seed": seed, "held_out_by": split_by},
        "skipped": skipped,
        "missing": {"count": len(missing), "ids": sorted(missing)},
        "mirrored": mirrored,
        "statistics": statistics(train_sequences),
        "vocabulary": list(Vocabulary.build(train_signs).tokens),
        "output_normalization": {
            "center": np.mean([r["norm_center"] for r in train_rows], axis=0).astype(float).tolist(),
            "scale": float(np.mean([r["norm_scale"] for r in train_rows]))},
        "output_canvas": [int(v) for v in np.median([r["canvas"] for r in train_rows], axis=0)],
    }
    with written_whole(out_dir / MANIFEST_FILE) as partial:
        partial.write_text(json.dumps(manifest, ensure_ascii=False, indent=1))
    return manifest


def _recording(item: SourceItem):
    """An item's recording as pose-format reads it: its segment, mirrored where the source says."""
    from t2p.pose import mirror, read_pose, segment
    pose = read_pose(item.path)
    if item.start_ms or item.end_ms:
        pose = segment(pose, item.start_ms, item.end_ms)
    return mirror(pose) if item.mirror else pose


def _counts(values) -> dict[str, int]:
    """value -> how many times it occurs, in sorted order of the values."""
    from collections import Counter
    return dict(sorted(Counter(values).items()))


def _drop_long_outliers(rows: dict[str, list[dict]], train_sequences: list, train_signs: list, ratio: float,
                        skipped: list[dict]) -> tuple[dict, list, list]:
    """Rows longer than `ratio` x their language's median length, moved to `skipped`."""
    lengths: dict[str, list[int]] = {}
    for split_rows in rows.values():
        for row in split_rows:
            lengths.setdefault(row["language"] or "", []).append(row["frames"])
    limit = {language: ratio * float(np.median(values)) for language, values in lengths.items()}
    too_long = lambda row: row["frames"] > limit[row["language"] or ""]  # noqa: E731
    kept_train = [i for i, row in enumerate(rows["train"]) if not too_long(row)]
    for split_rows in rows.values():
        for row in split_rows:
            if too_long(row):
                skipped.append({"path": row["source_path"], "reason": f"{row['frames']} frames, more than "
                                f"{ratio:g}x the median of its language ({limit[row['language'] or '']:.0f} allowed)"})
    rows = {split: [row for row in split_rows if not too_long(row)] for split, split_rows in rows.items()}
    return rows, [train_sequences[i] for i in kept_train], [train_signs[i] for i in kept_train]


class PreparationError(RuntimeError):
    """An item that cannot be prepared; the message names its file."""


def _shard_schema():
    import pyarrow as pa
    return pa.schema([
        ("id", pa.string()), ("key", pa.string()), ("split", pa.string()), ("text", pa.string()),
        ("notation", pa.string()), ("language", pa.string()), ("gloss", pa.string()),
        ("source_path", pa.string()), ("signer", pa.string()), ("frames", pa.int32()), ("fps", pa.float32()),
        ("poses", pa.binary()), ("confidence", pa.binary()),
        ("norm_center", pa.list_(pa.float32())), ("norm_scale", pa.float32()), ("canvas", pa.list_(pa.int32())),
    ])


_SHARD_SCHEMA = _shard_schema()


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
    """A model config for prepared data: vocabulary, skeleton, statistics and output space come
    from the manifest; hyperparameters from `overrides` (any `ModelConfig` field)."""
    from t2p.config import from_dict
    from t2p.model import ModelConfig
    settings = dict(vocabulary=manifest["vocabulary"], skeleton=manifest["skeleton"], fps=manifest["fps"],
                    default_notation=manifest["notation"][0],
                    output_normalization=manifest["output_normalization"],
                    output_canvas=manifest["output_canvas"], **manifest["statistics"])
    settings.update(overrides)
    return from_dict(ModelConfig, settings, what="model config")
