"""The request bodies of t2p's HTTP API and everything checked before a request does any work.

A request is parsed (`parse_request`: 400 for a body that is not a JSON object, 422 naming each
wrong field), then validated against the model and the replica's limits (`validate_request` for
one sign, `validate_composition` for a sentence): every cap (characters, signs before and after
fingerspelling, frames, steps x frames) is checked here, before any refinement, so a bad or
too-costly request is a 4xx for its sender alone.
"""
# no `from __future__ import annotations` here: FastAPI reads GenerateRequest's annotations
import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Literal

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from t2p.generation import SignRequest
from t2p.generation.compose import MAX_TRANSITION, TRANSITION_CONTEXT
from t2p.generation.sentence import FALLBACKS, SentencePlan, plan_sentence
from t2p.model import T2PModel
from t2p.notation import SignText
from t2p.pose import Pose, PoseFormatError, PoseSequence, Skeleton, read_pose, to_sequence
from t2p.serving.config import ServeConfig


class GenerateRequest(BaseModel):
    """The JSON body of POST /v1/generate; ranges that depend on the model and config are checked later.

    One sign (`text`), or one sentence: `texts` (signs or glosses in order) and/or `spoken_text`
    (spoken-language text, turned into glosses), composed with generated transitions."""
    model_config = ConfigDict(extra="forbid")

    text: str | None = None               # one sign
    texts: list[str] | None = None        # several signs composed into one sequence, with transitions
    spoken_text: str | None = None        # e.g. "Die Kinder essen Pizza": glosses by spoken-to-signed, then composed
    notation: str | None = None           # default: the model's default notation
    language: str | None = None           # ISO 639-3, one of the model's languages
    spoken_language: str | None = None    # of spoken_text and glosses; default inferred from `language` (de for sgg)
    fallback: Literal[FALLBACKS] = "fingerspell"  # a gloss neither the model nor the lexicon knows
    steps: int | None = None              # default: the model's schedule
    length: int | None = None             # frames; default: the predicted length (one sign only)
    guidance: float | None = Field(None, allow_inf_nan=False)
    first_pose: str | None = None         # base64 of a .pose file: who signs
    speed: float = Field(1.0, ge=0.5, le=2.0)  # signing speed; the frame rate stays
    keep_proportions: bool = False        # hold bones within 4% of the first pose's lengths
    format: Literal["pose", "json"] = "pose"
    model: str | None = Field(None, max_length=64)  # one of GET /v1/models by name; default: the server's default
    stream: bool = False                  # one sign: an event per refinement step (NDJSON, or SSE by Accept)

    @property
    def is_sentence(self) -> bool:
        return self.texts is not None or self.spoken_text is not None


class CorrectRequest(BaseModel):
    """The JSON body of POST /v1/correct."""
    model_config = ConfigDict(extra="forbid")

    pose: str                             # base64 of the .pose recording to complete
    model: str | None = Field(None, max_length=64)  # one of GET /v1/models by name
    text: str | None = None               # what it signs (optional)
    notation: str | None = None
    language: str | None = None
    steps: int | None = None
    format: Literal["pose", "json"] = "pose"


def parse_request(body: bytes, request_type: type[BaseModel] = GenerateRequest) -> BaseModel:
    """The body as a request, whatever its content type (`curl -d` sends form-encoded): 400 when it is
    not a JSON object, 422 naming each field that is wrong."""
    try:
        data = json.loads(body)
    except ValueError as error:  # JSONDecodeError and undecodable bytes
        raise HTTPException(status_code=400, detail=f"body is not valid JSON: {error}") from None
    except RecursionError:
        raise HTTPException(status_code=400, detail="body is nested too deeply to be a request") from None
    if not isinstance(data, dict):
        raise HTTPException(status_code=400, detail='body must be a JSON object like {"text": "..."}')
    try:
        return request_type.model_validate(data)
    except ValidationError as error:
        problems = [f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
                    for problem in error.errors()]
        raise HTTPException(status_code=422, detail="; ".join(problems)) from None


@dataclass
class Job:
    """One validated one-sign request: what joins a batch, and the speed it is played at."""
    request: SignRequest
    speed: float = 1.0

    @property
    def first_pose(self) -> PoseSequence | None:
        return self.request.first_pose


def validate_request(request: GenerateRequest, model: T2PModel, limits: ServeConfig) -> Job:
    """Everything that can be wrong with a one-sign request, found before it can share a batch with others.

    Raises ValueError (NotationError and PoseFormatError included) with a message for the sender."""
    if request.is_sentence:
        raise ValueError('"texts" and "spoken_text" are composed by validate_composition, not batched')
    if request.text is None:
        raise ValueError('give either "text" (one sign) or "texts" / "spoken_text" (a sentence)')
    sign = _checked_sign(request.text, request.notation, request.language, model, limits)
    steps = _checked_steps(request.steps, model, limits)
    if request.length is not None and not 1 <= request.length <= limits.max_frames:
        raise ValueError(f"length must be in 1..{limits.max_frames}, got {request.length}")
    check_work(steps, request.length or limits.max_frames, limits)
    if request.guidance is not None and abs(request.guidance) > limits.max_guidance:
        raise ValueError(f"guidance must be in -{limits.max_guidance}..{limits.max_guidance}, got {request.guidance}")
    first_pose = None
    if request.first_pose is not None:
        first_pose = decode_first_pose(request.first_pose, model.skeleton, limits.max_first_pose_bytes)
    return Job(SignRequest(sign, first_pose=first_pose, steps=steps, length=request.length, guidance=request.guidance,
                           max_length=limits.max_frames, keep_proportions=request.keep_proportions), request.speed)


def _checked_sign(text: str, notation: str | None, language: str | None, model: T2PModel,
                  limits: ServeConfig) -> SignText:
    if len(text) > limits.max_text_length:
        raise ValueError(f"text has {len(text)} characters; the limit is {limits.max_text_length}")
    sign = SignText(text, notation or model.config.default_notation, language)
    model.config.check_notation(sign.notation)
    tokens = model.vocabulary.encode(sign)  # the notation's own error names symbol and position
    if len(tokens) > model.config.max_text_tokens:
        raise ValueError(f"text has {len(tokens)} tokens; this model takes at most {model.config.max_text_tokens}")
    if sign.language is not None and sign.language not in model.vocabulary.languages:
        known = ", ".join(model.vocabulary.languages) or "none: leave language out"
        raise ValueError(f"language {sign.language!r} is not one this model knows ({known})")
    return sign


def _checked_steps(steps: int | None, model: T2PModel, limits: ServeConfig) -> int:
    steps = model.schedule_config.steps if steps is None else steps
    if not 1 <= steps <= limits.max_steps:
        raise ValueError(f"steps must be in 1..{limits.max_steps}, got {steps}")
    return steps


def check_work(steps: int, frames: int, limits: ServeConfig) -> None:
    """A request's cost is its refiner calls times the frames they refine; refused above the cap."""
    if steps * frames > limits.max_step_frames:
        raise ValueError(f"{steps} steps x up to {frames} frames is {steps * frames} step-frames; the limit is "
                         f"{limits.max_step_frames}: ask for fewer steps, frames or signs")


@dataclass
class CompositionJob:
    """A validated sentence: its plan (`sentence.plan_sentence`) and what every sign shares (a
    request whose text is ignored), ready for `sentence.compose_sentence`."""
    plan: SentencePlan
    notation: str
    language: str | None
    settings: SignRequest
    speed: float

    @property
    def first_pose(self) -> PoseSequence | None:
        return self.settings.first_pose


def validate_composition(request: GenerateRequest, model: T2PModel, limits: ServeConfig,
                         lexicon: str | None = None) -> CompositionJob:
    """A sentence request, planned (glosses the model and lexicon lack fingerspelled, or left to the
    model) and checked: the sign count before and after fingerspelling, each sign as a one-sign
    request would be, and the steps x frames of all of it."""
    if request.text is not None:
        raise ValueError('give either "text" (one sign) or "texts" / "spoken_text" (a sentence)')
    if request.stream:  # a sentence is refined twice (its signs, then the transitions between them)
        raise ValueError('"stream" applies to one sign ("text"), not to a sentence')
    if request.texts is not None and not request.texts and request.spoken_text is None:
        raise ValueError('"texts" is empty: give at least one sign')
    if request.length is not None:
        raise ValueError('"length" does not apply to a sentence: each sign has its predicted length')
    texts = request.texts or []
    if len(texts) > limits.max_signs:  # before any is fingerspelled into more
        raise ValueError(f"{len(texts)} texts; the limit is {limits.max_signs} signs")
    for text in texts:
        if len(text) > limits.max_text_length:
            raise ValueError(f"text has {len(text)} characters; the limit is {limits.max_text_length}")
    if request.spoken_text is not None and len(request.spoken_text) > limits.max_spoken_text_length:
        raise ValueError(f"spoken_text has {len(request.spoken_text)} characters; the limit is "
                         f"{limits.max_spoken_text_length}")
    notation = request.notation or model.config.default_notation
    plan = plan_sentence(model, texts, notation, request.language, request.spoken_language, lexicon,
                         spoken_text=request.spoken_text, fallback=request.fallback, max_signs=limits.max_signs)
    steps = _checked_steps(request.steps, model, limits)
    for sign in plan.signs:
        _checked_sign(sign.text, notation, request.language, model, limits)
    generated = sum(sign.source != "lexicon" for sign in plan.signs)
    window = min(model.config.max_frames, 2 * TRANSITION_CONTEXT + MAX_TRANSITION)  # one transition's frames
    check_work(steps, generated * limits.max_frames + (len(plan.signs) - 1) * window, limits)
    if request.guidance is not None and abs(request.guidance) > limits.max_guidance:
        raise ValueError(f"guidance must be in -{limits.max_guidance}..{limits.max_guidance}, got {request.guidance}")
    first_pose = None
    if request.first_pose is not None:
        first_pose = decode_first_pose(request.first_pose, model.skeleton, limits.max_first_pose_bytes)
    settings = SignRequest("", first_pose=first_pose, steps=steps, guidance=request.guidance,
                           max_length=limits.max_frames, keep_proportions=request.keep_proportions)
    return CompositionJob(plan, notation, request.language, settings, request.speed)


def decode_pose(encoded: str, max_bytes: int, field: str = "first_pose") -> Pose:
    """base64 `.pose` -> the pose-format `Pose`, or a ValueError naming the field."""
    if len(encoded) > 4 * math.ceil(max_bytes / 3) + 4:
        raise ValueError(f"{field} is larger than {max_bytes} bytes")
    try:
        payload = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field} is not valid base64 (standard alphabet, with padding)") from None
    try:
        return read_pose(payload)
    except PoseFormatError as error:
        raise ValueError(f"{field}: {error}") from None


def decode_first_pose(encoded: str, skeleton: Skeleton, max_bytes: int, field: str = "first_pose",
                      pose: Pose | None = None) -> PoseSequence:
    """base64 `.pose` (or its already decoded `pose`) -> its sequence on `skeleton`; refuses files
    that give the skeleton nothing."""
    pose = pose if pose is not None else decode_pose(encoded, max_bytes, field)
    try:
        sequence = to_sequence(pose, skeleton)
    except PoseFormatError as error:
        raise ValueError(f"{field}: {error}") from None
    except Exception as error:  # pose-format fails in assorted ways on foreign or damaged files
        raise ValueError(f"{field} cannot be read onto the model's skeleton ({type(error).__name__}: {error})") \
            from None
    if not (sequence.confidence > 0).any():
        components = ", ".join(c.name for c in skeleton.components)
        raise ValueError(f"{field} has none of the model's keypoints ({components}); "
                         "send a MediaPipe Holistic or OpenPose pose")
    if field == "first_pose" and not (sequence.confidence[0] > 0).any():
        raise ValueError("first_pose: its first frame has no observed keypoints")
    return sequence


def sequence_json(sequence: PoseSequence, skeleton: Skeleton) -> dict:
    """A written pose's sequence as JSON: frames `(frames, joints, dims)`, joints ordered as `points`,
    and confidence `(frames, joints)`: 0 for a joint predicted absent (its frame values are then 0)."""
    return {"fps": sequence.fps,
            "components": [c.name for c in skeleton.components],
            "points": [list(c.points) for c in skeleton.components],
            "frames": sequence.data.tolist(),
            "confidence": sequence.confidence.tolist()}
