"""The evaluation report: every system's scores from every start (`EvaluationReport`), its
tables (`report.md`), `report.json`, a box plot per metric and rendered examples (`write_report`).
`t2p.evaluation.evaluate` fills it."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from t2p.config import write_json, write_text
from t2p.data import PreparedItem
from t2p.evaluation.metrics import METRICS, MetricInfo
from t2p.evaluation.render import Panel, render
from t2p.generation import as_pose
from t2p.model import T2PModel
from t2p.pose import Keypoints, to_pose

SYSTEMS = ("model", "other_text", "static", "retrieval", "mean", "mean_motion")
# scores of the whole set, kept per item (1 = hit) so that their mean is the rate
SET_METRICS: dict[str, MetricInfo] = {
    "back_retrieval_top1": MetricInfo("share of outputs closer (DTW-MJE) to their own reference than to every other "
                                      "test reference; chance 1/N", "t2p", "higher"),
    "back_retrieval_top5": MetricInfo("share of outputs with at most 4 other test references closer than their own; "
                                      "chance 5/N", "t2p", "higher"),
}
SWEEP_METRICS = ("dtw_mje", "handshape", "mje", "dtwp", "presence_error", "displacement_ratio")



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
    # data in a notation with parts (t2p.evaluation.notation): held-out items by seen and unseen
    # string, and the handshape-edit test; None for plain text
    notation: dict | None = None

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
            "examples": self.examples, "plots": self.plots, "notation": self.notation,
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

    def notation_tables(self) -> list[str]:
        """What the notation carries (t2p.evaluation.notation): seen and unseen strings, the edit test."""
        split, edits = self.notation["strings"], self.notation["edits"]
        lines = [f"## What the notation carries, {self.starts[0].start} start: handshape", "",
                 "| held-out items | items | model | other text | training recordings of the same string |",
                 "|---|---|---|---|---|"]
        for name, row in (("string seen in training (another language)", split["seen"]),
                          ("string never seen", split["unseen"])):
            recordings = row.get("same_string_recordings", float("nan"))
            lines.append(f"| {name} | {row['items']} | {row['model']:.3f} | {row['other_text']:.3f} | "
                         + ("-" if math.isnan(recordings) else f"{recordings:.3f}") + " |")
        if edits.get("edits"):
            lines += ["", f"Handshape edits ({edits['edits']} edits of {edits['signs']} training signs, each hand symbol "
                          "swapped for one of the training data's most common others): the hand's distance to the "
                          f"recordings that carry the swapped-in handshape went from {edits['to_carriers_unedited']:.3f} "
                          f"(unedited) to {edits['to_carriers_edited']:.3f} (edited), closer in "
                          f"{100 * edits['moved_toward_share']:.0f}% of edits; the arm moved {edits['arm_moved']:.3f} "
                          f"(DTW-MJE between the two outputs' arms; the unedited arm's own error: {edits['arm_error']:.3f})."]
        return lines

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
        if self.notation:
            lines += ["", *self.notation_tables()]
        for start in self.starts:
            lines += ["", f"## From the {start.start} start: mean (median)", ""]
            lines += _table(self.summary(start=start.start), self.all_metrics, median=True)
            seconds = (f" ({start.length['model_s']:.3f} s against {start.length['constant_s']:.3f} s)"
                       if "model_s" in start.length else "")
            lines += ["", f"Length MAE from the {start.start} start: model {start.length['model']:.2f} frames, "
                          f"constant ({start.length['constant_frames']:.0f} frames, the training mean) "
                          f"{start.length['constant']:.2f}{seconds}."]
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


def write_report(report: EvaluationReport, out_dir: Union[str, Path], model: T2PModel | None = None,
                 example_items: Sequence[PreparedItem] = (), example_predictions: Sequence[np.ndarray] = ()) -> Path:
    """report.json, report.md, plots/<metric>.png and examples/<id>.gif under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.plots = plot_metrics(report, out_dir / "plots")
    if model is not None and example_items:
        report.examples = render_examples(model, example_items, example_predictions, out_dir / "examples")
    report.plots = {name: str(Path(path).relative_to(out_dir)) for name, path in report.plots.items()}
    report.examples = [str(Path(path).relative_to(out_dir)) for path in report.examples]
    write_json(out_dir / "report.json", report.to_dict())  # JSON has no NaN: undefined values are null
    write_text(out_dir / "report.md", report.to_markdown())
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


def render_examples(model: T2PModel, items: Sequence[PreparedItem],
                    predictions: Sequence[Keypoints], example_dir: Union[str, Path]) -> list[str]:
    """Side-by-side GIFs of the model's prediction and the reference, the text as caption."""
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
