"""Sentences and repairs, built on the one refinement loop (`generation.generate`).

- `compose`: several signs in a row. Each sign is generated as it would be alone (same signer,
  same first pose); the frames between two signs are *inpainted* by the same model: a window of
  the first sign's last frames, empty frames, and the next sign's first frames, with the known
  frames held fixed at every refinement step, so the model draws the movement from one to the next.
- `plan_signs`: which signs a gloss sequence becomes; a gloss neither the model nor a lexicon knows
  is fingerspelled, letter by letter, with spoken-to-signed's fingerspelling alphabet.
- `correct`: a real recording with missing frames or keypoints, completed by the model; observed
  values are kept exactly.
- `change_speed`: signing speed without changing the frame rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from t2p.generation import FirstPoseLike, Generated, Observed, TextLike, generate
from t2p.model import T2PModel
from t2p.notation import SignText

TRANSITION_CONTEXT = 32       # frames of each neighbouring sign the transition window holds fixed
MIN_TRANSITION, MAX_TRANSITION = 2, 24


@dataclass
class Segment:
    """Frames [begin, end) of a composed sequence: one sign, or the transition into the next."""
    text: str
    begin: int
    end: int
    kind: str  # "sign" or "transition"


@dataclass
class Composition:
    """A composed sequence (shoulder-normalised) and what each stretch of frames is."""
    data: np.ndarray        # (frames, joints, dims)
    confidence: np.ndarray  # (frames, joints)
    segments: list[Segment]

    def __len__(self) -> int:
        return len(self.data)

    @property
    def generated(self) -> Generated:
        return Generated(self.data, self.confidence)


def frame_velocity(data: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Per frame-to-frame step, the mean displacement of the joints present in both frames."""
    # data: (frames, joints, dims); confidence: (frames, joints) -> (frames - 1,)
    both = (confidence[1:] > 0) & (confidence[:-1] > 0)
    step = np.linalg.norm(data[1:] - data[:-1], axis=-1)
    return np.where(both.any(1), (step * both).sum(1) / np.maximum(both.sum(1), 1), 0.0)


def typical_velocity(signs: Sequence[Generated]) -> float:
    """The mean within-sign velocity of these signs (shoulder widths per frame)."""
    steps = np.concatenate([frame_velocity(s.data, s.confidence) for s in signs if len(s) > 1] or [np.zeros(1)])
    return float(steps.mean()) if steps.size else 0.0


def transition_length(last: np.ndarray, first: np.ndarray, velocity: float) -> int:
    """Frames to move from one pose to the next at about the signs' own speed."""
    # last, first: (joints, dims)
    distance = float(np.linalg.norm(first - last, axis=-1).mean())
    if velocity <= 0:
        return MIN_TRANSITION
    return int(np.clip(math.ceil(distance / velocity) + 1, MIN_TRANSITION, MAX_TRANSITION))


def compose(model: T2PModel, texts: Sequence[TextLike], first_pose: FirstPoseLike = None,
            steps: int | None = None, guidance: float | None = None, speed: float = 1.0,
            transition_frames: int | None = None, keep_proportions: bool = False) -> Composition:
    """The signs of `texts` in order, joined by generated transitions; one signer (`first_pose`)."""
    if len(texts) == 0:
        raise ValueError("nothing to compose: give at least one sign")
    validate_speed(speed)
    signs = generate(model, texts, first_poses=[first_pose] * len(texts), steps=steps, guidance=guidance,
                     keep_proportions=keep_proportions)
    signs = [change_speed(sign, speed) for sign in signs]
    names = [text.text if isinstance(text, SignText) else str(text) for text in texts]
    velocity = typical_velocity(signs)

    windows, gaps, contexts = [], [], []
    for before, after in zip(signs[:-1], signs[1:]):
        lead, tail = min(TRANSITION_CONTEXT, len(before)), min(TRANSITION_CONTEXT, len(after))
        gap = transition_frames or transition_length(before.data[-1], after.data[0], velocity)
        if lead + gap + tail > model.config.max_frames:
            raise ValueError(f"a transition of {gap} frames does not fit the model's {model.config.max_frames} frames")
        joints, dims = before.data.shape[1:]
        data = np.concatenate([before.data[-lead:], np.zeros((gap, joints, dims), np.float32), after.data[:tail]])
        known = np.concatenate([before.confidence[-lead:], np.zeros((gap, joints), np.float32),
                                after.confidence[:tail]])
        windows.append(Observed(data, known))
        gaps.append(gap)
        contexts.append(lead)
    transitions = []
    if windows:
        # one batch: every transition at once, conditioned on the sign it leads into
        filled = generate(model, list(texts[1:]), first_poses=[(w.data[0], w.confidence[0]) for w in windows],
                          steps=steps, guidance=guidance, observed=windows,
                          lengths=[len(w.data) for w in windows], keep_proportions=keep_proportions)
        transitions = [Generated(f.data[lead:lead + gap], f.confidence[lead:lead + gap])
                       for f, lead, gap in zip(filled, contexts, gaps)]

    pieces, segments, position = [], [], 0
    for index, sign in enumerate(signs):
        pieces.append(sign)
        segments.append(Segment(names[index], position, position + len(sign), "sign"))
        position += len(sign)
        if index < len(transitions):
            pieces.append(transitions[index])
            segments.append(Segment(f"{names[index]}→{names[index + 1]}", position,
                                    position + len(transitions[index]), "transition"))
            position += len(transitions[index])
    return Composition(np.concatenate([p.data for p in pieces]), np.concatenate([p.confidence for p in pieces]),
                       segments)


def join_velocity_ratios(composition: Composition) -> list[float]:
    """Per join: the peak frame-to-frame velocity from the last frame of one sign to the first of the
    next, over the mean within-sign velocity of the composition's signs."""
    velocity = frame_velocity(composition.data, composition.confidence)
    signs = [s for s in composition.segments if s.kind == "sign"]
    within = np.concatenate([velocity[s.begin:s.end - 1] for s in signs if s.end - s.begin > 1] or [np.zeros(1)])
    typical = max(float(within.mean()), 1e-6)
    ratios = []
    for before, after in zip(signs[:-1], signs[1:]):
        ratios.append(float(velocity[before.end - 1:after.begin].max()) / typical)
    return ratios


# --- speed --------------------------------------------------------------------------------------

MIN_SPEED, MAX_SPEED = 0.5, 2.0


def validate_speed(speed: float) -> None:
    if not (isinstance(speed, (int, float)) and MIN_SPEED <= speed <= MAX_SPEED):
        raise ValueError(f"speed must be in {MIN_SPEED}..{MAX_SPEED}, got {speed}")


def change_speed(sequence: Generated, speed: float) -> Generated:
    """The same motion `speed` times as fast at the same frame rate: frames resampled in time
    (linear between neighbouring frames; a joint is present where both neighbours have it)."""
    validate_speed(speed)
    frames = len(sequence)
    if speed == 1 or frames < 2:
        return sequence
    count = max(2, round(frames / speed))
    times = np.linspace(0, frames - 1, count)
    below = np.floor(times).astype(int)
    above = np.minimum(below + 1, frames - 1)
    weight = (times - below)[:, None, None]
    data = (1 - weight) * sequence.data[below] + weight * sequence.data[above]
    confidence = np.minimum(sequence.confidence[below], sequence.confidence[above])
    return Generated(data.astype(np.float32), confidence.astype(np.float32))


# --- which signs a gloss sequence becomes ---------------------------------------------------------

@dataclass
class PlannedSign:
    text: str
    source: str  # "model", "lexicon" or "fingerspelling:<gloss>"


def known_texts(model: T2PModel, language: str | None) -> set[str] | None:
    """The texts the model was trained on in this language; None when the model does not record them."""
    recorded = model.config.known_texts
    if not recorded:
        return None
    return set(recorded.get(language or "", []))


def plan_signs(model: T2PModel, glosses: Sequence[str], language: str | None, spoken_language: str = "en",
               lexicon: str | None = None) -> list[PlannedSign]:
    """Each gloss as the model or the lexicon (spoken-to-signed's format) knows it, else fingerspelled
    with the fingerspelling alphabet of this (spoken, signed) language pair."""
    known = known_texts(model, language)
    words = _lexicon_words(lexicon, spoken_language, language) if lexicon else set()
    planned = []
    for gloss in glosses:
        if not gloss.strip():
            continue
        if known is None or gloss in known:
            planned.append(PlannedSign(gloss, "model"))
        elif gloss.lower() in words:
            planned.append(PlannedSign(gloss, "lexicon"))
        else:
            planned += [PlannedSign(letter, f"fingerspelling:{gloss}")
                        for letter in fingerspell(gloss, spoken_language, language, known)]
    if not planned:
        raise ValueError("nothing to sign: every gloss is empty")
    return planned


def fingerspell(word: str, spoken_language: str, signed_language: str | None, known: set[str] | None) -> list[str]:
    """The letters of `word` in this language's fingerspelling alphabet (longest first, as
    spoken-to-signed splits it), as the texts the model knows them by."""
    from spoken_to_signed.gloss_to_pose.lookup.fingerspelling_lookup import FingerspellingPoseLookup
    alphabets = _fingerspelling_alphabets(FingerspellingPoseLookup)
    alphabet = alphabets.get(spoken_language, {}).get(signed_language or "")
    if alphabet is None:
        pairs = sorted(f"{spoken}->{signed}" for spoken, by in alphabets.items() for signed in by)
        raise ValueError(f"no fingerspelling alphabet for {spoken_language}->{signed_language}; "
                         f"spoken-to-signed has {', '.join(pairs)}")
    letters, rest = [], word.lower()
    while rest:
        match = next((key for key in alphabet if rest.startswith(key)), None)
        if match is None:
            raise ValueError(f"{word!r}: {rest[0]!r} is not in the {signed_language} fingerspelling alphabet")
        letters.append(match)
        rest = rest[len(match):]
    by_lower = {text.lower(): text for text in (known or ())}
    return [by_lower.get(letter, letter.upper()) for letter in letters]


_ALPHABETS: dict | None = None


def _fingerspelling_alphabets(lookup_class) -> dict:
    global _ALPHABETS
    if _ALPHABETS is None:
        _ALPHABETS = lookup_class().alphabets  # spoken -> signed -> letters, longest first
    return _ALPHABETS


def _lexicon_words(lexicon: str, spoken_language: str, signed_language: str | None) -> set[str]:
    from spoken_to_signed.gloss_to_pose.lookup.csv_lookup import CSVPoseLookup
    lookup = CSVPoseLookup(str(lexicon))
    words = set()
    for index in (lookup.words_index, lookup.glosses_index):
        words |= set(index.get(spoken_language, {}).get(signed_language or "", {}))
    return words
