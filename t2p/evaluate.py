"""Evaluation: the model against known baselines on every metric, in one report.

A pose generator is chosen by its numbers against baselines and by looking at it, so `evaluate`
writes both: `report.json` and `report.md` (mean, median and per-language values of every metric
of every system, back-retrieval, length error against a constant length, generation time, a sweep
over refinement steps and guidance), a plot per metric and a few rendered examples.

Every system starts from the reference's first pose (who signs):
- model: the refinement, with the lengths it predicts;
- other_text: a control, the model given another test item's text (of the same language where
  there is one): if it scores like the model, the model does not use the text;
- static: the (completed) first pose repeated at the reference length: the refinement's x_T;
- retrieval: the training sequence whose text is closest (the same word/letter in another
  language first, then edit distance), as a lexicon lookup system would answer;
- mean: the training mean sequence, moved per joint so that it starts at the first pose;
- mean_motion: the training data's mean displacement from the first frame (time-normalised),
  added to the first pose: the motion a text-blind system knows.
Retrieval and the means are resampled to the model's predicted length (a system does not know the
reference length; `EvaluationConfig.baseline_length="reference"` gives them the reference length).
The length the model predicts is compared with a constant one, the training data's mean length.

Back-retrieval asks whether outputs are specific to their text: the share of outputs closer
(DTW-MJE) to their own reference than to every other test reference (top-1), or than to all but
at most four (top-5). Chance is 1/N and 5/N.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np
from rapidfuzz.distance import Levenshtein

from t2p.metrics import (METRICS, JointGroups, MetricInfo, back_retrieval_ranks, dtw_mje_matrix, resample,
                         score)
from t2p.config import written_whole
from t2p.pose import PoseSequence, start_from

if TYPE_CHECKING:
    from t2p.data import PreparedItem
    from t2p.model import T2PModel
    from t2p.notation import SignText

SYSTEMS = ("model", "other_text", "static", "retrieval", "mean", "mean_motion")
BASELINE_LENGTHS = ("predicted", "reference")
# scores of the whole set, kept per item (1 = hit) so that their mean is the rate
SET_METRICS: dict[str, MetricInfo] = {
    "back_retrieval_top1": MetricInfo("share of outputs closer (DTW-MJE) to their own reference than to every other "
                                      "test reference; chance 1/N", "t2p", "higher"),
    "back_retrieval_top5": MetricInfo("share of outputs with at most 4 other test references closer than their own; "
                                      "chance 5/N", "t2p", "higher"),
}
SWEEP_METRICS = ("dtw_mje", "mje", "dtwp", "presence_error", "displacement_ratio")


# --- Baselines ----------------------------------------------------------------------------------

def static_baseline(first_pose: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The first pose repeated: what the refinement starts from, and what a frozen model outputs."""
    # first_pose: (joints, dims)
    data = np.repeat(np.asarray(first_pose, dtype=np.float32)[None], frames, axis=0)
    return data, np.ones(data.shape[:2], dtype=np.float32)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions of characters)."""
    return Levenshtein.distance(a, b)


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
    """The confidence-weighted mean of every training sequence resampled to the requested length,
    moved per joint to start at the first pose; with `motion=True`, the mean displacement from
    each sequence's own first frame, added to the first pose (`mean_motion`)."""

    def __init__(self, training: Sequence["PreparedItem"], motion: bool = False):
        if not training:
            raise ValueError("the mean baselines need training items")
        self.sequences = [(item.sequence.data, item.sequence.confidence) for item in training]
        self.motion = motion
        self._means: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def mean(self, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """The mean sequence (or mean displacement) at `frames` frames, and where it is defined."""
        if frames not in self._means:
            total, weight = 0.0, 0.0
            for data, confidence in self.sequences:
                values, observed = resample(data, confidence, frames)
                observed = (observed > 0).astype(np.float64)
                if self.motion:  # displacement from the joint's first observed position
                    first_seen = np.argmax(observed > 0, axis=0)
                    values = values - values[first_seen, np.arange(values.shape[1])]
                total = total + values * observed[..., None]
                weight = weight + observed
            data = np.where(weight[..., None] > 0, total / np.maximum(weight, 1)[..., None], 0.0)
            self._means[frames] = (data.astype(np.float32), (weight > 0).astype(np.float32))
        return self._means[frames]

    def __call__(self, frames: int, first_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        data, confidence = self.mean(frames)
        if self.motion:
            return np.where(confidence[..., None] > 0, data + first_pose, 0.0).astype(np.float32), confidence
        return start_from(data, confidence, first_pose)


def constant_length(training: Sequence["PreparedItem"]) -> int:
    """The training data's mean length in frames: what a system that ignores the text would say."""
    return max(1, round(float(np.mean([item.sequence.num_frames for item in training]))))


def other_texts(items: Sequence["PreparedItem"]) -> list["SignText"]:
    """For each item, the text of another item with a different text, of the same language where
    there is one (the next such item in order): the control that tells whether the text is used."""
    chosen = []
    for index, item in enumerate(items):
        order = items[index + 1:] + items[:index]
        others = [other for other in order if other.sign.text != item.sign.text]
        same_language = [other for other in others if other.sign.language == item.sign.language]
        chosen.append((same_language or others or [item])[0].sign)
    return chosen


# --- The report ---------------------------------------------------------------------------------

@dataclass
class EvaluationConfig:
    split: str = "test"
    steps: tuple[int, ...] | None = None       # refinement steps to try; None: the model's default
    guidance: tuple[float, ...] | None = None  # guidance scales to try; None: the model's default
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
        if isinstance(self.steps, int) or isinstance(self.guidance, (int, float)):
            raise ValueError("steps and guidance are tuples of the settings to try, e.g. steps=(1, 10)")
        if self.steps is not None and (not self.steps or any(int(n) < 1 for n in self.steps)):
            raise ValueError(f"steps must be a non-empty list of numbers >= 1, got {self.steps}")
        if self.guidance is not None and not self.guidance:
            raise ValueError("guidance must be a non-empty list of scales")


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
class Setting:
    """One point of the steps x guidance sweep: the model's mean of each sweep metric."""
    steps: int
    guidance: float
    scores: dict[str, float]
    seconds: float


@dataclass
class EvaluationReport:
    model: str
    data: str
    split: str
    items: list[ItemResult]
    metrics: list[str]
    steps: int
    guidance: float
    generation_seconds: float
    lengths: dict[str, str]
    length: dict[str, float]            # MAE in frames of the model and of the constant length
    sweep: list[Setting] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)

    @property
    def languages(self) -> list[str]:
        return sorted({item.language for item in self.items})

    @property
    def all_metrics(self) -> list[str]:
        return list(self.metrics) + list(SET_METRICS)

    @property
    def best_setting(self) -> Setting | None:
        """The sweep's setting with the lowest DTW-MJE (the first such, so the fewest steps)."""
        finite = [s for s in self.sweep if math.isfinite(s.scores.get("dtw_mje", math.nan))]
        return min(finite, key=lambda s: s.scores["dtw_mje"]) if finite else None

    def summary(self, language: str | None = None) -> dict[str, dict[str, dict[str, float]]]:
        """system -> metric -> {mean, median}, over all items or one language's (NaNs left out)."""
        chosen = [item for item in self.items if language is None or item.language == language]
        result: dict[str, dict[str, dict[str, float]]] = {}
        for system in SYSTEMS:
            result[system] = {}
            for metric in self.all_metrics:
                values = np.array([item.scores[system][metric] for item in chosen], dtype=float)
                finite = values[np.isfinite(values)]
                result[system][metric] = {"mean": float(finite.mean()) if finite.size else float("nan"),
                                          "median": float(np.median(finite)) if finite.size else float("nan")}
        return result

    def to_dict(self) -> dict:
        count = len(self.items)
        best = self.best_setting
        return {
            "model": self.model, "data": self.data, "split": self.split, "items": count,
            "systems": list(SYSTEMS), "steps": self.steps, "guidance": self.guidance, "lengths": self.lengths,
            "length": self.length,
            "metrics": {name: asdict(info) for name, info in {**METRICS, **SET_METRICS}.items()
                        if name in self.all_metrics},
            "chance": {"back_retrieval_top1": min(1.0, 1 / max(count, 1)),
                       "back_retrieval_top5": min(1.0, 5 / max(count, 1))},
            "summary": self.summary(),
            "by_language": {language: self.summary(language) for language in self.languages},
            "sweep": [asdict(setting) for setting in self.sweep],
            "best_setting": None if best is None else {"steps": best.steps, "guidance": best.guidance},
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
                 f"{', '.join(self.languages)})", f"- refinement steps: {self.steps}, guidance: {self.guidance:g}"]
        lines += [f"- lengths, {system}: {policy}" for system, policy in self.lengths.items()]
        lines += [f"- generation time: {self.generation_seconds:.2f} s in all, "
                  f"{1000 * self.generation_seconds / max(count, 1):.1f} ms per item (batched)",
                  f"- back-retrieval chance: top-1 {1 / max(count, 1):.3f}, top-5 {min(1.0, 5 / max(count, 1)):.3f}", ""]
        lines += ["## All items: mean (median)", ""] + _table(self.summary(), self.all_metrics, median=True)
        lines += ["", "## Length", "", "| predictor | MAE (frames) |", "|---|---|",
                  f"| model | {self.length['model']:.2f} |",
                  f"| constant ({self.length['constant_frames']:.0f} frames, the training mean) | "
                  f"{self.length['constant']:.2f} |"]
        if self.sweep:
            best = self.best_setting
            names = [name for name in SWEEP_METRICS if name in self.sweep[0].scores] + list(SET_METRICS)
            lines += ["", "## Steps and guidance: the model's mean", "",
                      "| steps | guidance | " + " | ".join(names) + " | seconds |", "|---" * (len(names) + 3) + "|"]
            for setting in self.sweep:
                mark = " **best**" if setting is best else ""
                lines.append(f"| {setting.steps}{mark} | {setting.guidance:g} | "
                             + " | ".join(f"{setting.scores[name]:.3f}" for name in names) + f" | {setting.seconds:.2f} |")
            if best is not None:
                lines += ["", f"Lowest DTW-MJE: {best.steps} steps, guidance {best.guidance:g}."]
        for language in self.languages:
            chosen = sum(item.language == language for item in self.items)
            lines += ["", f"## {language} ({chosen} items): mean", ""]
            lines += _table(self.summary(language), self.all_metrics, median=False)
        lines += ["", "## Metrics", "", "| metric | better | what | source |", "|---|---|---|---|"]
        info = {**METRICS, **SET_METRICS}
        lines += [f"| {name} | {info[name].better} | {_cell(info[name].description)} | {info[name].source} |"
                  for name in self.all_metrics]
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
            cells.append(f"{value['mean']:.3f} ({value['median']:.3f})" if median and metric not in SET_METRICS
                         else f"{value['mean']:.3f}")
        rows.append(f"| {metric} | " + " | ".join(cells) + " |")
    return rows


# --- Running it ---------------------------------------------------------------------------------

def evaluate(model: "T2PModel", data_dir: Union[str, Path], out_dir: Union[str, Path] | None = None,
             config: EvaluationConfig | None = None, model_name: str = "") -> EvaluationReport:
    """Score the model and every baseline on one split; with `out_dir`, write the report there.

    With several `steps` or `guidance` values, the model is generated once per combination and the
    sweep's table gives each one's means; the main table uses the model's default setting when it
    is among them, else the first combination."""
    from tqdm import tqdm

    from t2p.data import load_manifest, read_items
    from t2p.generation import starting_poses

    config = config or EvaluationConfig()
    manifest = load_manifest(data_dir)
    if manifest["skeleton"] != model.config.skeleton:
        raise ValueError(f"the model's skeleton differs from the skeleton of {data_dir}: "
                         "evaluate on data prepared for this model")
    items = read_items(data_dir, config.split, limit=config.limit)
    if not items:
        raise ValueError(f"{data_dir} has no {config.split} items")
    training = read_items(data_dir, "train")
    groups = JointGroups.of(model.skeleton)
    defaults = model.schedule_config
    settings = [(int(steps), float(guidance)) for steps in (config.steps or (defaults.steps,))
                for guidance in (config.guidance or (defaults.guidance,))]
    main = (defaults.steps, float(defaults.guidance))
    main = main if main in settings else settings[0]

    generated, seconds = {}, {}
    for setting in tqdm(settings, desc="generate", unit="setting", disable=not config.progress or len(settings) == 1):
        started = time.perf_counter()
        generated[setting] = _generate(model, items, [item.sign for item in items], *setting, config.batch_size)
        seconds[setting] = time.perf_counter() - started
    predictions = generated[main]

    outputs = {"model": predictions,
               "other_text": _generate(model, items, other_texts(items), *main, config.batch_size)}
    starts = list(starting_poses(model, [item.sequence for item in items]))
    retrieval, mean, mean_motion = (RetrievalBaseline(training), MeanBaseline(training),
                                    MeanBaseline(training, motion=True))
    baselines = {"static": [], "retrieval": [], "mean": [], "mean_motion": []}
    for item, (prediction, _), start in zip(items, predictions, starts):
        reference = item.sequence
        frames = len(prediction) if config.baseline_length == "predicted" else reference.num_frames
        baselines["static"].append(static_baseline(start, reference.num_frames))
        baselines["retrieval"].append(retrieval(item.sign, item.gloss, frames, start))
        baselines["mean"].append(mean(frames, start))
        baselines["mean_motion"].append(mean_motion(frames, start))
    outputs.update(baselines)

    scores = {system: _score_system(items, system_outputs, groups, config.metrics,
                                    progress=config.progress and system == "model")
              for system, system_outputs in outputs.items()}
    results = [ItemResult(item.id, item.sign.text, item.sign.notation, item.sign.language or "unknown",
                          item.sequence.num_frames, {system: len(outputs[system][i][0]) for system in SYSTEMS},
                          {system: scores[system][i] for system in SYSTEMS})
               for i, item in enumerate(items)]

    sweep = []
    if len(settings) > 1:
        sweep_metrics = [m for m in SWEEP_METRICS if m in config.metrics]
        for setting in settings:  # the main setting is scored already
            setting_scores = (scores["model"] if setting == main
                              else _score_system(items, generated[setting], groups, sweep_metrics))
            means = _means(setting_scores)
            sweep.append(Setting(*setting, {name: means[name] for name in (*sweep_metrics, *SET_METRICS)},
                                 seconds[setting]))

    constant = constant_length(training)
    baseline_length = "the model's predicted length" if config.baseline_length == "predicted" else "the reference length"
    report = EvaluationReport(
        model=model_name, data=str(data_dir), split=config.split, items=results, metrics=list(config.metrics),
        steps=main[0], guidance=main[1], generation_seconds=seconds[main],
        lengths={"model": "predicted by the model", "other_text": "predicted by the model from the other text",
                 "static": "the reference length", "retrieval": f"resampled to {baseline_length}",
                 "mean": f"resampled to {baseline_length}", "mean_motion": f"resampled to {baseline_length}"},
        length={"model": float(np.mean([abs(len(data) - item.sequence.num_frames)
                                        for (data, _), item in zip(predictions, items)])),
                "constant": float(np.mean([abs(constant - item.sequence.num_frames) for item in items])),
                "constant_frames": float(constant)},
        sweep=sweep)
    if out_dir is not None:
        write_report(report, out_dir, model, items[:config.examples], predictions[:config.examples])
    return report


def _generate(model: "T2PModel", items: Sequence["PreparedItem"], signs: Sequence["SignText"], steps: int,
              guidance: float, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The model's (positions, confidence: 0 where it predicts a joint absent) per item, from each
    item's first pose."""
    from t2p.generation import generate
    outputs = []
    for begin in range(0, len(items), batch_size):
        batch = items[begin:begin + batch_size]
        for generated in generate(model, signs[begin:begin + batch_size], first_poses=[item.sequence for item in batch],
                                  steps=steps, guidance=guidance):
            outputs.append((generated.data, generated.confidence))
    return outputs


def _score_system(items: Sequence["PreparedItem"], outputs: Sequence[tuple[np.ndarray, np.ndarray]],
                  groups: JointGroups, metrics: Sequence[str], progress: bool = False) -> list[dict[str, float]]:
    """Every metric and the back-retrieval hits of one system's outputs (positions, confidence),
    one dict per item."""
    from tqdm import tqdm
    scores = []
    for item, (data, confidence) in tqdm(list(zip(items, outputs)), desc="score", unit="item", disable=not progress):
        reference = item.sequence
        scores.append(score(PoseSequence(data, confidence, reference.fps, reference.normalization, reference.canvas),
                            reference, groups, metrics))
    distances = dtw_mje_matrix(outputs, [(item.sequence.data, item.sequence.confidence) for item in items])
    for item_scores, rank in zip(scores, back_retrieval_ranks(distances)):
        item_scores["back_retrieval_top1"] = float(rank < 1)
        item_scores["back_retrieval_top5"] = float(rank < 5)
    return scores


def _means(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    names = scores[0].keys() if scores else ()
    return {name: float(np.nanmean([item[name] for item in scores])) for name in names}


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
    # the per-item 0/1 hits of back-retrieval make no box; their rates are in the tables
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
        axes.tick_params(axis="x", labelrotation=20)
        if metric == "displacement_ratio":
            axes.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        figure.tight_layout()
        path = plot_dir / f"{metric}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths[metric] = str(path)
    return paths


def render_examples(model: "T2PModel", items: Sequence["PreparedItem"],
                    predictions: Sequence[tuple[np.ndarray, np.ndarray]],
                    example_dir: Union[str, Path]) -> list[str]:
    """Side-by-side GIFs of the model's prediction and the reference, the text as caption."""
    from t2p.generation import Generated, as_pose
    from t2p.pose import to_pose
    from t2p.render import Panel, render

    example_dir = Path(example_dir)
    paths = []
    for item, (data, confidence) in zip(items, predictions):
        prediction = Generated(data, confidence)
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
    with written_whole(path) as partial:
        partial.write_text(text, encoding="utf-8")
