"""How well composed signs are joined: `t2p evaluate --task compose`.

At every join (the last frame of a sign to the first of the next) the peak speed and jerk
(`join_peaks`, as fluent-pose-synthesis measures them) are compared with (a) the motion inside
the recordings that were composed (`RecordedMotion`): a join should move no faster and no
more abruptly than real signing does, and with (b) the same recordings joined by spoken-to-signed's
smooth concatenation (`spoken_to_signed_concatenation`, its own `concatenate_poses`), by a linear
blend, and by a jump cut (nothing between the signs), which a transition must beat.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from t2p.config import write_json, write_text
from t2p.data import PreparedItem
from t2p.evaluation.metrics import dtw_mje
from t2p.generation import SignRequest, generate
from t2p.generation.compose import Composition, compose, cut_at_connection_points, layout_segments
from t2p.model import T2PModel
from t2p.pose import Keypoints, PoseSequence, Skeleton, frame_motion, in_layout, read_pose, to_pose, to_sequence

# --- Joins: speed and jerk where one sign meets the next ---------------------------------------

JOIN_MARGIN = 2  # frames of each sign on either side of a join that its peaks look at
# a join is within the recorded motion when its peak speed and peak jerk are each no higher than
# this share of the recordings' stretches as long as its window (`RecordedMotion.within`)
WITHIN_SHARE = 0.95


def speed_and_jerk(data: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Speed and jerk as fluent-pose-synthesis reports them (`stitching/metrics.py` of
    github.com/sign-language-processing/fluent-pose-synthesis at d9b7a42: `hand_velocity_series`,
    `hand_accel_series`, `hand_jerk_series`): the speed of a step is the mean displacement of the
    keypoints seen in both frames (shoulder widths per frame), acceleration the absolute change of
    speed from one step to the next, jerk the absolute change of acceleration.

    Two departures, both so that tracking gaps do not read as motion: every joint of the skeleton
    counts, not the hands alone (a lexicon recording's hands are out of view at its ends, which is
    where signs are joined), and each jerk value is taken over the joints seen in all four frames it
    spans, so a hand coming into view is not a jerk. Steps (jerks) without such a joint are NaN.
    Returns speed `(frames - 1,)` and jerk `(frames - 3,)`; jerk[t] covers frames t..t+3."""
    # data: (frames, joints, dims); confidence: (frames, joints)
    seen = confidence > 0
    speed = frame_motion(data, confidence, per_frame=True, unseen=np.nan)  # (frames - 1,)
    steps = np.linalg.norm(np.diff(data, axis=0), axis=-1)  # (frames - 1, joints)
    frames = len(data)
    if frames < 4:
        return speed, np.zeros(0)
    span = seen[:-3] & seen[1:-2] & seen[2:-1] & seen[3:]  # (frames - 3, joints): seen in t..t+3
    count = span.sum(1)
    # the three steps' speeds over one joint set: (frames - 3, 3)
    speeds = np.stack([(steps[k:frames - 3 + k] * span).sum(1) for k in range(3)], axis=1) / np.maximum(count, 1)[:, None]
    acceleration = np.abs(np.diff(speeds, axis=1))  # (frames - 3, 2)
    jerk = np.where(count > 0, np.abs(acceleration[:, 1] - acceleration[:, 0]), np.nan)
    return speed, jerk


@dataclass(frozen=True)
class JoinPeak:
    """The fastest step and the largest jerk within a window of `frames` frames: from `margin`
    frames before a join's last sign frame to `margin` frames after the next sign's first frame."""
    speed: float
    jerk: float
    frames: int


def join_peaks(data: np.ndarray, confidence: np.ndarray, joins: Sequence[tuple[int, int]],
               margin: int = JOIN_MARGIN) -> list[JoinPeak]:
    """For each join (last frame of one sign, first frame of the next, in `data`), its peaks
    (`speed_and_jerk` of the steps and jerks whose frames all lie in the join's window)."""
    # data: (frames, joints, dims); confidence: (frames, joints)
    speed, jerk = speed_and_jerk(data, confidence)
    peaks = []
    for last, first in joins:
        if not 0 <= last < first < len(data):
            raise ValueError(f"a join runs from a sign's last frame to the next one's first, got {last}, {first}")
        begin, end = max(0, last - margin), min(len(data) - 1, first + margin)  # frames begin..end
        peaks.append(JoinPeak(*_window_peaks(speed, jerk, begin, end), end - begin + 1))
    return peaks


def _window_peaks(speed: np.ndarray, jerk: np.ndarray, begin: int, end: int) -> tuple[float, float]:
    """The largest speed and jerk of frames begin..end (steps begin..end-1, jerks begin..end-3)."""
    return _peak(speed[begin:end]), _peak(jerk[begin:max(begin, end - 2)])


def _peak(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else float("nan")


@dataclass(frozen=True)
class RecordedMotion:
    """The speed and jerk series (`speed_and_jerk`) inside some recordings: how fast and how
    abruptly real signers move, against which a join is ranked."""
    series: tuple[tuple[np.ndarray, np.ndarray], ...]  # per recording: speed (frames - 1,), jerk (frames - 3,)

    @classmethod
    def of(cls, recordings: Sequence[tuple[np.ndarray, np.ndarray]]) -> "RecordedMotion":
        """`recordings`: (data (frames, joints, dims), confidence (frames, joints)) pairs."""
        return cls(tuple(speed_and_jerk(data, confidence) for data, confidence in recordings))

    def window_peaks(self, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Peak speed and peak jerk of every stretch of `frames` frames inside the recordings."""
        speeds, jerks = [], []
        for speed, jerk in self.series:
            for begin in range(len(speed) + 1 - frames + 1):
                peak = _window_peaks(speed, jerk, begin, begin + frames - 1)
                if all(math.isfinite(value) for value in peak):
                    speeds.append(peak[0])
                    jerks.append(peak[1])
        return np.asarray(speeds), np.asarray(jerks)

    def rank(self, peak: JoinPeak) -> tuple[float, float]:
        """The share of the recordings' stretches as long as the join's window whose peak speed (and
        peak jerk) is lower than the join's: 0.5 is as fast (abrupt) as real signing typically gets
        within so many frames, 1.0 faster than anything in the recordings."""
        speeds, jerks = self.window_peaks(peak.frames)
        if not speeds.size:
            raise ValueError(f"the recordings have no stretch of {peak.frames} frames to compare a join with")
        return float(np.mean(speeds < peak.speed)), float(np.mean(jerks < peak.jerk))

    def within(self, peak: JoinPeak, share: float = WITHIN_SHARE) -> bool:
        """The join is no faster and no more abrupt than `share` of the recordings' stretches as long."""
        return max(self.rank(peak)) <= share

    def summary(self) -> dict:
        """Median, 95th percentile and largest of every step's speed and every jerk, pooled."""
        pooled = {name: np.concatenate([s[index] for s in self.series] or [np.zeros(0)])
                  for index, name in enumerate(("speed", "jerk"))}
        return {name: {"median": float(np.nanmedian(values)), "p95": float(np.nanpercentile(values, 95)),
                       "max": float(np.nanmax(values))} for name, values in pooled.items()}




def jump_cut(signs: Sequence[Keypoints]) -> Composition:
    """The signs one after the other with nothing between them: the join any transition must beat."""
    return Composition.of([(str(index), "sign", sign) for index, sign in enumerate(signs)])


def spoken_to_signed_concatenation(signs: Sequence[PoseSequence], skeleton: Skeleton) -> Composition:
    """spoken-to-signed's smooth concatenation of these signs, by its own `concatenate_poses`
    (spoken_to_signed.gloss_to_pose.concatenate), with the signs as they are (no trimming, no speed
    cap, no hiding of lowered hands): only the joining differs from `compose`'s. Each sign goes to
    it as a pose in its recording's file layout (`sign.layout`). Where it joins two signs is where
    its `find_best_connection_point` cuts them (`_connection_points`, the same calls on the same
    poses); the frames between are its padding, interpolated and then low-pass filtered with
    everything else. Returned on `skeleton`, shoulder-normalised."""
    import contextlib
    import io

    from spoken_to_signed.gloss_to_pose import concatenate

    if len(signs) < 2 or any(sign.layout is None for sign in signs):
        raise ValueError("spoken-to-signed concatenates two or more signs read from pose files (with a layout)")
    poses = [in_layout(to_pose(sign.data, skeleton, sign.fps, sign.normalization, sign.confidence, sign.canvas),
                       skeleton, sign.layout) for sign in signs]
    cuts = _connection_points(poses)  # before concatenate_poses, which cuts the poses' bodies in place
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every stage
        joined = concatenate.concatenate_poses(poses, trim=False, max_sign_seconds=None, hide_idle_hands=False)
    sequence = to_sequence(joined, skeleton)
    begins = [0] + [begin for _, begin in cuts]
    ends = [end for end, _ in cuts] + [len(signs[-1].data)]
    kept = [end - begin for begin, end in zip(begins, ends)]
    padding, rest = divmod(sequence.num_frames - sum(kept), len(signs) - 1)
    if rest or padding < 0:
        raise RuntimeError(f"spoken-to-signed's {sequence.num_frames} frames are not the {kept} frames it kept "
                           "with equal padding between: its concatenation changed")
    pieces = []
    for index, frames in enumerate(kept):
        pieces.append((str(index), "sign", frames))
        if index < len(kept) - 1:
            pieces.append((f"{index}→{index + 1}", "transition", padding))
    return Composition(sequence.data, sequence.confidence, layout_segments(pieces))


def _connection_points(poses: Sequence) -> list[tuple[int, int]]:
    """(last frame kept + 1 of a sign, first frame kept of the next) for every two signs in a row,
    as spoken-to-signed's `concatenate_poses(trim=False)` finds them: its own `reduce_holistic` (when
    its settings ask for it) and `normalize_pose`, then `find_best_connection_point` of each pair."""
    from spoken_to_signed.gloss_to_pose.concatenate import ConcatenationSettings, normalize_pose, reduce_holistic
    from spoken_to_signed.gloss_to_pose.smoothing import find_best_connection_point
    prepared = [pose.copy() for pose in poses]
    if ConcatenationSettings.is_reduce_holistic:
        prepared = [reduce_holistic(pose) for pose in prepared]
    prepared = [normalize_pose(pose) for pose in prepared]
    return [tuple(int(frame) for frame in find_best_connection_point(before, after))
            for before, after in zip(prepared[:-1], prepared[1:])]


@dataclass
class CompositionReport:
    sentences: int
    recorded: dict  # speed / jerk -> median, p95, max inside the composed signs' recordings (`RecordedMotion`)
    joins: dict     # method -> peak speed and jerk at its joins (median, max) and the share within the recordings'
    segment_dtw_mje: dict  # "alone" / "composed" -> mean DTW-MJE of each sign against its reference

    def to_markdown(self) -> str:
        lines = ["| joins | peak speed: median (largest) | its rank in the recordings | peak jerk: median (largest) | "
                 "its rank | joins within the recordings' 95% |", "|---|---|---|---|---|---|"]
        for method, scores in self.joins.items():
            speed, jerk = scores["speed"], scores["jerk"]
            lines.append(f"| {method} | {speed['median']:.3f} ({speed['max']:.3f}) | {speed['rank']:.2f} | "
                         f"{jerk['median']:.3f} ({jerk['max']:.3f}) | {jerk['rank']:.2f} | "
                         f"{scores['within_recorded']:.0%} of {scores['joins']} |")
        speed, jerk = self.recorded["speed"], self.recorded["jerk"]
        lines.append(f"| *inside the recordings, every frame: median / 95th percentile (largest)* | {speed['median']:.3f}"
                     f" / {speed['p95']:.3f} ({speed['max']:.3f}) | | {jerk['median']:.3f} / {jerk['p95']:.3f} "
                     f"({jerk['max']:.3f}) | | |")
        lines += ["", "| each sign against its reference | DTW-MJE |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in self.segment_dtw_mje.items()]
        return "\n".join(lines)

    def write(self, out_dir: str | Path, split: str) -> str:
        """composition.json and composition.md in `out_dir`; returns the markdown."""
        out = Path(out_dir)
        write_json(out / "composition.json", asdict(self))
        text = (f"# Composition: {self.sentences} sentences of three {split} signs\n\nPeak speed (shoulder widths "
                "per frame) and jerk (`metrics.speed_and_jerk`) from two frames before each join to two after, "
                "ranked among every stretch as long inside the recordings composed (0.5: as typical real signing; "
                "1.0: beyond anything recorded); a join is within the recordings' 95% when both ranks are:\n\n" + self.to_markdown() + "\n")
        write_text(out / "composition.md", text)
        return text


def join_scores(compositions: Sequence[Composition], recorded: RecordedMotion) -> dict:
    """Peak speed and jerk at every join of `compositions` (`join_peaks`): median, largest,
    the median rank among the recordings' stretches as long (`RecordedMotion.rank`), and the share
    of joins within the recordings' 95% on both."""
    peaks = [peak for c in compositions for peak in join_peaks(c.data, c.confidence, c.joins)]
    if not peaks:
        raise ValueError("no joins to score: compose two or more signs")
    ranks = np.array([recorded.rank(peak) for peak in peaks])  # (joins, 2): speed, jerk
    scores = {"joins": len(peaks), "within_recorded": float(np.mean(ranks.max(1) <= WITHIN_SHARE))}
    for column, name in enumerate(("speed", "jerk")):
        values = [getattr(peak, name) for peak in peaks]
        scores[name] = {"median": float(np.nanmedian(values)), "max": float(np.nanmax(values)),
                        "rank": float(np.median(ranks[:, column]))}
    return scores


def evaluate_composition(model: T2PModel, items: Sequence[PreparedItem], signs_per_sentence: int = 3,
                         steps: int | None = None) -> CompositionReport:
    """Sentences of `signs_per_sentence` consecutive items of one language. Their recordings are
    joined five ways: by `compose`'s generated transitions (with the signs cut at their connection
    points, and whole), by spoken-to-signed's smooth concatenation (`spoken_to_signed_concatenation`),
    and, between the same cut signs as `compose`'s, by a linear blend as long as its transition and
    by a jump cut; and the generated signs (from the first recording's first frame) by `compose`. Every join's peak speed and jerk is compared with the motion inside the
    recordings. Per sign: DTW-MJE against its own recording, composed and alone."""
    from tqdm import tqdm

    by_language: dict = {}
    for item in items:
        by_language.setdefault(item.sign.language, []).append(item)
    sentences = [group[begin:begin + signs_per_sentence] for group in by_language.values()
                 for begin in range(0, len(group) - signs_per_sentence + 1, signs_per_sentence)]
    joined: dict[str, list[Composition]] = {"t2p (generated transitions)": [], "t2p, generated signs": [],
                                            "t2p, whole signs (not cut)": [], "spoken-to-signed concatenation": [],
                                            "linear blend": [], "jump cut": []}
    segment_errors: dict[str, list[float]] = {"alone": [], "composed": []}
    recordings = []
    for sentence in tqdm(sentences, desc="compose", unit="sentence", leave=False, disable=None):
        first_pose = sentence[0].sequence
        signs = [SignRequest(item.sign, first_pose=first_pose, steps=steps) for item in sentence]
        recorded = [Keypoints(item.sequence.data, item.sequence.confidence) for item in sentence]
        recordings += [(sign.data, sign.confidence) for sign in recorded]
        between = compose(model, signs, recorded=dict(enumerate(recorded)))
        joined["t2p (generated transitions)"].append(between)
        joined["t2p, whole signs (not cut)"].append(compose(model, signs, recorded=dict(enumerate(recorded)),
                                                            cut_at_connections=False))
        cut = cut_at_connection_points(recorded, model.config.fps, model.skeleton)  # the signs as `between` joins them
        joined["linear blend"].append(_linear_blend(between, cut))
        joined["jump cut"].append(jump_cut(cut))
        laid_out = [replace(item.sequence, layout=to_sequence(read_pose(item.source_path), model.skeleton).layout)
                    for item in sentence]
        joined["spoken-to-signed concatenation"].append(spoken_to_signed_concatenation(laid_out, model.skeleton))
        composition = compose(model, signs)
        joined["t2p, generated signs"].append(composition)
        alone = generate(model, signs)
        signs = [segment for segment in composition.segments if segment.kind == "sign"]
        for item, segment, sign in zip(sentence, signs, alone):
            reference = item.sequence
            composed = slice(segment.begin, segment.end)
            segment_errors["composed"].append(dtw_mje(composition.data[composed], reference.data, reference.confidence,
                                                      predicted_confidence=composition.confidence[composed]))
            segment_errors["alone"].append(dtw_mje(sign.data, reference.data, reference.confidence,
                                                   predicted_confidence=sign.confidence))
    motion = RecordedMotion.of(recordings)
    return CompositionReport(len(sentences), motion.summary() if recordings else {},
                             {method: join_scores(c, motion) for method, c in joined.items() if c},
                             {name: float(np.nanmean(values)) for name, values in segment_errors.items()})


def _linear_blend(composition: Composition, signs: Sequence[Keypoints]) -> Composition:
    """The same signs joined by a straight line as long as each of `composition`'s transitions."""
    transitions = [segment for segment in composition.segments if segment.kind == "transition"]
    pieces = []
    for index, sign in enumerate(signs):
        pieces.append((str(index), "sign", sign))
        if index < len(transitions):
            frames = transitions[index].end - transitions[index].begin
            weights = np.linspace(0, 1, frames + 2)[1:-1].reshape(-1, 1, 1)
            data = (1 - weights) * sign.data[-1] + weights * signs[index + 1].data[0]
            confidence = np.repeat(np.minimum(sign.confidence[-1], signs[index + 1].confidence[0])[None], frames, 0)
            pieces.append((f"{index}→{index + 1}", "transition", Keypoints(data.astype(np.float32), confidence)))
    return Composition.of(pieces)
