"""Baselines: what a system that ignores the model (or the text) would output, scored like it.

- static: the starting pose repeated at the reference length: the refinement's x_T;
- retrieval: the training recording whose text is closest (the same letter in another language
  first), as a lexicon lookup answers;
- mean: the training mean sequence, moved per joint to start at the starting pose;
- mean_motion: the training data's mean displacement from the first frame, added to the starting
  pose: the motion a text-blind system knows.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

from t2p.data import PreparedItem
from t2p.notation import SignText
from t2p.pose import Hand, resample_to_frames, start_from


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
    language; the training order. The recording is played from the requested start as a lexicon
    player would: each body joint moved to start there, each hand moved as a whole with its wrist,
    so that the recorded handshape is what is shown (moving every finger joint to the start pose's
    gave the start's handshape instead).
    """

    def __init__(self, training: Sequence[PreparedItem], hands: Sequence[Hand] = ()):
        if not training:
            raise ValueError("the retrieval baseline needs training items")
        self.training = list(training)
        self.hands = tuple(hands)

    def closest(self, sign: SignText, gloss: str = "", exclude: str | None = None) -> PreparedItem:
        def key(indexed):
            index, item = indexed
            same_word = (bool(gloss) and item.gloss.casefold() == gloss.casefold()) or \
                (item.sign.text == sign.text and item.sign.notation == sign.notation)
            if item.sign.notation == sign.notation:
                distance = edit_distance(sign.text, item.sign.text)
            else:
                distance = edit_distance(gloss.casefold(), item.gloss.casefold())
            return (not same_word, distance, item.sign.language != sign.language, index)
        candidates = [(index, item) for index, item in enumerate(self.training) if item.id != exclude]
        return min(candidates or enumerate(self.training), key=key)[1]

    def __call__(self, sign: SignText, gloss: str, frames: int, first_pose: np.ndarray,
                 exclude: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The closest recording (never the item `exclude` itself: scoring the training split)."""
        stretched = resample_to_frames(self.closest(sign, gloss, exclude).sequence, frames)
        data, confidence = stretched.data, stretched.confidence
        anchor = first_pose.copy()
        for hand in self.hands:  # every hand joint keeps its place relative to the recording's wrist
            seen = confidence[:, hand.wrist] > 0
            if seen.any():
                recorded = data[np.argmax(seen)]
                anchor[list(hand.joints)] = first_pose[hand.wrist] + recorded[list(hand.joints)] - recorded[hand.wrist]
        return start_from(data, confidence, anchor)


class MeanBaseline:
    """The confidence-weighted mean of every training sequence resampled to the requested length,
    moved per joint to start at the first pose; with `motion=True`, the mean displacement from
    each sequence's own first frame, added to the first pose (`mean_motion`)."""

    def __init__(self, training: Sequence[PreparedItem], motion: bool = False):
        if not training:
            raise ValueError("the mean baselines need training items")
        self.sequences = [item.sequence for item in training]
        self.motion = motion
        self._means: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def mean(self, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """The mean sequence (or mean displacement) at `frames` frames, and where it is defined."""
        if frames not in self._means:
            total, weight = 0.0, 0.0
            for sequence in self.sequences:
                stretched = resample_to_frames(sequence, frames)
                values, observed = stretched.data, stretched.confidence
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


def constant_length(training: Sequence[PreparedItem]) -> int:
    """The training data's mean length in frames: what a system that ignores the text would say."""
    return max(1, round(float(np.mean([item.sequence.num_frames for item in training]))))
