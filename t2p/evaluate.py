"""Evaluation: the model against known baselines on every metric, in one report.

A pose generator is chosen by its numbers against baselines and by looking at it, so `evaluate`
writes both: `report.json` and `report.md` (mean, median and per-language values of every metric
of every system, length error, displacement ratio, generation time), a plot per metric and a few
rendered examples.

Every system starts from the reference's first pose (who signs):
- model: the refinement, with the lengths it predicts;
- static: the (completed) first pose repeated at the reference length: the refinement's x_T;
- retrieval: the training sequence whose text is closest (the same word/letter in another
  language first, then edit distance), as a lexicon lookup system would answer;
- mean: the training mean sequence.
Retrieval and mean are resampled to the model's predicted length (a system does not know the
reference length; `EvaluationConfig.baseline_length="reference"` gives them the reference length)
and translated per joint so that their first frame is the first pose.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

from t2p.metrics import METRICS, JointGroups, resample, score
from t2p.pose import PoseSequence

if TYPE_CHECKING:
    from t2p.data import PreparedItem
    from t2p.model import T2PModel
    from t2p.notation import SignText

SYSTEMS = ("model", "static", "retrieval", "mean")
BASELINE_LENGTHS = ("predicted", "reference")


# --- Baselines ----------------------------------------------------------------------------------

def static_baseline(first_pose: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The first pose repeated: what the refinement starts from, and what a frozen model outputs."""
    # first_pose: (joints, dims)
    data = np.repeat(np.asarray(first_pose, dtype=np.float32)[None], frames, axis=0)
    return data, np.ones(data.shape[:2], dtype=np.float32)


def start_from(data: np.ndarray, confidence: np.ndarray, first_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translate every joint so that its first observed position is the first pose's: the motion
    of a borrowed sequence, performed from the requested starting pose. Missing values stay missing."""
    # data: (frames, joints, dims); confidence: (frames, joints); first_pose: (joints, dims)
    observed = confidence > 0
    first_seen = np.argmax(observed, axis=0)  # (joints,)
    joints = np.arange(data.shape[1])
    offset = np.where(observed.any(axis=0)[:, None], first_pose - data[first_seen, joints], 0.0)
    moved = np.where(observed[..., None], data + offset[None], 0.0)
    return moved.astype(np.float32), confidence.astype(np.float32)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions of characters)."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


class RetrievalBaseline:
    """A lexicon lookup: the training sequence whose text is closest to the query.

    Closest means, in order: the same word/letter (gloss or text) in another language; the smallest
    edit distance between the texts (between the glosses when the notations differ); the same
    language; the training order.
    """

    def __init__(self, training: Sequence["PreparedItem"]):
        if not training:
            raise ValueError("the retrieval baseline needs training items")
        self.training = list(training)

    def closest(self, sign: "SignText", gloss: str = "") -> "PreparedItem":
        def key(indexed):
            index, item = indexed
            same_word = (bool(gloss) and item.gloss.casefold() == gloss.casefold()) or \
                (item.sign.text == sign.text and item.sign.notation == sign.notation)
            if item.sign.notation == sign.notation:
                distance = edit_distance(sign.text, item.sign.text)
            else:
                distance = edit_distance(gloss.casefold(), item.gloss.casefold())
            return (not same_word, distance, item.sign.language != sign.language, index)
        return min(enumerate(self.training), key=key)[1]

    def __call__(self, sign: "SignText", gloss: str, frames: int, first_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sequence = self.closest(sign, gloss).sequence
        return start_from(*resample(sequence.data, sequence.confidence, frames), first_pose)


class MeanBaseline:
    """The confidence-weighted mean of every training sequence resampled to the requested length."""

    def __init__(self, training: Sequence["PreparedItem"]):
        if not training:
            raise ValueError("the mean baseline needs training items")
        self.sequences = [(item.sequence.data, item.sequence.confidence) for item in training]
        self._means: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def mean(self, frames: int) -> tuple[np.ndarray, np.ndarray]:
        if frames not in self._means:
            total, weight = 0.0, 0.0
            for data, confidence in self.sequences:
                values, observed = resample(data, confidence, frames)
                observed = (observed > 0).astype(np.float64)
                total = total + values * observed[..., None]
                weight = weight + observed
            data = np.where(weight[..., None] > 0, total / np.maximum(weight, 1)[..., None], 0.0)
            self._means[frames] = (data.astype(np.float32), (weight > 0).astype(np.float32))
        return self._means[frames]

    def __call__(self, frames: int, first_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return start_from(*self.mean(frames), first_pose)


# --- The report ---------------------------------------------------------------------------------

@dataclass
class EvaluationConfig:
    split: str = "test"
    steps: int | None = None           # refinement steps; None: the model's schedule
    guidance: float | None = None      # classifier-free guidance scale; None: off
    batch_size: int = 32               # items per generation call
    limit: int | None = None           # evaluate only the first N items
    examples: int = 3                  # rendered side-by-side examples
    baseline_length: str = "predicted"  # retrieval/mean length: "predicted" (the model's) or "reference"
    metrics: tuple[str, ...] = tuple(METRICS)
    progress: bool = True

    def __post_init__(self):
        if self.baseline_length not in BASELINE_LENGTHS:
            raise ValueError(f"baseline_length must be one of {', '.join(BASELINE_LENGTHS)}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
        if self.batch_size < 1 or self.examples < 0 or (self.limit is not None and self.limit < 1):
            raise ValueError("batch_size and limit must be >= 1, examples >= 0")


@dataclass
class ItemResult:
    id: str
    text: str
    notation: str
    language: str
    reference_frames: int
    frames: dict[str, int]              # system -> frames it produced
    scores: dict[str, dict[str, float]]  # system -> metric -> value


@dataclass
class EvaluationReport:
    model: str
    data: str
    split: str
    items: list[ItemResult]
    metrics: list[str]
    steps: int
    generation_seconds: float
    lengths: dict[str, str]
    examples: list[str] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)

    @property
    def languages(self) -> list[str]:
        return sorted({item.language for item in self.items})

    def summary(self, language: str | None = None) -> dict[str, dict[str, dict[str, float]]]:
        """system -> metric -> {mean, median}, over all items or one language's (NaNs left out)."""
        chosen = [item for item in self.items if language is None or item.language == language]
        result: dict[str, dict[str, dict[str, float]]] = {}
        for system in SYSTEMS:
            result[system] = {}
            for metric in self.metrics:
                values = np.array([item.scores[system][metric] for item in chosen], dtype=float)
                finite = values[np.isfinite(values)]
                result[system][metric] = {"mean": float(finite.mean()) if finite.size else float("nan"),
                                          "median": float(np.median(finite)) if finite.size else float("nan")}
        return result

    def to_dict(self) -> dict:
        count = len(self.items)
        return {
            "model": self.model, "data": self.data, "split": self.split, "items": count,
            "systems": list(SYSTEMS), "steps": self.steps, "lengths": self.lengths,
            "metrics": {name: asdict(METRICS[name]) for name in self.metrics},
            "summary": self.summary(),
            "by_language": {language: self.summary(language) for language in self.languages},
            "generation_time": {"seconds": self.generation_seconds,
                                "seconds_per_item": self.generation_seconds / max(count, 1),
                                "items_per_second": count / self.generation_seconds if self.generation_seconds > 0 else None},
            "examples": self.examples, "plots": self.plots,
            "per_item": [asdict(item) for item in self.items],
        }

    def to_markdown(self) -> str:
        count = len(self.items)
        lines = [f"# t2p evaluation: {self.split} split", "",
                 f"- model: `{self.model}`", f"- data: `{self.data}` ({count} items, languages: "
                 f"{', '.join(self.languages)})", f"- refinement steps: {self.steps}"]
        lines += [f"- lengths, {system}: {policy}" for system, policy in self.lengths.items()]
        lines += [f"- generation time: {self.generation_seconds:.2f} s in all, "
                  f"{1000 * self.generation_seconds / max(count, 1):.1f} ms per item (batched)", ""]
        lines += ["## All items: mean (median)", ""] + _table(self.summary(), self.metrics, median=True)
        for language in self.languages:
            chosen = sum(item.language == language for item in self.items)
            lines += ["", f"## {language} ({chosen} items): mean", ""]
            lines += _table(self.summary(language), self.metrics, median=False)
        lines += ["", "## Metrics", "", "| metric | better | what | source |", "|---|---|---|---|"]
        lines += [f"| {name} | {METRICS[name].better} | {_cell(METRICS[name].description)} | {METRICS[name].source} |"
                  for name in self.metrics]
        if self.examples:
            lines += ["", "## Examples", ""] + [f"![{Path(path).stem}]({path})" for path in self.examples]
        if self.plots:
            lines += ["", "## Plots", ""] + [f"![{name}]({path})" for name, path in self.plots.items()]
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(summary: dict, metrics: Sequence[str], median: bool) -> list[str]:
    rows = ["| metric | " + " | ".join(SYSTEMS) + " |", "|---" * (len(SYSTEMS) + 1) + "|"]
    for metric in metrics:
        cells = []
        for system in SYSTEMS:
            value = summary[system][metric]
            cells.append(f"{value['mean']:.3f} ({value['median']:.3f})" if median else f"{value['mean']:.3f}")
        rows.append(f"| {metric} | " + " | ".join(cells) + " |")
    return rows


# --- Running it ---------------------------------------------------------------------------------

def evaluate(model: "T2PModel", data_dir: Union[str, Path], out_dir: Union[str, Path] | None = None,
             config: EvaluationConfig | None = None, model_name: str = "") -> EvaluationReport:
    """Score the model and every baseline on one split; with `out_dir`, write the report there."""
    from tqdm import tqdm

    from t2p.data import load_manifest, read_items
    from t2p.generation import generate

    config = config or EvaluationConfig()
    manifest = load_manifest(data_dir)
    if manifest["skeleton"] != model.config.skeleton:
        raise ValueError(f"the model's skeleton differs from the skeleton of {data_dir}: "
                         "evaluate on data prepared for this model")
    items = read_items(data_dir, config.split, limit=config.limit)
    if not items:
        raise ValueError(f"{data_dir} has no {config.split} items")
    training = read_items(data_dir, "train")
    retrieval, mean = RetrievalBaseline(training), MeanBaseline(training)
    groups = JointGroups.of(model.skeleton)
    steps = config.steps or model.schedule_config.steps

    predictions, seconds = [], 0.0
    batches = range(0, len(items), config.batch_size)
    for begin in tqdm(batches, desc="generate", unit="batch", disable=not config.progress):
        batch = items[begin:begin + config.batch_size]
        started = time.perf_counter()
        predictions += generate(model, [item.sign for item in batch], first_poses=[item.sequence for item in batch],
                                steps=config.steps, guidance=config.guidance)
        seconds += time.perf_counter() - started
    starts = _completed_first_poses(model, items)

    results = []
    for item, prediction, start in tqdm(list(zip(items, predictions, starts)), desc="score", unit="item",
                                        disable=not config.progress):
        reference = item.sequence
        frames = len(prediction) if config.baseline_length == "predicted" else reference.num_frames
        outputs = {
            "model": (prediction, np.ones(prediction.shape[:2], dtype=np.float32)),
            "static": static_baseline(start, reference.num_frames),
            "retrieval": retrieval(item.sign, item.gloss, frames, start),
            "mean": mean(frames, start),
        }
        scores = {system: score(PoseSequence(data, confidence, reference.fps, reference.normalization, reference.canvas),
                                reference, groups, config.metrics)
                  for system, (data, confidence) in outputs.items()}
        results.append(ItemResult(item.id, item.sign.text, item.sign.notation, item.sign.language or "unknown",
                                  reference.num_frames, {s: len(d) for s, (d, _) in outputs.items()}, scores))

    baseline_length = "the model's predicted length" if config.baseline_length == "predicted" else "the reference length"
    report = EvaluationReport(
        model=model_name, data=str(data_dir), split=config.split, items=results, metrics=list(config.metrics),
        steps=steps, generation_seconds=seconds,
        lengths={"model": "predicted by the model", "static": "the reference length",
                 "retrieval": f"resampled to {baseline_length}", "mean": f"resampled to {baseline_length}"})
    if out_dir is not None:
        write_report(report, out_dir, model, items[:config.examples], predictions[:config.examples])
    return report


def _completed_first_poses(model: "T2PModel", items: Sequence["PreparedItem"]) -> list[np.ndarray]:
    """The refinement's starting pose per item: the reference's first frame, gaps filled by the model."""
    import torch
    device = model.pose_mean.device
    pose = torch.as_tensor(np.stack([item.sequence.data[0] for item in items]), dtype=torch.float32, device=device)
    confidence = torch.as_tensor(np.stack([item.sequence.confidence[0] for item in items]), dtype=torch.float32,
                                 device=device)
    with torch.no_grad():
        return list(model.complete_first_pose(pose, confidence).cpu().numpy())


def write_report(report: EvaluationReport, out_dir: Union[str, Path], model: "T2PModel | None" = None,
                 example_items: Sequence["PreparedItem"] = (), example_predictions: Sequence[np.ndarray] = ()) -> Path:
    """report.json, report.md, plots/<metric>.png and examples/<id>.gif under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.plots = plot_metrics(report, out_dir / "plots")
    if model is not None and example_items:
        report.examples = render_examples(model, example_items, example_predictions, out_dir / "examples")
    report.plots = {name: str(Path(path).relative_to(out_dir)) for name, path in report.plots.items()}
    report.examples = [str(Path(path).relative_to(out_dir)) for path in report.examples]
    _write_text(out_dir / "report.json", json.dumps(_finite(report.to_dict()), ensure_ascii=False, indent=1))
    _write_text(out_dir / "report.md", report.to_markdown())
    return out_dir


def plot_metrics(report: EvaluationReport, plot_dir: Union[str, Path]) -> dict[str, str]:
    """A box plot per metric: the per-item values of every system side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for metric in report.metrics:
        values = []
        for system in SYSTEMS:
            column = np.array([item.scores[system][metric] for item in report.items], dtype=float)
            values.append(column[np.isfinite(column)])
        figure, axes = plt.subplots(figsize=(6, 4))
        axes.boxplot([v if v.size else [np.nan] for v in values], showmeans=True)
        axes.set_xticks(range(1, len(SYSTEMS) + 1), SYSTEMS)
        axes.set_title(f"{metric} ({report.split}, {len(report.items)} items)")
        axes.set_ylabel(f"{metric} ({METRICS[metric].better} is better)")
        if metric == "displacement_ratio":
            axes.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        figure.tight_layout()
        path = plot_dir / f"{metric}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths[metric] = str(path)
    return paths


def render_examples(model: "T2PModel", items: Sequence["PreparedItem"], predictions: Sequence[np.ndarray],
                    example_dir: Union[str, Path]) -> list[str]:
    """Side-by-side GIFs of the model's prediction and the reference, the text as caption."""
    from t2p.generation import as_pose
    from t2p.pose import to_pose
    from t2p.render import Panel, render

    example_dir = Path(example_dir)
    paths = []
    for item, prediction in zip(items, predictions):
        reference = item.sequence
        reference_pose = to_pose(reference.data, model.skeleton, reference.fps, reference.normalization,
                                 reference.confidence, reference.canvas)
        caption = f"{item.sign.text} ({item.sign.language})" if item.sign.language else item.sign.text
        path = example_dir / f"{item.id}.gif"
        render([Panel(as_pose(model, prediction, reference), "t2p"), Panel(reference_pose, "reference")], path,
               caption=caption, panel_height=256)
        paths.append(str(path))
    return paths


def compare_files(predicted: Union[str, Path], reference: Union[str, Path],
                  metrics: Sequence[str] | None = None) -> dict[str, float]:
    """Every metric (or the named ones) for two `.pose` files of any supported layout, both mapped
    onto the default skeleton built from the first file."""
    from t2p.pose import Skeleton, read_pose, to_sequence

    first = read_pose(predicted)
    skeleton = Skeleton.from_pose(first)
    return score(to_sequence(first, skeleton), to_sequence(read_pose(reference), skeleton),
                 JointGroups.of(skeleton), metrics)


def _finite(value):
    """JSON has no NaN: undefined values become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _write_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
