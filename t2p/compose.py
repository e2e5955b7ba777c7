"""Sentences and repairs, built on the one refinement loop (`generation.generate`).

- `compose_sentence`: the one entry point of the CLI (`t2p generate --compose`) and Serve
  (`"texts"`, `"spoken_text"`): spoken text and/or glosses -> planned signs (`plan_sentence`) ->
  recordings of the signs a lexicon has -> `compose`; each sign's segment says where it came from.
- `compose`: several signs in a row. Each sign is generated as it would be alone (same signer,
  same first pose) and cut where it comes closest to its neighbours (`cut_at_connection_points`,
  spoken-to-signed's connection points); the frames between two signs are *inpainted* by the same model: a window of
  the first sign's last frames, empty frames, and the next sign's first frames, with the known
  frames given to the refiner and held fixed at every step, so the model draws the movement from
  one to the next. The inpainted path is then re-timed (`pace_transition`) to the signs' own mean
  speed, and each join low-pass filtered (`smooth_joins`). How its joins compare with the recordings' own motion and with spoken-to-signed's
  concatenation of the same signs: `t2p.joins` (`t2p evaluate --task compose`).
- `plan_signs`: which signs a gloss sequence becomes; a gloss neither the model nor a lexicon knows
  is fingerspelled, letter by letter, with spoken-to-signed's fingerspelling alphabet (or left to
  the model: `fallback="model"`); the spoken language is inferred where the signed language has
  one alphabet (`infer_spoken_language`).
- `change_speed`: signing speed without changing the frame rate.

Completing a recording with gaps is `t2p.correction`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from t2p.generation import FirstPoseLike, Generated, Observed, TextLike, generate
from t2p.metrics import frame_motion, resample
from t2p.model import T2PModel
from t2p.notation import SignText
from t2p.pose import Skeleton, to_pose

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

    @property
    def joins(self) -> list[tuple[int, int]]:
        """(last frame of a sign, first frame of the next) for every two signs in a row."""
        signs = [segment for segment in self.segments if segment.kind == "sign"]
        return [(before.end - 1, after.begin) for before, after in zip(signs[:-1], signs[1:])]


def typical_velocity(signs: Sequence[Generated]) -> float:
    """The mean within-sign velocity of these signs (shoulder widths per frame)."""
    steps = np.concatenate([frame_motion(s.data, s.confidence, per_frame=True) for s in signs if len(s) > 1] or [np.zeros(1)])
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
            transition_frames: int | None = None, keep_proportions: bool = False,
            max_length: int | None = None, recorded: dict[int, Generated] | None = None,
            generator: Callable[..., list[Generated]] = generate, cut_at_connections: bool = True,
            smooth: bool = True) -> Composition:
    """The signs of `texts` in order, joined by generated transitions; one signer (`first_pose`).
    With `cut_at_connections`, each sign ends (and the next begins) where the two come closest
    (`cut_at_connection_points`), so the hand does not fall to rest and rise again between signs;
    with `smooth`, each join is low-pass filtered (`smooth_joins`).
    `max_length` caps each sign's predicted length (as in `generate`). `recorded` gives some signs
    as recordings (position -> sequence, e.g. a lexicon's, see `lexicon_sign`) instead of generating
    them; the transitions into and out of them are generated all the same. `generator`: `generate`,
    or a function with its signature (Serve's sends each item to its batches)."""
    if len(texts) == 0:
        raise ValueError("nothing to compose: give at least one sign")
    validate_speed(speed)
    recorded = recorded or {}
    to_generate = [i for i in range(len(texts)) if i not in recorded]
    generated = generator(model, [texts[i] for i in to_generate], first_poses=[first_pose] * len(to_generate),
                         steps=steps, guidance=guidance, keep_proportions=keep_proportions, max_length=max_length)
    by_position = {**dict(zip(to_generate, generated)), **recorded}
    signs = [change_speed(by_position[i], speed) for i in range(len(texts))]
    if cut_at_connections:
        signs = cut_at_connection_points(signs, model.config.fps, model.skeleton)
    names = [text.text if isinstance(text, SignText) else str(text) for text in texts]
    velocity = typical_velocity(signs)

    windows, gaps, contexts = [], [], []
    for before, after in zip(signs[:-1], signs[1:]):
        gap = transition_frames or transition_length(before.data[-1], after.data[0], velocity)
        if gap + 2 > model.config.max_frames:  # at least one known frame on either side
            raise ValueError(f"a transition of {gap} frames does not fit the model's {model.config.max_frames} frames")
        context = min(TRANSITION_CONTEXT, (model.config.max_frames - gap) // 2)
        lead, tail = min(context, len(before)), min(context, len(after))
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
        filled = generator(model, list(texts[1:]), first_poses=[(w.data[0], w.confidence[0]) for w in windows],
                          steps=steps, guidance=guidance, observed=windows,
                          lengths=[len(w.data) for w in windows], keep_proportions=keep_proportions)
        # the model decides where the hands go between two signs; the signs' own speed decides how fast
        # (inpainted frames alone peaked at 3x the signs' velocity at the joins, median: docs/quality.md)
        transitions = [pace_transition(_with_ends(f.data[lead:lead + gap], f.confidence[lead:lead + gap], before, after),
                                       velocity, transition_frames)
                       for f, lead, gap, before, after in zip(filled, contexts, gaps, signs[:-1], signs[1:])]

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
    composition = Composition(np.concatenate([p.data for p in pieces]), np.concatenate([p.confidence for p in pieces]),
                              segments)
    return smooth_joins(composition, model.config.fps) if smooth else composition


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


def cut_at_connection_points(signs: Sequence[Generated], fps: float, skeleton: Skeleton) -> list[Generated]:
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
    return [Generated(sign.data[begin:end], sign.confidence[begin:end]) for sign, (begin, end) in zip(signs, bounds)]


def _with_ends(data: np.ndarray, confidence: np.ndarray, before: Generated, after: Generated) -> Generated:
    """A transition's frames with the last frame of the sign before and the first of the sign after."""
    return Generated(np.concatenate([before.data[-1:], data, after.data[:1]]),
                     np.concatenate([before.confidence[-1:], confidence, after.confidence[:1]]))


def pace_transition(path: Generated, velocity: float, frames: int | None = None) -> Generated:
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
    return Generated(data.astype(np.float32), confidence.astype(np.float32))


# --- a sentence: the one entry point of the CLI and Serve ----------------------------------------

FALLBACKS = ("fingerspell", "model")


@dataclass
class Sentence:
    """A composed sentence and the signs it was planned as (model, lexicon or fingerspelling)."""
    composition: Composition
    signs: list["PlannedSign"]
    spoken_language: str | None = None  # as given, or inferred (`infer_spoken_language`)

    @property
    def from_lexicon(self) -> int:
        return sum(sign.source == "lexicon" for sign in self.signs)

    @property
    def fingerspelled(self) -> list[str]:
        """The words spelled letter by letter because neither the model nor the lexicon knows them."""
        return sorted({sign.source.split(":", 1)[1] for sign in self.signs if sign.source.startswith("fingerspelling:")})


def infer_spoken_language(signed_language: str | None, lexicon: str | Path | None = None) -> str | None:
    """The spoken language of a signed language's glosses where there is only one to choose: the one
    spoken-to-signed has a fingerspelling alphabet for (de for sgg), else the one the lexicon pairs
    it with; None where there are none or several (the caller must then be told)."""
    from spoken_to_signed.gloss_to_pose.lookup.fingerspelling_lookup import FingerspellingPoseLookup
    alphabets = _fingerspelling_alphabets(FingerspellingPoseLookup)
    spoken = [language for language, signed in alphabets.items() if (signed_language or "") in signed]
    if not spoken and lexicon is not None:
        spoken = sorted(lexicon_spoken_languages(str(lexicon), signed_language))
    return spoken[0] if len(spoken) == 1 else None


@dataclass
class SentencePlan:
    """What a sentence becomes, decided before any refinement: its planned signs and the spoken
    language they were read in."""
    signs: list["PlannedSign"]
    spoken_language: str | None


def plan_sentence(model: T2PModel, texts: Sequence[str | tuple[str, str]] = (), notation: str | None = None,
                  language: str | None = None, spoken_language: str | None = None,
                  lexicon: str | Path | None = None, *, spoken_text: str | None = None,
                  fallback: str = "fingerspell", max_signs: int | None = None) -> SentencePlan:
    """The signs `texts` (and `spoken_text`, turned into glosses by `text_to_glosses`) become.
    Glosses (notation "text") are planned by `plan_signs`; a text in a notation (HamNoSys,
    SignWriting) is the model's to sign as written. `spoken_language`: default inferred from the
    signed language (`infer_spoken_language`). `max_signs`: checked on the glosses before any is
    fingerspelled, and on the signs after."""
    notation = notation or model.config.default_notation
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    spoken_language = spoken_language or infer_spoken_language(language, lexicon)
    entries = list(texts)
    if spoken_text is not None:
        if notation != "text":
            raise ValueError(f"spoken text becomes glosses (notation text), not {notation}")
        if spoken_language is None:
            raise ValueError(f"give the spoken language of the text: {_no_spoken_language(language)}")
        entries += text_to_glosses(spoken_text, spoken_language)
    if max_signs is not None and len(entries) > max_signs:
        raise ValueError(f"{len(entries)} signs; the limit is {max_signs}")
    if notation == "text":
        planned = plan_signs(model, entries, language, spoken_language, str(lexicon) if lexicon else None, fallback)
    else:
        planned = [PlannedSign(text, "model") for text in entries]
    if not planned:
        raise ValueError("nothing to sign: give at least one sign")
    if max_signs is not None and len(planned) > max_signs:
        spelled = sorted({sign.source.split(":", 1)[1] for sign in planned if sign.source.startswith("fingerspelling:")})
        raise ValueError(f"{len(planned)} signs after fingerspelling {', '.join(spelled)}; the limit is {max_signs}")
    return SentencePlan(planned, spoken_language)


def compose_sentence(model: T2PModel, texts: Sequence[str | tuple[str, str]] = (), notation: str | None = None,
                     language: str | None = None, first_pose: FirstPoseLike = None, *,
                     spoken_language: str | None = None, spoken_text: str | None = None,
                     lexicon: str | Path | None = None, fallback: str = "fingerspell",
                     plan: SentencePlan | None = None, steps: int | None = None, guidance: float | None = None,
                     speed: float = 1.0, keep_proportions: bool = False, max_length: int | None = None,
                     generator: Callable[..., list[Generated]] = generate) -> Sentence:
    """Texts or glosses (or (word, gloss) pairs, `text_to_glosses`), and/or spoken text, as one
    signed sentence: planned (`plan_sentence`: a lexicon's recordings, the model's signs, and for
    the rest fingerspelling or, with `fallback="model"`, the model's best guess), the lexicon's
    signs read from its recordings, and all of them composed in order (`compose`). Each sign
    segment says where it came from. `plan`: the plan itself, when the caller already made it
    (Serve checks it before it composes). `notation`: default, the model's. `generator`: as for `compose`."""
    notation = notation or model.config.default_notation
    if plan is None:
        plan = plan_sentence(model, texts, notation, language, spoken_language, lexicon, spoken_text=spoken_text,
                             fallback=fallback)
    planned = list(plan.signs)
    recorded = {index: lexicon_sign(model, str(lexicon), sign, plan.spoken_language, language, first_pose)
                for index, sign in enumerate(planned) if sign.source == "lexicon"}
    composition = compose(model, [SignText(sign.text, notation, language) for sign in planned], first_pose,
                          steps=steps, guidance=guidance, speed=speed, keep_proportions=keep_proportions,
                          max_length=max_length, recorded=recorded, generator=generator)
    for segment, sign in zip([s for s in composition.segments if s.kind == "sign"], planned):
        spelled = sign.source.startswith("fingerspelling:")
        segment.source = "fingerspelled" if spelled else sign.source
        segment.word = sign.source.split(":", 1)[1] if spelled else sign.word
    return Sentence(composition, planned, plan.spoken_language)


def write_segments(segments: Sequence[Segment], path: str | Path) -> Path:
    """A composition's segments as the .segments.json `t2p render --segments` reads."""
    path = Path(path)
    path.write_text(json.dumps([asdict(segment) for segment in segments], ensure_ascii=False, indent=1))
    return path


# --- speed --------------------------------------------------------------------------------------

MIN_SPEED, MAX_SPEED = 0.5, 2.0


def validate_speed(speed: float) -> None:
    if not (isinstance(speed, (int, float)) and MIN_SPEED <= speed <= MAX_SPEED):
        raise ValueError(f"speed must be in {MIN_SPEED}..{MAX_SPEED}, got {speed}")


def change_speed(sequence: Generated, speed: float) -> Generated:
    """The same motion `speed` times as fast at the same frame rate: frames resampled in time
    (`metrics.resample`: linear between neighbouring frames, a joint present where the frames it
    is mixed from have it). Absent joints keep their positions, as `generate` gives them."""
    validate_speed(speed)
    frames = len(sequence)
    if speed == 1 or frames < 2:
        return sequence
    return Generated(*resample(sequence.data, sequence.confidence, max(2, round(frames / speed)),
                               keep_missing_values=True))


# --- which signs a gloss sequence becomes ---------------------------------------------------------

@dataclass
class PlannedSign:
    text: str
    source: str  # "model", "lexicon" or "fingerspelling:<gloss>"
    word: str = ""  # the spoken word it stands for, where known (a lexicon is looked up by word and gloss)


def text_to_glosses(text: str, spoken_language: str) -> list[tuple[str, str]]:
    """Spoken text -> (word, gloss) pairs in order, with spoken-to-signed's `simple` text_to_gloss
    (tokenised and lemmatised by simplemma where it knows the language)."""
    from spoken_to_signed.text_to_gloss.simple import text_to_gloss
    pairs = [(item.word, item.gloss) for sentence in text_to_gloss(text, spoken_language) for item in sentence
             if item.word.strip() and any(character.isalnum() for character in item.word)]
    if not pairs:
        raise ValueError(f"no words in {text!r}")
    return pairs


def lexicon_sign(model: T2PModel, lexicon: str, sign: PlannedSign, spoken_language: str | None, signed_language: str | None,
                 first_pose: FirstPoseLike = None) -> Generated:
    """A lexicon's recording of this sign (spoken-to-signed's lookup: by word, then gloss), its
    signing span only, on the model's skeleton, moved to start at the signer's starting pose."""
    from spoken_to_signed.gloss_to_pose.lookup.csv_lookup import CSVPoseLookup

    from t2p.generation import starting_poses
    from t2p.pose import start_from, to_sequence
    try:
        result = CSVPoseLookup(str(lexicon)).lookup(sign.word or sign.text, sign.text, spoken_language or "",
                                                    signed_language or "")
    except FileNotFoundError:
        raise ValueError(f"{sign.text!r} is not in the lexicon {lexicon} for {spoken_language}->{signed_language}") \
            from None
    sequence = to_sequence(result.pose, model.skeleton)
    begin, end = result.signing_span if result.signing_span else (0, sequence.num_frames)
    data, confidence = sequence.data[begin:end], sequence.confidence[begin:end]
    (start,) = starting_poses(model, [first_pose])
    return Generated(*start_from(data, confidence, start))


def known_texts(model: T2PModel, language: str | None) -> set[str] | None:
    """The texts the model was trained on in this language; None when the model does not record them."""
    recorded = model.config.known_texts
    if not recorded:
        return None
    return set(recorded.get(language or "", []))


def plan_signs(model: T2PModel, glosses: Sequence[str | tuple[str, str]], language: str | None,
               spoken_language: str | None = None, lexicon: str | None = None,
               fallback: str = "fingerspell") -> list[PlannedSign]:
    """Each gloss (or (word, gloss) pair, see `text_to_glosses`) as the lexicon (spoken-to-signed's
    format: its recording is used) or the model knows it; else fingerspelled with the
    fingerspelling alphabet of this (spoken, signed) language pair, or with `fallback="model"`
    generated by the model all the same. `spoken_language`: default inferred."""
    known = known_texts(model, language)
    spoken_language = spoken_language or infer_spoken_language(language, lexicon)
    words = _lexicon_words(lexicon, spoken_language, language) if lexicon and spoken_language else set()
    planned = []
    for entry in glosses:
        word, gloss = entry if isinstance(entry, tuple) else ("", entry)
        if not gloss.strip():
            continue
        if words and (word.lower() in words or gloss.lower() in words):
            planned.append(PlannedSign(gloss, "lexicon", word))
        elif known is None or gloss in known or fallback == "model":
            planned.append(PlannedSign(gloss, "model", word))
        else:
            spelled = word or gloss  # the word as written, not its lemma
            if spoken_language is None:
                raise ValueError(f"{spelled!r} is not a sign the model knows and is fingerspelled: "
                                 f"{_no_spoken_language(language)} (or fallback model)")
            planned += [PlannedSign(letter, f"fingerspelling:{spelled}")
                        for letter in fingerspell(spelled, spoken_language, language, known)]
    if not planned:
        raise ValueError("nothing to sign: every gloss is empty")
    return planned


def _no_spoken_language(signed_language: str | None) -> str:
    """Why the spoken language could not be inferred, and what to do."""
    from spoken_to_signed.gloss_to_pose.lookup.fingerspelling_lookup import FingerspellingPoseLookup
    alphabets = _fingerspelling_alphabets(FingerspellingPoseLookup)
    spoken = sorted(language for language, signed in alphabets.items() if (signed_language or "") in signed)
    if spoken:
        return f"{signed_language} has fingerspelling alphabets for {', '.join(spoken)}; name one as spoken language"
    return f"no fingerspelling alphabet is for {signed_language or 'no language'}; name the spoken language"


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


def lexicon_spoken_languages(lexicon: str, signed_language: str | None) -> set[str]:
    """The spoken languages a lexicon pairs with this signed language."""
    from spoken_to_signed.gloss_to_pose.lookup.csv_lookup import CSVPoseLookup
    lookup = CSVPoseLookup(str(lexicon))
    return {spoken for spoken, by in lookup.words_index.items() if (signed_language or "") in by}


def _lexicon_words(lexicon: str, spoken_language: str, signed_language: str | None) -> set[str]:
    from spoken_to_signed.gloss_to_pose.lookup.csv_lookup import CSVPoseLookup
    lookup = CSVPoseLookup(str(lexicon))
    words = set()
    for index in (lookup.words_index, lookup.glosses_index):
        words |= set(index.get(spoken_language, {}).get(signed_language or "", {}))
    return words
