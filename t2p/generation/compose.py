"""Several signs in a row, built on the one refinement loop.

`compose`: each sign is generated as it would be alone (same signer, same first pose) and cut
where it comes closest to its neighbours (`cut_at_connection_points`, spoken-to-signed's
connection points); the frames between two signs are *inpainted* by the same model: a window of
the first sign's last frames, empty frames, and the next sign's first frames, with the known frames
given to the refiner and held fixed at every step, so the model draws the movement from one to the
next. The inpainted path is then re-timed (`pace_transition`) to the signs' own mean speed, and
each join low-pass filtered (`smooth_joins`). A `Composition` says which frames are which sign
(`Segment`s). How its joins compare with the recordings' own motion and with spoken-to-signed's
concatenation: `t2p.evaluation.joins` (`t2p evaluate --task compose`).

Which signs a sentence becomes (glosses, a lexicon, fingerspelling) is `t2p.generation.sentence`;
`change_speed` changes signing speed without changing the frame rate.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from t2p.config import write_json
from t2p.generation.loop import generate
from t2p.generation.request import Generator, SignRequest
from t2p.model import T2PModel
from t2p.notation import SignText
from t2p.pose import Keypoints, Skeleton, frame_motion, resample_to_frames, to_pose

# frames of each neighbouring sign the transition window holds fixed: with 3 or 8 the window starts
# mid-sign, unlike any training sequence, and the joins were 14-15x the signs' speed (median); with
# whole signs around the gap, 3x before pacing (`pace_transition`)
TRANSITION_CONTEXT = 32
MIN_TRANSITION, MAX_TRANSITION = 2, 24


@dataclass
class Segment:
    """Frames [begin, end) of a composed sequence: one sign, or the transition into the next."""
    text: str
    begin: int
    end: int
    kind: str  # "sign" or "transition"
    source: str = "model"  # where a sign came from: "model", "lexicon" or "fingerspelled" (transitions: "model")
    word: str = ""         # the spoken word it stands for, where known (the word spelled, for fingerspelling)


@dataclass
class Composition(Keypoints):
    """A composed sequence (shoulder-normalised) and what each stretch of frames is."""
    segments: list[Segment]

    @classmethod
    def of(cls, pieces: Sequence[tuple[str, str, Keypoints]]) -> "Composition":
        """(text, kind, frames) pieces one after the other, each a segment: the one way a
        composition is put together, whatever made its signs and transitions."""
        joined = Keypoints.concatenate([keypoints for _, _, keypoints in pieces])
        return cls(joined.data, joined.confidence, layout_segments([(text, kind, len(keypoints))
                                                                    for text, kind, keypoints in pieces]))

    @property
    def keypoints(self) -> Keypoints:
        return Keypoints(self.data, self.confidence)

    @property
    def joins(self) -> list[tuple[int, int]]:
        """(last frame of a sign, first frame of the next) for every two signs in a row."""
        signs = [segment for segment in self.segments if segment.kind == "sign"]
        return [(before.end - 1, after.begin) for before, after in zip(signs[:-1], signs[1:])]


def layout_segments(pieces: Sequence[tuple[str, str, int]]) -> list[Segment]:
    """(text, kind, frames) pieces laid out one after another as `Segment`s."""
    segments, position = [], 0
    for text, kind, frames in pieces:
        segments.append(Segment(text, position, position + frames, kind))
        position += frames
    return segments


def typical_velocity(signs: Sequence[Keypoints]) -> float:
    """The mean within-sign velocity of these signs (shoulder widths per frame)."""
    steps = np.concatenate([frame_motion(s.data, s.confidence, per_frame=True) for s in signs if len(s) > 1]
                           or [np.zeros(1)])
    return float(steps.mean()) if steps.size else 0.0


def transition_length(last: np.ndarray, first: np.ndarray, velocity: float) -> int:
    """Frames to move from one pose to the next at about the signs' own speed."""
    # last, first: (joints, dims)
    distance = float(np.linalg.norm(first - last, axis=-1).mean())
    if velocity <= 0:
        return MIN_TRANSITION
    return int(np.clip(math.ceil(distance / velocity) + 1, MIN_TRANSITION, MAX_TRANSITION))


def compose(model: T2PModel, signs: Sequence[SignRequest], speed: float = 1.0, transition_frames: int | None = None,
            recorded: dict[int, Keypoints] | None = None, generator: Generator = generate,
            cut_at_connections: bool = True, smooth: bool = True) -> Composition:
    """The signs in order, joined by generated transitions. Each request says how its sign is
    generated (one signer: give every sign the same first pose); its transition into the next is
    refined with the next sign's text, steps, guidance and proportions. With `cut_at_connections`,
    each sign ends (and the next begins) where the two come closest (`cut_at_connection_points`),
    so the hand does not fall to rest and rise again between signs; with `smooth`, each join is
    low-pass filtered (`smooth_joins`). `recorded` gives some signs as recordings (position ->
    sequence, e.g. a lexicon's, see `sentence.lexicon_sign`) instead of generating them; the
    transitions into and out of them are generated all the same. `generator`: `generate`, or a
    function like it (Serve's sends each request to its batches)."""
    if len(signs) == 0:
        raise ValueError("nothing to compose: give at least one sign")
    validate_speed(speed)
    recorded = recorded or {}
    to_generate = [i for i in range(len(signs)) if i not in recorded]
    generated = generator(model, [signs[i] for i in to_generate])
    by_position = {**dict(zip(to_generate, generated)), **recorded}
    sequences = [change_speed(by_position[i], speed) for i in range(len(signs))]
    if cut_at_connections:
        sequences = cut_at_connection_points(sequences, model.config.fps, model.skeleton)
    names = [request.text(model.config.default_notation).text for request in signs]
    transitions = _transitions(model, signs, sequences, transition_frames, generator)
    pieces = []
    for index, sign in enumerate(sequences):
        pieces.append((names[index], "sign", sign))
        if index < len(transitions):
            pieces.append((f"{names[index]}→{names[index + 1]}", "transition", transitions[index]))
    composition = Composition.of(pieces)
    return smooth_joins(composition, model.config.fps) if smooth else composition


def _transitions(model: T2PModel, signs: Sequence[SignRequest], sequences: list[Keypoints],
                 transition_frames: int | None, generator: Generator) -> list[Keypoints]:
    """The frames between every two signs in a row: inpainted in one batch, each conditioned on
    the sign it leads into, then paced to the signs' own speed."""
    velocity = typical_velocity(sequences)
    requests, gaps, contexts = [], [], []
    for before, after, sign in zip(sequences[:-1], sequences[1:], signs[1:]):
        gap = transition_frames or transition_length(before.data[-1], after.data[0], velocity)
        if gap + 2 > model.config.max_frames:  # at least one known frame on either side
            raise ValueError(f"a transition of {gap} frames does not fit the model's {model.config.max_frames} frames")
        context = min(TRANSITION_CONTEXT, (model.config.max_frames - gap) // 2)
        lead, tail = min(context, len(before)), min(context, len(after))
        joints, dims = before.data.shape[1:]
        window = Keypoints.concatenate([before.frames(-lead), Keypoints(np.zeros((gap, joints, dims), np.float32),
                                                                        np.zeros((gap, joints), np.float32)),
                                        after.frames(None, tail)])
        requests.append(SignRequest(sign.sign, first_pose=window.frames(0, 1), steps=sign.steps, length=len(window),
                                    guidance=sign.guidance, observed=window, keep_proportions=sign.keep_proportions))
        gaps.append(gap)
        contexts.append(lead)
    if not requests:
        return []
    filled = generator(model, requests)
    # the model decides where the hands go between two signs; the signs' own speed decides how fast
    # (inpainted frames alone peaked at 3x the signs' velocity at the joins, median: docs/quality.md)
    return [pace_transition(Keypoints.concatenate([before.frames(-1), f.frames(lead, lead + gap), after.frames(0, 1)]),
                            velocity, transition_frames)
            for f, lead, gap, before, after in zip(filled, contexts, gaps, sequences[:-1], sequences[1:])]


JOIN_SMOOTHING_SECONDS = 0.2  # each side of a transition, faded in and out
JOIN_CUTOFF_HZ = 6.0          # spoken-to-signed's low-pass cutoff (its `pose_butterworth_filter`)


def smooth_joins(composition: Composition, fps: float, seconds: float = JOIN_SMOOTHING_SECONDS,
                 cutoff: float = JOIN_CUTOFF_HZ) -> Composition:
    """Each transition and `seconds` of the signs on either side of it low-pass filtered (a zero-phase
    Butterworth, as spoken-to-signed filters a whole sentence), faded in and out so that the signs
    away from their joins keep every frame as generated or recorded."""
    from scipy.signal import butter, filtfilt
    data = composition.data.copy()  # (frames, joints, dims)
    b, a = butter(4, min(cutoff / (fps / 2), 0.99), btype="low")
    margin = max(1, round(seconds * fps))
    for transition in (s for s in composition.segments if s.kind == "transition"):
        begin, end = max(0, transition.begin - margin), min(len(data), transition.end + margin)
        context = slice(max(0, begin - 2 * margin), min(len(data), end + 2 * margin))
        seen = (composition.confidence[context] > 0).all(0)  # joints drawn throughout: (joints,)
        if context.stop - context.start <= 3 * max(len(a), len(b)) or not seen.any():
            continue
        filtered = filtfilt(b, a, composition.data[context][:, seen], axis=0)[begin - context.start:end - context.start]
        ramp = np.linspace(0, 1, margin + 2)[1:-1]  # (margin,): 0 < ... < 1
        lead, trail = transition.begin - begin, end - transition.end  # fewer than margin at the ends
        weight = np.concatenate([ramp[margin - lead:], np.ones(transition.end - transition.begin), ramp[::-1][:trail]])
        window = data[begin:end]
        window[:, seen] = (1 - weight[:, None, None]) * window[:, seen] + weight[:, None, None] * filtered
    return Composition(data.astype(np.float32), composition.confidence, composition.segments)


def cut_at_connection_points(signs: Sequence[Keypoints], fps: float, skeleton: Skeleton) -> list[Keypoints]:
    """Each sign cut where it comes closest to its neighbour: the pair of frames, one in the last
    0.3 s (or 30%) of a sign and one in the first of the next, whose joints (the face's aside) are nearest, by
    spoken-to-signed's own `find_best_connection_point` (what its smooth concatenation cuts at).
    The first sign keeps its onset, the last its offset. Recorded signs, and signs generated like
    them, start by raising the hand and end by lowering it (on the fingerspelling lexicon the first
    and last steps move 20x faster than the middle's median: docs/quality.md, Joins): joined whole,
    every join would drop the hand and raise it again."""
    from spoken_to_signed.gloss_to_pose.smoothing import find_best_connection_point
    bounds = [[0, len(sign)] for sign in signs]
    for index in range(len(signs) - 1):
        # on the skeleton's own components: the function leaves FACE_LANDMARKS out itself
        end, begin = find_best_connection_point(*(to_pose(s.data, skeleton, fps, confidence=s.confidence)
                                                  for s in signs[index:index + 2]))
        bounds[index][1] = max(int(end) + 1, bounds[index][0] + 1)  # its best frame is kept
        bounds[index + 1][0] = int(begin)
    return [sign.frames(begin, end) for sign, (begin, end) in zip(signs, bounds)]


def pace_transition(path: Keypoints, velocity: float, frames: int | None = None) -> Keypoints:
    """The frames strictly between the two ends of `path` (whose first and last frames are the signs'
    own), re-timed to cover the path's length at an even pace of at most `velocity` per frame (or in
    exactly `frames` frames): the same way, at the speed the signs themselves move."""
    # path.data: (frames, joints, dims)
    steps = frame_motion(path.data, path.confidence, per_frame=True)  # (frames - 1,)
    travelled = np.concatenate([[0.0], np.cumsum(steps)])
    if frames is None:
        needed = math.ceil(travelled[-1] / velocity) - 1 if velocity > 0 else MIN_TRANSITION
        frames = int(np.clip(needed, MIN_TRANSITION, MAX_TRANSITION))
    targets = travelled[-1] * np.arange(1, frames + 1) / (frames + 1)
    index = np.clip(np.searchsorted(travelled, targets, side="right") - 1, 0, len(steps) - 1)
    fraction = np.clip((targets - travelled[index]) / np.maximum(steps[index], 1e-12), 0.0, 1.0)
    nearer = np.where(fraction < 0.5, index, index + 1)
    # a joint present at both ends of its path segment moves along it; one that appears or disappears
    # there is taken from the nearer end, so it never travels from its resting place while drawn
    both = (path.confidence[index] > 0) & (path.confidence[index + 1] > 0)  # (frames, joints)
    between = path.data[index] + fraction[:, None, None] * (path.data[index + 1] - path.data[index])
    data = np.where(both[..., None], between, path.data[nearer])
    confidence = path.confidence[nearer]
    return Keypoints(data.astype(np.float32), confidence.astype(np.float32))


def write_segments(segments: Sequence[Segment], path: str | Path) -> Path:
    """A composition's segments as the .segments.json `t2p render --segments` reads."""
    return write_json(path, [asdict(segment) for segment in segments])


# --- speed --------------------------------------------------------------------------------------

MIN_SPEED, MAX_SPEED = 0.5, 2.0


def validate_speed(speed: float) -> None:
    if not (isinstance(speed, (int, float)) and MIN_SPEED <= speed <= MAX_SPEED):
        raise ValueError(f"speed must be in {MIN_SPEED}..{MAX_SPEED}, got {speed}")


def change_speed(sequence: Keypoints, speed: float) -> Keypoints:
    """The same motion `speed` times as fast at the same frame rate: frames resampled in time
    (`pose.resample_to_frames`: linear between neighbouring frames, a joint present where the frames
    it is mixed from have it). Absent joints keep their positions, as `generate` gives them."""
    validate_speed(speed)
    frames = len(sequence)
    if speed == 1 or frames < 2:
        return sequence
    return resample_to_frames(sequence, max(2, round(frames / speed)), keep_missing_values=True)


def sign_requests(texts: Sequence[SignText | str], **settings) -> list[SignRequest]:
    """One request per text with the same settings (`SignRequest`'s fields): a sentence's signs."""
    return [SignRequest(text, **settings) for text in texts]
