"""Sentences: which signs a gloss sequence or a spoken sentence becomes, and the one call that
composes them (`compose_sentence`, what `t2p generate --compose` and Serve's `"texts"` and
`"spoken_text"` call).

- `plan_sentence`: spoken text and/or glosses -> planned signs; a gloss neither the model nor a
  lexicon knows is fingerspelled, letter by letter, with spoken-to-signed's fingerspelling alphabet
  (or left to the model: `fallback="model"`); the spoken language is inferred where the signed
  language has one alphabet (`infer_spoken_language`).
- `compose_sentence`: the plan -> the lexicon's recordings of the signs it has -> `compose`; each
  sign's segment says where it came from.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from t2p.generation.compose import Composition, compose
from t2p.generation.loop import generate, starting_poses
from t2p.generation.request import Generator, SignRequest
from t2p.model import T2PModel
from t2p.notation import SignText
from t2p.pose import Keypoints, start_from, to_sequence

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
    alphabets = _fingerspelling_alphabets()
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
        planned = plan_signs(entries, language, known_texts(model, language), spoken_language,
                             str(lexicon) if lexicon else None, fallback)
    else:
        planned = [PlannedSign(text, "model") for text in entries]
    if not planned:
        raise ValueError("nothing to sign: give at least one sign")
    if max_signs is not None and len(planned) > max_signs:
        spelled = sorted({sign.source.split(":", 1)[1] for sign in planned if sign.source.startswith("fingerspelling:")})
        raise ValueError(f"{len(planned)} signs after fingerspelling {', '.join(spelled)}; the limit is {max_signs}")
    return SentencePlan(planned, spoken_language)


def compose_sentence(model: T2PModel, texts: Sequence[str | tuple[str, str]] = (), notation: str | None = None,
                     language: str | None = None, *, spoken_language: str | None = None,
                     spoken_text: str | None = None, lexicon: str | Path | None = None, fallback: str = "fingerspell",
                     plan: SentencePlan | None = None, settings: SignRequest | None = None, speed: float = 1.0,
                     generator: Generator = generate) -> Sentence:
    """Texts or glosses (or (word, gloss) pairs, `text_to_glosses`), and/or spoken text, as one
    signed sentence: planned (`plan_sentence`: a lexicon's recordings, the model's signs, and for
    the rest fingerspelling or, with `fallback="model"`, the model's best guess), the lexicon's
    signs read from its recordings, and all of them composed in order (`compose`). Each sign
    segment says where it came from. `plan`: the plan itself, when the caller already made it
    (Serve checks it before it composes). `notation`: default, the model's. `settings`: what every
    sign shares (first pose, steps, guidance, max_length, keep_proportions; its text is ignored).
    `generator`: as for `compose`."""
    notation = notation or model.config.default_notation
    settings = settings or SignRequest("")
    if plan is None:
        plan = plan_sentence(model, texts, notation, language, spoken_language, lexicon, spoken_text=spoken_text,
                             fallback=fallback)
    planned = list(plan.signs)
    recorded = {index: lexicon_sign(model, str(lexicon), sign, plan.spoken_language, language, settings.first_pose)
                for index, sign in enumerate(planned) if sign.source == "lexicon"}
    signs = [replace(settings, sign=SignText(sign.text, notation, language)) for sign in planned]
    composition = compose(model, signs, speed=speed, recorded=recorded, generator=generator)
    for segment, sign in zip([s for s in composition.segments if s.kind == "sign"], planned):
        spelled = sign.source.startswith("fingerspelling:")
        segment.source = "fingerspelled" if spelled else sign.source
        segment.word = sign.source.split(":", 1)[1] if spelled else sign.word
    return Sentence(composition, planned, plan.spoken_language)


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


def lexicon_sign(model: T2PModel, lexicon: str, sign: PlannedSign, spoken_language: str | None,
                 signed_language: str | None, first_pose: Keypoints | None = None) -> Keypoints:
    """A lexicon's recording of this sign (spoken-to-signed's lookup: by word, then gloss), its
    signing span only, on the model's skeleton, moved to start at the signer's starting pose."""
    from spoken_to_signed.gloss_to_pose.lookup.csv_lookup import CSVPoseLookup
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
    return Keypoints(*start_from(data, confidence, start))


def known_texts(model: T2PModel, language: str | None) -> set[str] | None:
    """The texts the model was trained on in this language; None when the model does not record them."""
    recorded = model.config.known_texts
    if not recorded:
        return None
    return set(recorded.get(language or "", []))


def plan_signs(glosses: Sequence[str | tuple[str, str]], language: str | None, known: set[str] | None,
               spoken_language: str | None = None, lexicon: str | None = None,
               fallback: str = "fingerspell") -> list[PlannedSign]:
    """Each gloss (or (word, gloss) pair, see `text_to_glosses`) as the lexicon (spoken-to-signed's
    format: its recording is used) or the model knows it (`known`: the texts it was trained on in
    this language, `known_texts`; None: every gloss); else fingerspelled with the fingerspelling
    alphabet of this (spoken, signed) language pair, or with `fallback="model"` generated by the
    model all the same. `spoken_language`: default inferred."""
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
    alphabets = _fingerspelling_alphabets()
    spoken = sorted(language for language, signed in alphabets.items() if (signed_language or "") in signed)
    if spoken:
        return f"{signed_language} has fingerspelling alphabets for {', '.join(spoken)}; name one as spoken language"
    return f"no fingerspelling alphabet is for {signed_language or 'no language'}; name the spoken language"


def fingerspell(word: str, spoken_language: str, signed_language: str | None, known: set[str] | None) -> list[str]:
    """The letters of `word` in this language's fingerspelling alphabet (longest first, as
    spoken-to-signed splits it), as the texts the model knows them by."""
    alphabets = _fingerspelling_alphabets()
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


@lru_cache(maxsize=1)
def _fingerspelling_alphabets() -> dict:
    """spoken-to-signed's fingerspelling alphabets: spoken -> signed -> letters, longest first."""
    from spoken_to_signed.gloss_to_pose.lookup.fingerspelling_lookup import FingerspellingPoseLookup
    return FingerspellingPoseLookup().alphabets


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
