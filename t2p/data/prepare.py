"""Preparation on Ray Data: `SourceItem`s -> Parquet shards + manifest.json.

Two parallel passes over the recordings, and nothing but their metadata in the driver:

1. scan: each recording's frame rate, dimensionality and length (Ray tasks of `SCAN_ITEMS` files);
   the corpus's rate, skeleton and which items to keep are decided from these alone;
2. convert: one Ray task per shard reads its `shard_rows` files, maps them onto the skeleton at
   the corpus's rate and writes the shard itself, returning only counts and the sums the
   normaliser statistics are made of. A task holds one shard, so memory is bounded by the shard
   size, never by the corpus.

Workers import this module, which needs pose-format, numpy and pyarrow only (no torch).
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from statistics import median_low
from typing import Sequence

import numpy as np

from t2p.config import write_json, written_whole
from t2p.data.shards import MANIFEST_FILE, SHARD_FORMAT_VERSION
from t2p.data.sources import SPLITS, SourceItem
from t2p.data.statistics import PoseMoments, normaliser
from t2p.notation import SignText, Vocabulary, tokenize
from t2p.pose import (
    MAX_FRAMES,
    PoseFormatError,
    Skeleton,
    mirror,
    num_dims,
    read_pose,
    resample_to_fps,
    resampled_frames,
    segment,
    to_sequence,
)

SPLIT_BY = ("key", "signer")
SCAN_ITEMS = 64           # recordings per scan task: enough to outweigh a task's start


class PreparationError(RuntimeError):
    """An item that cannot be prepared; the message names its file."""


def assign_splits(items: Sequence[SourceItem], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  seed: int = 0, by: str = "key") -> list[str]:
    """Deterministic splits that hold out whole keys (the same sign), or with `by="signer"` whole
    signers (fractions of signers; every item needs one); an item's own split (from its index) wins,
    and with `by="signer"` it carries the signer's other items along (two such splits for one signer raise)."""
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


# --- prepare -------------------------------------------------------------------------------------

@dataclass
class _Kept:
    """A recording the scan found readable, with what the driver decides from."""
    number: int
    item: SourceItem
    split: str
    fps: float
    dims: int
    frames: int  # as recorded; at the corpus's rate once that is known


class _Skips:
    """What preparation leaves out, with the reason: listed in the manifest. Without `skip_bad`, an
    unreadable item is an error instead (a long one is always skipped)."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.entries: list[dict] = []

    def unreadable(self, item: SourceItem, error: str) -> None:
        if not self.skip_bad:
            # read_pose's errors already name the file; the others get it in front
            message = error if str(item.path) in error else f"{item.path}: {error}"
            raise PreparationError(f"{message} (use --skip-bad to skip unreadable items)")
        self.entries.append({"path": str(item.path), "reason": error})

    def add(self, item: SourceItem, reason: str) -> None:
        self.entries.append({"path": str(item.path), "reason": reason})


def prepare(items: Sequence[SourceItem], out_dir: str | Path, *, source: str, skeleton: str = "upper_body",
            fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0, skip_bad: bool = False,
            shard_rows: int = 256, progress: bool = True, max_length_ratio: float | None = None,
            split_by: str = "key", missing: Sequence[str] = (), fps: float | None = None,
            max_frames: int = MAX_FRAMES) -> dict:
    """Read every item's `.pose` onto one skeleton and write Parquet shards per split + manifest.json,
    on Ray Data (the cluster in RAY_ADDRESS, else a local Ray): see the module's docstring.

    A missing or corrupt file raises `PreparationError` naming it, unless `skip_bad`, in which case
    it is skipped and counted. With `max_length_ratio`, a recording more than that many times as
    long as the median of its language is skipped too (badly trimmed files: two Greek letters of the
    fingerspelling lexicon run 105 and 258 frames against a median of 8, and their error was 90x
    the median example's, a few batches that made the training loss jump tenfold). A sequence of
    more than `max_frames` frames (at the corpus's rate) is skipped as well: a model holds that
    many, and training would cut it. Every skip is listed in the manifest with its file and
    reason. Shards are written under a temporary name and renamed when complete; the manifest is
    written last, so it never lists a half-written shard.

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
    if not items:
        raise ValueError("nothing to prepare: the source has no items")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps:g}")
    if max_frames < 1 or shard_rows < 1:
        raise ValueError(f"max_frames and shard_rows must be >= 1, got {max_frames} and {shard_rows}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skips = _Skips(skip_bad)
    kept = _scan_recordings(items, assign_splits(items, fractions, seed, by=split_by), skips, progress)
    rates, dimensions = [k.fps for k in kept], [k.dims for k in kept]
    target_fps = float(fps) if fps is not None else float(median_low(rates))
    chosen_skeleton = Skeleton.from_pose(_recording(kept[0].item), skeleton, dims=min(dimensions))
    candidates, over_limit = _rows_to_keep(kept, target_fps, max_length_ratio, max_frames, skips)
    specs = _shard_specs(candidates, shard_rows, seed)
    # the shards of an earlier preparation here are overwritten as they are written, so its
    # manifest goes first: never one that lists them
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    summaries = list(_on_ray(specs, _write_shard, progress, "convert", out_dir=str(out_dir),
                             skeleton=chosen_skeleton.to_dict(), fps=target_fps))
    written = _written_rows(summaries, items, skips, out_dir)
    rows = [k for k in candidates if k.number in written]
    if not any(k.split == "train" for k in rows):
        raise PreparationError("the training split is empty: give more items or other split fractions")
    manifest = _manifest(rows, summaries, source=source, skeleton=chosen_skeleton, fps=target_fps,
                         fps_given=fps is not None, rates=rates, dimensions=dimensions, max_frames=max_frames,
                         over_limit=len(over_limit), fractions=fractions, seed=seed, split_by=split_by,
                         skipped=skips.entries, missing=missing)
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def _scan_recordings(items: Sequence[SourceItem], splits: list[str], skips: _Skips, progress: bool) -> list[_Kept]:
    """Pass 1: every recording's frame rate, dimensionality and length, nothing else kept."""
    entries = [{"number": number, "item": _entry(item)} for number, item in enumerate(items)]
    chunks = [entries[begin:begin + SCAN_ITEMS] for begin in range(0, len(entries), SCAN_ITEMS)]
    scanned = sorted((result for chunk in _on_ray(chunks, _scan, progress, "scan") for result in chunk),
                     key=lambda result: result["number"])
    kept = []
    for result in scanned:
        number = result["number"]
        if result["error"] is not None:
            skips.unreadable(items[number], result["error"])
            continue
        kept.append(_Kept(number, items[number], splits[number], result["fps"], result["dims"], result["frames"]))
    if not kept:
        raise PreparationError(f"no readable item among {len(items)}")
    return kept


def _rows_to_keep(kept: list[_Kept], fps: float, max_length_ratio: float | None, max_frames: int,
                  skips: _Skips) -> tuple[list[_Kept], list[_Kept]]:
    """What to convert, decided before anything is: texts the notation reads, lengths (at `fps`)
    neither outliers nor over `max_frames`. Returns the rows to keep and those over the limit."""
    candidates = []
    for k in kept:
        try:
            tokenize(SignText(k.item.text, k.item.notation, k.item.language))
        except ValueError as error:
            skips.unreadable(k.item, str(error))
            continue
        candidates.append(replace(k, frames=resampled_frames(k.frames, k.fps, fps)))
    if max_length_ratio is not None:
        candidates = _without_long_outliers(candidates, max_length_ratio, skips)
    over_limit = [k for k in candidates if k.frames > max_frames]
    for k in over_limit:
        skips.add(k.item, f"{k.frames} frames at {fps:g} fps, more than max_frames {max_frames} (prepare with a "
                          "higher --max-frames, and train with --set max_frames=N, to keep it)")
    return [k for k in candidates if k.frames <= max_frames], over_limit


def _shard_specs(candidates: list[_Kept], shard_rows: int, seed: int) -> list[dict]:
    """The shards to write, each a list of rows: per split, in a seeded random order. Sources come
    sorted (e.g. by language), and training reads shards whole, so a shard of one language would be
    an epoch's worth of one language for a worker."""
    order = np.random.default_rng(seed)
    by_split = {split: [k for k in candidates if k.split == split] for split in SPLITS}
    by_split = {split: [rows[i] for i in order.permutation(len(rows))] for split, rows in by_split.items()}
    return [{"path": f"{split}-{begin // shard_rows:05d}.parquet", "split": split,
             "rows": [{"number": k.number, "split": split, "frames": k.frames, "item": _entry(k.item)}
                      for k in rows[begin:begin + shard_rows]]}
            for split, rows in by_split.items() for begin in range(0, len(rows), shard_rows)]


def _written_rows(summaries: list[dict], items: Sequence[SourceItem], skips: _Skips, out_dir: Path) -> set[int]:
    """The numbers of the rows the shards hold. A file that failed to convert is an error (and no
    shard is left behind, as before any was written) unless unreadable items are skipped."""
    failures = sorted((failure for summary in summaries for failure in summary["failures"]),
                      key=lambda failure: failure["number"])
    if failures and not skips.skip_bad:
        for summary in summaries:
            (out_dir / summary["path"]).unlink(missing_ok=True)
    for failure in failures:
        skips.unreadable(items[failure["number"]], failure["error"])
    return {number for summary in summaries for number in summary["numbers"]}


def _manifest(rows: list[_Kept], summaries: list[dict], *, source: str, skeleton: Skeleton, fps: float,
              fps_given: bool, rates: list[float], dimensions: list[int], max_frames: int, over_limit: int,
              fractions: tuple[float, float, float], seed: int, split_by: str, skipped: list[dict],
              missing: Sequence[str]) -> dict:
    """What was prepared and how: shards, counts, skeleton, rate, splits, skips, and the training
    rows' statistics, vocabulary and output space (what a model trained on it is built from)."""
    train = [k for k in rows if k.split == "train"]  # in the items' order
    moments = sum((PoseMoments.from_lists(s["moments"]) for s in summaries if s["split"] == "train"),
                  PoseMoments.zeros(skeleton.num_joints, skeleton.dims))
    # each written train row's output space, in the shards' row order
    outputs = [output for summary in summaries if summary["split"] == "train" for output in summary["outputs"]]
    return {
        "t2p_shards": SHARD_FORMAT_VERSION,
        "source": source,
        "notation": sorted({k.item.notation for k in rows}),
        "skeleton": skeleton.to_dict(),
        "fps": fps,
        "frame_rate": {"fps": fps, "chosen": "given" if fps_given else "median",
                       "recordings": _counts(f"{round(rate, 3):g}" for rate in rates),
                       "resampled": sum(summary["resampled"] for summary in summaries)},
        "dimensions": {"skeleton": skeleton.dims, "recordings": _counts(str(d) for d in dimensions),
                       "mixed": len(set(dimensions)) > 1,
                       "depth_dropped": sum(d > skeleton.dims for d in dimensions)},
        "max_frames": {"limit": max_frames, "longest": max(k.frames for k in rows), "skipped": over_limit},
        "shards": [{"path": s["path"], "split": s["split"], "rows": len(s["numbers"])} for s in summaries
                   if s["numbers"]],
        "counts": {split: sum(len(s["numbers"]) for s in summaries if s["split"] == split) for split in SPLITS},
        "signers": {split: len({k.item.signer for k in rows if k.split == split and k.item.signer is not None})
                    for split in SPLITS},
        "splits": {"fractions": list(fractions), "seed": seed, "held_out_by": split_by},
        "skipped": skipped,
        "missing": {"count": len(missing), "ids": sorted(missing)},
        "mirrored": sum(k.item.mirror for k in rows),
        "statistics": normaliser(moments, [k.frames for k in train], [k.item.language for k in train]),
        "vocabulary": list(Vocabulary.build(SignText(k.item.text, k.item.notation, k.item.language)
                                            for k in train).tokens),
        "output_normalization": {
            "center": np.mean([center for center, _, _ in outputs], axis=0).astype(float).tolist(),
            "scale": float(np.mean([scale for _, scale, _ in outputs]))},
        "output_canvas": [int(v) for v in np.median([canvas for _, _, canvas in outputs], axis=0)],
    }


def _without_long_outliers(candidates: list[_Kept], ratio: float, skips: _Skips) -> list[_Kept]:
    """Recordings longer than `ratio` x their language's median length (over every split), moved to `skipped`."""
    lengths: dict[str, list[int]] = {}
    for k in candidates:
        lengths.setdefault(k.item.language or "", []).append(k.frames)
    limit = {language: ratio * float(np.median(values)) for language, values in lengths.items()}
    too_long = {k.number for k in candidates if k.frames > limit[k.item.language or ""]}
    for split in SPLITS:  # listed split by split, as the rows are
        for k in candidates:
            if k.split == split and k.number in too_long:
                skips.add(k.item, f"{k.frames} frames, more than {ratio:g}x the median of its language "
                                  f"({limit[k.item.language or '']:.0f} allowed)")
    return [k for k in candidates if k.number not in too_long]


def _on_ray(tasks: list, work, progress: bool, phase: str, **kwargs):
    """`work(task, **kwargs)` for every task, one Ray Data task each, in parallel; yields the results
    in the tasks' order. Tasks and results travel as JSON text: metadata only, never poses. With
    `progress`, a bar counts the recordings done (a line when the output is not a terminal)."""
    import time

    import ray
    import ray.data
    from tqdm import tqdm

    from t2p.cluster import ensure_ray, quiet_ray_logs
    ensure_ray(quiet=not progress)
    quiet_ray_logs()
    sizes = [len(task["rows"]) if isinstance(task, dict) else len(task) for task in tasks]  # recordings per task
    dataset = ray.data.from_items([{"index": i, "task": json.dumps(task)} for i, task in enumerate(tasks)],
                                  override_num_blocks=len(tasks))
    began = time.perf_counter()
    results = []
    with tqdm(total=sum(sizes), desc=f"prepare: {phase}", unit="file", disable=not progress or None,
              leave=False) as bar:
        for row in dataset.map_batches(_batch_of, batch_size=1, num_cpus=1,
                                       fn_kwargs={"work": work, "kwargs": kwargs}).iter_rows():
            results.append(row)
            bar.update(sizes[row["index"]])
    if progress:
        print(f"prepare: {phase} {sum(sizes)} recordings in {time.perf_counter() - began:.1f} s", flush=True)
    for result in sorted(results, key=lambda row: row["index"]):
        yield json.loads(result["result"])


def _batch_of(batch: dict, *, work, kwargs: dict) -> dict:
    """Ray Data's side of `_on_ray`: a batch of tasks -> their JSON results."""
    return {"index": list(batch["index"]),
            "result": [json.dumps(work(json.loads(task), **kwargs)) for task in batch["task"]]}


def _entry(item: SourceItem) -> dict:
    return {**asdict(item), "path": str(item.path)}


def _item(entry: dict) -> SourceItem:
    return SourceItem(**{**entry, "path": Path(entry["path"])})


def _scan(entries: list[dict]) -> list[dict]:
    """Pass 1 for one chunk of recordings: rate, dimensionality and frames of each, or its error."""
    results = []
    for entry in entries:
        try:
            pose = _recording(_item(entry["item"]))
        except (PoseFormatError, ValueError) as error:
            results.append({"number": entry["number"], "error": str(error)})
            continue
        results.append({"number": entry["number"], "error": None, "fps": float(pose.body.fps), "dims": num_dims(pose),
                        "frames": int(pose.body.data.shape[0])})
    return results


def _write_shard(spec: dict, *, out_dir: str, skeleton: dict, fps: float) -> dict:
    """Pass 2 for one shard: its recordings onto the skeleton at `fps`, written to `spec["path"]`.

    Returns the row numbers written, the files that failed (with their error), how many rows were
    resampled, and for training shards the moments and output space of the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    skeleton = Skeleton.from_dict(skeleton)
    moments = PoseMoments.zeros(skeleton.num_joints, skeleton.dims)
    rows, failures, outputs, resampled = [], [], [], 0
    for entry in spec["rows"]:
        item = _item(entry["item"])
        try:
            recorded = to_sequence(_recording(item), skeleton)
            sequence = resample_to_fps(recorded, fps)
        except (PoseFormatError, ValueError) as error:
            failures.append({"number": entry["number"], "error": str(error)})
            continue
        if sequence.num_frames != entry["frames"]:  # what the driver kept or skipped it by
            raise RuntimeError(f"{item.path}: {sequence.num_frames} frames at {fps:g} fps, the scan expected "
                               f"{entry['frames']}")
        resampled += sequence is not recorded
        rows.append({
            "id": f"{entry['number']:06d}", "key": item.key, "split": entry["split"], "text": item.text,
            "notation": item.notation, "language": item.language, "gloss": item.gloss, "source_path": str(item.path),
            "signer": item.signer, "frames": sequence.num_frames, "fps": sequence.fps,
            "poses": sequence.data.astype(np.float32).tobytes(),
            "confidence": sequence.confidence.astype(np.float32).tobytes(),
            "norm_center": [float(v) for v in sequence.normalization.center],
            "norm_scale": float(sequence.normalization.scale), "canvas": list(sequence.canvas),
        })
        if entry["split"] == "train":
            moments.add(sequence.data, sequence.confidence)
            outputs.append([rows[-1]["norm_center"], rows[-1]["norm_scale"], [int(v) for v in sequence.canvas]])
    if rows:
        table = pa.Table.from_pylist(rows, schema=shard_schema())
        with written_whole(Path(out_dir) / spec["path"]) as partial:
            pq.write_table(table, partial)
    return {"path": spec["path"], "split": spec["split"], "numbers": [int(row["id"]) for row in rows],
            "failures": failures, "resampled": resampled, "moments": moments.to_lists(), "outputs": outputs}


def _recording(item: SourceItem):
    """An item's recording as pose-format reads it: its segment, mirrored where the source says."""
    pose = read_pose(item.path)
    if item.start_ms or item.end_ms:
        pose = segment(pose, item.start_ms, item.end_ms)
    return mirror(pose) if item.mirror else pose


def _counts(values) -> dict[str, int]:
    """value -> how many times it occurs, in sorted order of the values."""
    return dict(sorted(Counter(values).items()))


@lru_cache(maxsize=1)
def shard_schema():
    """The columns of a shard (built on first use: pyarrow is imported by the tasks that write)."""
    import pyarrow as pa
    return pa.schema([
        ("id", pa.string()), ("key", pa.string()), ("split", pa.string()), ("text", pa.string()),
        ("notation", pa.string()), ("language", pa.string()), ("gloss", pa.string()),
        ("source_path", pa.string()), ("signer", pa.string()), ("frames", pa.int32()), ("fps", pa.float32()),
        ("poses", pa.binary()), ("confidence", pa.binary()),
        ("norm_center", pa.list_(pa.float32())), ("norm_scale", pa.float32()), ("canvas", pa.list_(pa.int32())),
    ])

