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
- the baselines of `t2p.evaluation.baselines`: static (the start held still), retrieval (the same letter
  recorded in another language), mean and mean_motion.
Retrieval and the means are resampled to the model's predicted length (a system does not know the
reference length; `EvaluationConfig.baseline_length="reference"` gives them the reference length).
The length the model predicts is compared with a constant one, the training data's mean length.

Back-retrieval asks whether outputs are specific to their text: the share of outputs closer
(DTW-MJE) to their own reference than to every other test reference (top-1), or than to all but
at most four (top-5). Chance is 1/N and 5/N.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from t2p.data import PreparedItem, load_manifest, read_items
from t2p.evaluation.baselines import MeanBaseline, RetrievalBaseline, constant_length, static_baseline
from t2p.evaluation.metrics import METRICS, JointGroups, back_retrieval_ranks, dtw_mje_matrix, score
from t2p.evaluation.notation import NOTATIONS_WITH_PARTS, edit_test, string_split
from t2p.evaluation.report import (
    SET_METRICS,
    SWEEP_METRICS,
    SYSTEMS,
    EvaluationReport,
    ItemResult,
    Setting,
    StartReport,
    write_report,
)
from t2p.generation import SignRequest, generate, starting_poses
from t2p.model import T2PModel
from t2p.notation import SignText
from t2p.pose import Keypoints, PoseSequence, Skeleton, read_pose, to_sequence

BASELINE_LENGTHS = ("predicted", "reference")

def other_items(items: Sequence[PreparedItem]) -> list[PreparedItem]:
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


def other_texts(items: Sequence[PreparedItem]) -> list[SignText]:
    """The other-text control: if the model scores as well with these, it does not use the text."""
    return [other.sign for other in other_items(items)]
STARTS = ("neutral", "own", "other")


def first_poses_for(start: str, items: Sequence[PreparedItem]) -> list:
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


# --- Running it ---------------------------------------------------------------------------------

GenerationSetting = tuple[int, float]  # (steps, guidance)


def evaluate(model: T2PModel, data_dir: Union[str, Path], out_dir: Union[str, Path] | None = None,
             config: EvaluationConfig | None = None, model_name: str = "") -> EvaluationReport:
    """Score the model and every baseline on one split, from every start of `config.starts`; with
    `out_dir`, write the report there.

    With several `steps` or `guidance` values, the model is generated once per combination from
    the headline start and the sweep's table gives each one's means; the main tables use the
    model's default setting when it is among them, else the first combination."""
    config = config or EvaluationConfig()
    items, training = _evaluation_items(model, data_dir, config)
    defaults = model.schedule_config
    settings = [(int(steps), float(guidance)) for steps in (config.steps or (defaults.steps,))
                for guidance in (config.guidance or (defaults.guidance,))]
    main = (defaults.steps, float(defaults.guidance))
    main = main if main in settings else settings[0]
    systems = _Systems(model, items, training, config)

    starts, seconds, headline = [], {}, None
    for start in config.starts:
        first_poses = first_poses_for(start, items)
        swept = settings if start == config.starts[0] else [main]
        generated = systems.generate_settings(first_poses, swept, seconds, progress=config.progress and len(swept) > 1)
        outputs = systems.outputs(generated[main], first_poses, main)
        scores = {system: systems.score(system_outputs, config.metrics, progress=config.progress and system == "model")
                  for system, system_outputs in outputs.items()}
        starts.append(_start_report(start, items, outputs, scores, systems.constant_length))
        if headline is None:
            headline = (generated, scores["model"])

    generated, headline_scores = headline
    notation = _notation_report(model, items, training, starts[0], systems.groups, main[0], config)
    sweep = [] if len(settings) == 1 else [
        _sweep_point(setting, headline_scores if setting == main else systems.score(generated[setting],
                                                                                     _sweep_metrics(config)),
                     config, seconds[setting]) for setting in settings]
    report = EvaluationReport(
        model=model_name, data=str(data_dir), split=config.split, starts=starts, metrics=list(config.metrics),
        steps=main[0], guidance=main[1], generation_seconds=seconds[main], lengths=_length_policies(config),
        sweep=sweep, notation=notation)
    if out_dir is not None:
        write_report(report, out_dir, model, items[:config.examples], generated[main][:config.examples])
    return report


def _evaluation_items(model: T2PModel, data_dir: Union[str, Path],
                      config: EvaluationConfig) -> tuple[list[PreparedItem], list[PreparedItem]]:
    """The split's items (and the training items the baselines draw on), checked against the model."""
    manifest = load_manifest(data_dir)
    if manifest["skeleton"] != model.config.skeleton:
        raise ValueError(f"the model's skeleton differs from the skeleton of {data_dir}: "
                         "evaluate on data prepared for this model")
    items = read_items(data_dir, config.split, limit=config.limit)
    if not items:
        raise ValueError(f"{data_dir} has no {config.split} items")
    return items, read_items(data_dir, "train")


class _Systems:
    """What every system outputs for the items, and how each output is scored."""

    def __init__(self, model: T2PModel, items: list[PreparedItem], training: list[PreparedItem],
                 config: EvaluationConfig):
        self.model, self.items, self.config = model, items, config
        self.groups = JointGroups.of(model.skeleton)
        self.retrieval = RetrievalBaseline(training, self.groups.hand_shapes)
        self.mean, self.mean_motion = MeanBaseline(training), MeanBaseline(training, motion=True)
        self.constant_length = constant_length(training)
        self.controls = other_texts(items)

    def generate_settings(self, first_poses: list, settings: list[GenerationSetting], seconds: dict,
                          progress: bool) -> dict[GenerationSetting, list[Keypoints]]:
        """The model's outputs at each (steps, guidance); the first timing of each goes into `seconds`."""
        from tqdm import tqdm
        generated = {}
        for setting in tqdm(settings, desc="generate", unit="setting", disable=not progress or None):
            began = time.perf_counter()
            generated[setting] = _generate(self.model, [item.sign for item in self.items], first_poses, *setting,
                                           self.config.batch_size)
            seconds.setdefault(setting, time.perf_counter() - began)
        return generated

    def outputs(self, model_outputs: list[Keypoints], first_poses: list,
                setting: GenerationSetting) -> dict[str, list[Keypoints]]:
        """system -> its output per item: the model's, the other-text control, and the baselines
        (resampled to the model's predicted length, or the reference's, as configured)."""
        outputs = {"model": model_outputs,
                   "other_text": _generate(self.model, self.controls, first_poses, *setting, self.config.batch_size),
                   "static": [], "retrieval": [], "mean": [], "mean_motion": []}
        for item, prediction, pose in zip(self.items, model_outputs, starting_poses(self.model, first_poses)):
            frames = len(prediction) if self.config.baseline_length == "predicted" else item.sequence.num_frames
            outputs["static"].append(Keypoints(*static_baseline(pose, item.sequence.num_frames)))
            outputs["retrieval"].append(Keypoints(*self.retrieval(item.sign, item.gloss, frames, pose, exclude=item.id)))
            outputs["mean"].append(Keypoints(*self.mean(frames, pose)))
            outputs["mean_motion"].append(Keypoints(*self.mean_motion(frames, pose)))
        return outputs

    def score(self, outputs: Sequence[Keypoints], metrics: Sequence[str], progress: bool = False) -> list[dict[str, float]]:
        """Every metric and the back-retrieval hits of one system's outputs, one dict per item."""
        from tqdm import tqdm
        scores = []
        for item, output in tqdm(list(zip(self.items, outputs)), desc="score", unit="item", disable=not progress or None):
            reference = item.sequence
            scores.append(score(PoseSequence(output.data, output.confidence, reference.fps, reference.normalization,
                                             reference.canvas), reference, self.groups, metrics))
        distances = dtw_mje_matrix([(output.data, output.confidence) for output in outputs],
                                   [(item.sequence.data, item.sequence.confidence) for item in self.items])
        for item_scores, rank in zip(scores, back_retrieval_ranks(distances)):
            item_scores["back_retrieval_top1"] = float(rank < 1)
            item_scores["back_retrieval_top5"] = float(rank < 5)
        return scores


def _start_report(start: str, items: list[PreparedItem], outputs: dict[str, list[Keypoints]],
                  scores: dict[str, list[dict[str, float]]], constant: int) -> StartReport:
    results = [ItemResult(item.id, item.sign.text, item.sign.notation, item.sign.language or "unknown",
                          item.sequence.num_frames, {system: len(outputs[system][i]) for system in SYSTEMS},
                          {system: scores[system][i] for system in SYSTEMS})
               for i, item in enumerate(items)]
    length = {"model": float(np.mean([abs(len(output) - item.sequence.num_frames)
                                      for output, item in zip(outputs["model"], items)])),
              "constant": float(np.mean([abs(constant - item.sequence.num_frames) for item in items])),
              "constant_frames": float(constant),
              # in seconds: frame counts of data at different rates are not comparable
              "model_s": float(np.mean([abs(len(output) - item.sequence.num_frames) / item.sequence.fps
                                        for output, item in zip(outputs["model"], items)])),
              "constant_s": float(np.mean([abs(constant - item.sequence.num_frames) / item.sequence.fps
                                           for item in items]))}
    return StartReport(start, results, length)


def _notation_report(model: T2PModel, items: list[PreparedItem], training: list[PreparedItem], headline: StartReport,
                     groups, steps: int, config: EvaluationConfig) -> dict | None:
    """For data in a notation with parts, and the handshape metric: held-out items by seen and
    unseen string, and the handshape-edit test on the training signs (t2p.evaluation.notation)."""
    if "handshape" not in config.metrics or not {item.sign.notation for item in items} & set(NOTATIONS_WITH_PARTS):
        return None
    scores = {system: [result.scores[system]["handshape"] for result in headline.items] for system in SYSTEMS}
    strings = string_split(items, training, scores["model"], scores["other_text"], groups)
    return {"strings": strings.to_dict(), "edits": edit_test(model, training, groups, steps=steps)}


def _sweep_metrics(config: EvaluationConfig) -> list[str]:
    return [metric for metric in SWEEP_METRICS if metric in config.metrics]


def _sweep_point(setting: GenerationSetting, scores: list[dict[str, float]], config: EvaluationConfig,
                 seconds: float) -> Setting:
    means = _means(scores)
    return Setting(*setting, {name: means[name] for name in (*_sweep_metrics(config), *SET_METRICS)}, seconds)


def _length_policies(config: EvaluationConfig) -> dict[str, str]:
    baseline = "the model's predicted length" if config.baseline_length == "predicted" else "the reference length"
    return {"model": "predicted by the model", "other_text": "predicted by the model from the other text",
            "static": "the reference length", "retrieval": f"resampled to {baseline}",
            "mean": f"resampled to {baseline}", "mean_motion": f"resampled to {baseline}"}


def _generate(model: T2PModel, signs: Sequence[SignText], first_poses: Sequence, steps: int, guidance: float,
              batch_size: int) -> list[Keypoints]:
    """The model's output per text (confidence 0 where it predicts a joint absent), from each item's
    first pose (None: the neutral pose), `batch_size` requests per call."""
    requests = [SignRequest(sign, first_pose=first, steps=steps, guidance=guidance)
                for sign, first in zip(signs, first_poses)]
    return [output for begin in range(0, len(requests), batch_size)
            for output in generate(model, requests[begin:begin + batch_size])]


def _means(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    names = scores[0].keys() if scores else ()
    return {name: float(np.nanmean([item[name] for item in scores])) for name in names}


def compare_files(predicted: Union[str, Path], reference: Union[str, Path],
                  metrics: Sequence[str] | None = None) -> dict[str, float]:
    """Every metric (or the named ones) for two `.pose` files of any supported layout, both mapped
    onto the default skeleton built from the first file."""
    first = read_pose(predicted)
    skeleton = Skeleton.from_pose(first)
    return score(to_sequence(first, skeleton), to_sequence(read_pose(reference), skeleton),
                 JointGroups.of(skeleton), metrics)


