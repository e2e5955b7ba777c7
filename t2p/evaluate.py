"""Evaluation: the model against known baselines on every metric, in one report.

A pose generator is chosen by its numbers against baselines and by looking at it, so `evaluate`
writes both: `report.json` and `report.md` (mean, median and per-language values of every metric
of every system, back-retrieval, length error against a constant length, generation time, a sweep
over refinement steps and guidance), a plot per metric and a few rendered examples.

Every system is scored from each start (`first_poses_for`): the model's neutral pose (what a
user without a first pose gets: the headline), the reference's own first frame (the seed's and
Ham2Pose's protocol, which shows the starting handshape), another sign's first frame. Systems:
- model: the refinement, with the lengths it predicts;
- other_text: a control, the model given another test item's text (of the same language where
  there is one): if it scores like the model, the model does not use the text;
- the baselines of `t2p.baselines`: static (the start held still), retrieval (the same letter
  recorded in another language), mean and mean_motion.
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

from t2p.baselines import MeanBaseline, RetrievalBaseline, constant_length, static_baseline
from t2p.config import written_whole
from t2p.metrics import METRICS, JointGroups, MetricInfo, back_retrieval_ranks, dtw_mje_matrix, score
from t2p.pose import PoseSequence

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
SWEEP_METRICS = ("dtw_mje", "handshape", "mje", "dtwp", "presence_error", "displacement_ratio")


def other_items(items: Sequence["PreparedItem"]) -> list["PreparedItem"]:
    """For each item, another item with a different text, of the same language where there is one
    (the next such item in order): its text is the other-text control, its first frame the
    "other" start (the signer's pose at the end of some other sign)."""
    chosen = []
    for index, item in enumerate(items):
        order = items[index + 1:] + items[:index]
        others = [other for other in order if other.sign.text != item.sign.text]
        same_language = [other for other in others if other.sign.language == item.sign.language]
        chosen.append((same_language or others or [item])[0])
    return chosen


def other_texts(items: Sequence["PreparedItem"]) -> list["SignText"]:
    """The other-text control: if the model scores as well with these, it does not use the text."""
    return [other.sign for other in other_items(items)]
STARTS = ("neutral", "own", "other")


def first_poses_for(start: str, items: Sequence["PreparedItem"]) -> list:
    """What every system starts from (who signs, and where the hands are):
    - neutral: the model's neutral pose, what `t2p generate` uses without --first-pose;
    - own: the reference's own first frame (the seed's and Ham2Pose's protocol; it shows the
      starting handshape);
    - other: the first frame of another item of the same language (another sign's pose)."""
    if start == "neutral":
        return [None] * len(items)
    if start == "own":
        return [item.sequence for item in items]
    if start == "other":
        return [other.sequence for other in other_items(items)]
    raise ValueError(f"unknown start {start!r}; choose from {', '.join(STARTS)}")


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
    # starting poses, each scoring every system; the first is the headline (and the sweep's)
    starts: tuple[str, ...] = STARTS
    progress: bool = True

    def __post_init__(self):
        if not self.starts or any(start not in STARTS for start in self.starts) or len(set(self.starts)) < len(self.starts):
            raise ValueError(f"starts must be distinct names from {', '.join(STARTS)}, got {', '.join(self.starts) or 'none'}")
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
class StartReport:
    """Every system scored from one kind of starting pose (see `first_poses_for`)."""
    start: str
    items: list[ItemResult]
    length: dict[str, float]  # MAE in frames of the model and of the constant length


@dataclass
class EvaluationReport:
    model: str
    data: str
    split: str
    starts: list[StartReport]  # the first is the headline
    metrics: list[str]
    steps: int
    guidance: float
    generation_seconds: float
    lengths: dict[str, str]
    sweep: list[Setting] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)

    @property
    def items(self) -> list[ItemResult]:
        """The headline start's items."""
        return self.starts[0].items

    @property
    def length(self) -> dict[str, float]:
        return self.starts[0].length

    def start(self, name: str) -> StartReport:
        for start in self.starts:
            if start.start == name:
                return start
        raise KeyError(f"this evaluation has no {name!r} start; it has {', '.join(s.start for s in self.starts)}")

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

    def summary(self, language: str | None = None, start: str | None = None) -> dict[str, dict[str, dict[str, float]]]:
        """system -> metric -> {mean, median}, over all items or one language's (NaNs left out), from
        the headline start or the one named."""
        items = self.items if start is None else self.start(start).items
        chosen = [item for item in items if language is None or item.language == language]
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
            "systems": list(SYSTEMS), "starts": [start.start for start in self.starts],
            "steps": self.steps, "guidance": self.guidance, "lengths": self.lengths, "length": self.length,
            "metrics": {name: asdict(info) for name, info in {**METRICS, **SET_METRICS}.items()
                        if name in self.all_metrics},
            "chance": {"back_retrieval_top1": min(1.0, 1 / max(count, 1)),
                       "back_retrieval_top5": min(1.0, 5 / max(count, 1))},
            "summary": self.summary(),
            "by_start": {start.start: {"summary": self.summary(start=start.start), "length": start.length}
                         for start in self.starts},
            "by_language": {language: self.summary(language) for language in self.languages},
            "sweep": [asdict(setting) for setting in self.sweep],
            "best_setting": None if best is None else {"steps": best.steps, "guidance": best.guidance},
            "generation_time": {"seconds": self.generation_seconds,
                                "seconds_per_item": self.generation_seconds / max(count, 1),
                                "items_per_second": count / self.generation_seconds if self.generation_seconds > 0 else None},
            "examples": self.examples, "plots": self.plots,
            "per_item": {start.start: [asdict(item) for item in start.items] for start in self.starts},
        }

    def text_use_table(self) -> list[str]:
        """Per start: the model against its other-text control and the closest baselines, on the
        handshape and DTW-MJE (where a text-blind model shows: other text scores like the model)."""
        rows = ["| start | metric | model | other text | other / model | static | retrieval | mean motion |",
                "|---|---|---|---|---|---|---|---|"]
        for start in self.starts:
            summary = self.summary(start=start.start)
            for metric in ("handshape", "dtw_mje"):
                if metric not in self.metrics:
                    continue
                mean = {system: summary[system][metric]["mean"] for system in SYSTEMS}
                ratio = mean["other_text"] / mean["model"] if mean["model"] > 0 else float("nan")
                rows.append(f"| {start.start} | {metric} | {mean['model']:.3f} | {mean['other_text']:.3f} | "
                            f"{ratio:.2f}x | {mean['static']:.3f} | {mean['retrieval']:.3f} | {mean['mean_motion']:.3f} |")
        return rows

    def to_markdown(self) -> str:
        count = len(self.items)
        lines = [f"# t2p evaluation: {self.split} split", "",
                 f"- model: `{self.model}`", f"- data: `{self.data}` ({count} items, languages: "
                 f"{', '.join(self.languages)})", f"- refinement steps: {self.steps}, guidance: {self.guidance:g}",
                 f"- starts: {', '.join(start.start for start in self.starts)} (the first is the headline; "
                 "neutral: the model's neutral pose, own: the reference's first frame, other: another sign's first frame)"]
        lines += [f"- lengths, {system}: {policy}" for system, policy in self.lengths.items()]
        lines += [f"- generation time: {self.generation_seconds:.2f} s in all, "
                  f"{1000 * self.generation_seconds / max(count, 1):.1f} ms per item (batched)",
                  f"- back-retrieval chance: top-1 {1 / max(count, 1):.3f}, top-5 {min(1.0, 5 / max(count, 1)):.3f}", ""]
        lines += ["## Does the text choose the sign? Every start", ""] + self.text_use_table()
        for start in self.starts:
            lines += ["", f"## From the {start.start} start: mean (median)", ""]
            lines += _table(self.summary(start=start.start), self.all_metrics, median=True)
            lines += ["", f"Length MAE from the {start.start} start: model {start.length['model']:.2f} frames, "
                          f"constant ({start.length['constant_frames']:.0f} frames, the training mean) "
                          f"{start.length['constant']:.2f}."]
        if self.sweep:
            best = self.best_setting
            names = [name for name in SWEEP_METRICS if name in self.sweep[0].scores] + list(SET_METRICS)
            lines += ["", f"## Steps and guidance: the model's mean, {self.starts[0].start} start", "",
                      "| steps | guidance | " + " | ".join(names) + " | seconds |", "|---" * (len(names) + 3) + "|"]
            for setting in self.sweep:
                mark = " **best**" if setting is best else ""
                lines.append(f"| {setting.steps}{mark} | {setting.guidance:g} | "
                             + " | ".join(f"{setting.scores[name]:.3f}" for name in names) + f" | {setting.seconds:.2f} |")
            if best is not None:
                lines += ["", f"Lowest DTW-MJE: {best.steps} steps, guidance {best.guidance:g}."]
        for language in self.languages:
            chosen = sum(item.language == language for item in self.items)
            lines += ["", f"## {language} ({chosen} items), {self.starts[0].start} start: mean", ""]
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
    """Score the model and every baseline on one split, from every start of `config.starts`; with
    `out_dir`, write the report there.

    With several `steps` or `guidance` values, the model is generated once per combination from
    the headline start and the sweep's table gives each one's means; the main tables use the
    model's default setting when it is among them, else the first combination."""
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
    signs, controls = [item.sign for item in items], other_texts(items)
    retrieval, mean, mean_motion = (RetrievalBaseline(training, groups.hand_shapes), MeanBaseline(training),
                                    MeanBaseline(training, motion=True))
    constant = constant_length(training)

    generated, seconds, starts, predictions = {}, {}, [], None
    for start in config.starts:
        first_poses = first_poses_for(start, items)
        swept = settings if start == config.starts[0] else [main]
        for setting in tqdm(swept, desc=f"generate ({start} start)", unit="setting",
                            disable=not config.progress or len(swept) == 1):
            began = time.perf_counter()
            generated[setting] = _generate(model, signs, first_poses, *setting, config.batch_size)
            seconds.setdefault(setting, time.perf_counter() - began)
        outputs = {"model": generated[main],
                   "other_text": _generate(model, controls, first_poses, *main, config.batch_size)}
        baselines = {"static": [], "retrieval": [], "mean": [], "mean_motion": []}
        for item, (prediction, _), pose in zip(items, outputs["model"], starting_poses(model, first_poses)):
            frames = len(prediction) if config.baseline_length == "predicted" else item.sequence.num_frames
            baselines["static"].append(static_baseline(pose, item.sequence.num_frames))
            baselines["retrieval"].append(retrieval(item.sign, item.gloss, frames, pose, exclude=item.id))
            baselines["mean"].append(mean(frames, pose))
            baselines["mean_motion"].append(mean_motion(frames, pose))
        outputs.update(baselines)
        scores = {system: _score_system(items, system_outputs, groups, config.metrics,
                                        progress=config.progress and system == "model")
                  for system, system_outputs in outputs.items()}
        results = [ItemResult(item.id, item.sign.text, item.sign.notation, item.sign.language or "unknown",
                              item.sequence.num_frames, {system: len(outputs[system][i][0]) for system in SYSTEMS},
                              {system: scores[system][i] for system in SYSTEMS})
                   for i, item in enumerate(items)]
        length = {"model": float(np.mean([abs(len(data) - item.sequence.num_frames)
                                          for (data, _), item in zip(outputs["model"], items)])),
                  "constant": float(np.mean([abs(constant - item.sequence.num_frames) for item in items])),
                  "constant_frames": float(constant)}
        starts.append(StartReport(start, results, length))
        if start == config.starts[0]:
            predictions, headline_scores, headline_generated = outputs["model"], scores["model"], dict(generated)

    sweep = []
    if len(settings) > 1:
        sweep_metrics = [m for m in SWEEP_METRICS if m in config.metrics]
        for setting in settings:  # the main setting is scored already
            setting_scores = (headline_scores if setting == main
                              else _score_system(items, headline_generated[setting], groups, sweep_metrics))
            means = _means(setting_scores)
            sweep.append(Setting(*setting, {name: means[name] for name in (*sweep_metrics, *SET_METRICS)},
                                 seconds[setting]))

    baseline_length = "the model's predicted length" if config.baseline_length == "predicted" else "the reference length"
    report = EvaluationReport(
        model=model_name, data=str(data_dir), split=config.split, starts=starts, metrics=list(config.metrics),
        steps=main[0], guidance=main[1], generation_seconds=seconds[main],
        lengths={"model": "predicted by the model", "other_text": "predicted by the model from the other text",
                 "static": "the reference length", "retrieval": f"resampled to {baseline_length}",
                 "mean": f"resampled to {baseline_length}", "mean_motion": f"resampled to {baseline_length}"},
        sweep=sweep)
    if out_dir is not None:
        write_report(report, out_dir, model, items[:config.examples], predictions[:config.examples])
    return report


def _generate(model: "T2PModel", signs: Sequence["SignText"], first_poses: Sequence, steps: int,
              guidance: float, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The model's (positions, confidence: 0 where it predicts a joint absent) per text, from each
    item's first pose (None: the neutral pose)."""
    from t2p.generation import generate
    outputs = []
    for begin in range(0, len(signs), batch_size):
        for generated in generate(model, signs[begin:begin + batch_size], first_poses=first_poses[begin:begin + batch_size],
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
