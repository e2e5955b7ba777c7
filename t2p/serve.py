"""Ray Serve: `generate` over HTTP, with concurrent requests sharing one refinement pass per step.

```
POST /v1/generate  {text | texts, notation?, language?, steps?, length?, guidance?, first_pose?,
                    speed?, keep_proportions?, spoken_language?, format?}
                   -> .pose bytes (application/octet-stream) or JSON {fps, components, points, frames, confidence}
                   ("texts": the signs composed in order with generated transitions, unknown glosses fingerspelled)
POST /v1/correct   {pose (base64 .pose), text?, notation?, language?, steps?, format?}
                   -> the recording with missing frames and keypoints filled, observed values unchanged
GET  /healthz      -> {"status": "ok"}
GET  /v1/model     -> skeleton, notations, languages, limits
GET  /v1/stats     -> batch sizes this replica has seen (read by the tests and bench/serve_load.py)
```
Every request is validated where it arrives (tokenised, its first pose decoded and mapped onto the
skeleton) before it joins a batch, so a bad request is a 4xx for its sender alone. `@serve.batch`
then hands the waiting requests to one `generate` call: texts, lengths, step counts and guidance
may all differ, and each item equals generating it alone. (Generation is deterministic: there is
no seed to give, and a request naming one is refused as an unknown field.)
"texts" and /v1/correct call the library's `compose.compose_sentence` and `correction.correct_pose`,
as `t2p generate --compose` and `t2p correct` do (Serve takes no lexicon: unknown glosses are
fingerspelled).

Run it with `serve run serve_configs/local.yaml`, `serve run t2p.serve:build_app model=DIR`, or
`t2p serve --model DIR`. The model folder is the `model` argument, else `$T2P_MODEL`, else
`runs/default/best` (what the README's main job trains); relative paths are read from the repo root.
"""
# no `from __future__ import annotations` here: FastAPI reads the route annotations through Serve's ingress
import asyncio
import base64
import binascii
import json
import math
import os
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pose_format import Pose
from ray import serve
from ray.serve import Application

from t2p.compose import PlannedSign, change_speed, compose_sentence, plan_sentence
from t2p.config import from_dict
from t2p.generation import Generated, as_pose, generate
from t2p.model import CONFIG_FILE, WEIGHTS_FILE, T2PModel
from t2p.notation import NOTATIONS, SignText
from t2p.pose import PoseFormatError, PoseSequence, Skeleton, read_pose, to_sequence, write_pose

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "runs/default/best"
MODEL_ENV = "T2P_MODEL"


@dataclass(frozen=True)
class ServeConfig:
    """What one replica accepts and how it batches; set from a config file's `args` or CLI flags."""
    max_text_length: int = 256            # characters of `text`
    max_frames: int = 256                 # frames per output, asked for or predicted (never above the model's)
    max_steps: int = 100                  # refinement steps per request (never above the schedule's)
    # chosen by bench/serve_sweep.py on 2 CPU cores (README, "Speed"): a batch that waits 50 ms fills, and
    # full batches doubled throughput over 10 ms waits, whose batches held 3-4 requests
    max_batch_size: int = 32              # requests per `generate` call
    batch_wait_timeout_s: float = 0.05    # how long a batch waits to fill once its first request is in
    max_guidance: float = 20.0            # |guidance| above this is refused
    max_first_pose_bytes: int = 8 << 20   # decoded size of `first_pose`
    device: str = "auto"                  # "auto": CUDA when the replica has a GPU, else CPU
    threads: int = 0                      # CPU threads of the replica's torch; 0: every core of the machine

    def __post_init__(self):
        for name in ("max_text_length", "max_frames", "max_steps", "max_batch_size", "max_first_pose_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve config: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.batch_wait_timeout_s <= 10:
            raise ValueError(f"serve config: batch_wait_timeout_s must be in [0, 10], got {self.batch_wait_timeout_s}")
        if not self.max_guidance >= 0:
            raise ValueError(f"serve config: max_guidance must be >= 0, got {self.max_guidance}")
        if self.threads < 0:
            raise ValueError(f"serve config: threads must be >= 0, got {self.threads}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"serve config: device must be auto, cpu or cuda[:N], got {self.device!r}")

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> "ServeConfig":
        """Typed config from plain args (`serve run … key=value` passes every value as a string)."""
        return from_dict(cls, args, coerce_strings=True, what="serve config", also_known=["model"])

    def for_model(self, model: T2PModel) -> "ServeConfig":
        """These limits, capped by what the model itself accepts."""
        return replace(self, max_frames=min(self.max_frames, model.config.max_frames),
                       max_steps=min(self.max_steps, model.schedule_config.max_steps))

    def torch_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


def resolve_model_dir(value: str | os.PathLike | None, base: Path = REPO_ROOT) -> Path:
    """The model folder: `value`, else $T2P_MODEL, else runs/default/best; relative to `base`."""
    chosen = value or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    path = Path(chosen).expanduser()
    path = path if path.is_absolute() else base / path
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        source = "argument" if value else (f"${MODEL_ENV}" if os.environ.get(MODEL_ENV) else "default")
        raise FileNotFoundError(f"model folder {path} ({source}) is not a t2p model (needs {CONFIG_FILE} and "
                                f"{WEIGHTS_FILE}); train one with `t2p quickstart`, or point model / --model / ${MODEL_ENV} at one")
    return path


# --- requests ---------------------------------------------------------------------------------

class GenerateRequest(BaseModel):
    """The JSON body of POST /v1/generate; ranges that depend on the model and config are checked later."""
    model_config = ConfigDict(extra="forbid")

    text: str | None = None               # one sign; or `texts`
    texts: list[str] | None = None        # several signs composed into one sequence, with transitions
    notation: str | None = None           # default: the model's default notation
    language: str | None = None           # ISO 639-3, one of the model's languages
    steps: int | None = None              # default: the model's schedule
    length: int | None = None             # frames; default: the predicted length
    guidance: float | None = Field(None, allow_inf_nan=False)
    first_pose: str | None = None         # base64 of a .pose file: who signs
    speed: float = Field(1.0, ge=0.5, le=2.0)  # signing speed; the frame rate stays
    keep_proportions: bool = False        # hold bones within 4% of the first pose's lengths
    spoken_language: str = "en"           # of `texts` glosses: the fingerspelling alphabet for unknown ones
    format: Literal["pose", "json"] = "pose"


class CorrectRequest(BaseModel):
    """The JSON body of POST /v1/correct."""
    model_config = ConfigDict(extra="forbid")

    pose: str                             # base64 of the .pose recording to complete
    text: str | None = None               # what it signs (optional)
    notation: str | None = None
    language: str | None = None
    steps: int | None = None
    format: Literal["pose", "json"] = "pose"


@dataclass
class Job:
    """One validated request, ready to join a batch."""
    sign: SignText
    first_pose: PoseSequence | None
    steps: int
    length: int | None
    guidance: float | None
    speed: float = 1.0
    keep_proportions: bool = False


def validate_request(request: GenerateRequest, model: T2PModel, limits: ServeConfig) -> Job:
    """Everything that can be wrong with a request, found before it can share a batch with others.

    Raises ValueError (NotationError and PoseFormatError included) with a message for the sender."""
    if (request.text is None) == (request.texts is None):
        raise ValueError('give either "text" (one sign) or "texts" (signs composed in order)')
    if request.texts is not None:
        raise ValueError('"texts" is composed by validate_composition, not batched')
    if len(request.text) > limits.max_text_length:
        raise ValueError(f"text has {len(request.text)} characters; the limit is {limits.max_text_length}")
    sign = SignText(request.text, request.notation or model.config.default_notation, request.language)
    tokens = model.vocabulary.encode(sign)  # the notation's own error names symbol and position
    if len(tokens) > model.config.max_text_tokens:
        raise ValueError(f"text has {len(tokens)} tokens; this model takes at most {model.config.max_text_tokens}")
    if sign.language is not None and sign.language not in model.vocabulary.languages:
        known = ", ".join(model.vocabulary.languages) or "none: leave language out"
        raise ValueError(f"language {sign.language!r} is not one this model knows ({known})")
    steps = model.schedule_config.steps if request.steps is None else request.steps
    if not 1 <= steps <= limits.max_steps:
        raise ValueError(f"steps must be in 1..{limits.max_steps}, got {steps}")
    if request.length is not None and not 1 <= request.length <= limits.max_frames:
        raise ValueError(f"length must be in 1..{limits.max_frames}, got {request.length}")
    if request.guidance is not None and abs(request.guidance) > limits.max_guidance:
        raise ValueError(f"guidance must be in -{limits.max_guidance}..{limits.max_guidance}, got {request.guidance}")
    first_pose = None
    if request.first_pose is not None:
        first_pose = decode_first_pose(request.first_pose, model.skeleton, limits.max_first_pose_bytes)
    return Job(sign, first_pose, steps, request.length, request.guidance, request.speed,
               request.keep_proportions)


MAX_COMPOSED_SIGNS = 32


@dataclass
class CompositionJob:
    """A validated "texts" request: its planned signs (`compose.plan_sentence`), each checked as a
    job of its own, ready for `compose.compose_sentence`."""
    planned: list[PlannedSign]
    jobs: list[Job]
    spoken_language: str


def validate_composition(request: GenerateRequest, model: T2PModel, limits: ServeConfig) -> CompositionJob:
    """A "texts" request as one job per sign (glosses the model does not know fingerspelled)."""
    if not request.texts:
        raise ValueError('"texts" is empty: give at least one sign')
    if request.text is not None:
        raise ValueError('give either "text" (one sign) or "texts" (signs composed in order)')
    if request.length is not None:
        raise ValueError('"length" does not apply to "texts": each sign has its predicted length')
    notation = request.notation or model.config.default_notation
    # no lexicon here: Serve's signs are the model's, or fingerspelled
    planned = plan_sentence(model, request.texts, notation, request.language, request.spoken_language)
    if len(planned) > MAX_COMPOSED_SIGNS:
        raise ValueError(f"{len(planned)} signs (after fingerspelling); the limit is {MAX_COMPOSED_SIGNS}")
    jobs = [validate_request(request.model_copy(update={"texts": None, "text": sign.text}), model, limits)
            for sign in planned]
    return CompositionJob(planned, jobs, request.spoken_language)


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


# --- the deployment ---------------------------------------------------------------------------

@dataclass
class BatchStats:
    """What the batch handler has seen; GET /v1/stats exposes it so batching can be checked from outside."""
    batches: int = 0
    requests: int = 0
    generate_calls: int = 0
    largest: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=256))

    def record(self, size: int, calls: int) -> None:
        self.batches += 1
        self.requests += size
        self.generate_calls += calls
        self.largest = max(self.largest, size)
        self.recent.append(size)

    def to_dict(self) -> dict:
        return {"batches": self.batches, "requests": self.requests, "generate_calls": self.generate_calls,
                "mean_batch_size": self.requests / self.batches if self.batches else 0.0,
                "max_batch_size": self.largest, "recent_batch_sizes": list(self.recent)}


api = FastAPI(title="t2p", description="Sign language notation to pose sequences.")


def parse_request(body: bytes, request_type: type[BaseModel] = GenerateRequest) -> BaseModel:
    """The body as a request, whatever its content type (`curl -d` sends form-encoded): 400 when it is
    not a JSON object, 422 naming each field that is wrong."""
    try:
        data = json.loads(body)
    except ValueError as error:  # JSONDecodeError and undecodable bytes
        raise HTTPException(status_code=400, detail=f"body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise HTTPException(status_code=400, detail='body must be a JSON object like {"text": "..."}')
    try:
        return request_type.model_validate(data)
    except ValidationError as error:
        problems = [f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
                    for problem in error.errors()]
        raise HTTPException(status_code=422, detail="; ".join(problems)) from None


@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class T2PServer:
    """One replica: the model, loaded once, behind the HTTP routes."""

    def __init__(self, model_dir: str, config: dict):
        limits = ServeConfig(**config)
        device = limits.torch_device()
        if device == "cpu":
            # Ray sets OMP_NUM_THREADS=1 in a 1-CPU actor, which left the replica's matrix products on one
            # core of a 2-core machine while the batch was the only work there is
            torch.set_num_threads(limits.threads or len(os.sched_getaffinity(0)))
        self.model = T2PModel.load(model_dir, device=device)
        self.limits = replace(limits.for_model(self.model), device=device)  # what GET /v1/model reports
        if self.model.schedule_config.steps > self.limits.max_steps:
            raise ValueError(f"the model's default of {self.model.schedule_config.steps} steps is above "
                             f"max_steps={self.limits.max_steps}")
        self.stats = BatchStats()
        self._generate_batch.set_max_batch_size(self.limits.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(self.limits.batch_wait_timeout_s)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/model")
    async def describe(self) -> dict:
        limits = asdict(self.limits)
        limits.update(max_text_tokens=self.model.config.max_text_tokens,
                      default_steps=self.model.schedule_config.steps)
        return {"skeleton": self.model.skeleton.to_dict(), "fps": self.model.config.fps,
                "notations": list(NOTATIONS), "default_notation": self.model.config.default_notation,
                "languages": self.model.vocabulary.languages, "limits": limits}

    @api.get("/v1/stats")
    async def batch_stats(self) -> dict:
        return self.stats.to_dict()

    @api.post("/v1/generate", response_model=None, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": GenerateRequest.model_json_schema()}}}})
    async def generate_route(self, http_request: Request) -> Response:
        request = parse_request(await http_request.body(), GenerateRequest)
        try:
            if request.texts is not None:
                sentence = validate_composition(request, self.model, self.limits)
            else:
                job = validate_request(request, self.model, self.limits)
        except ValueError as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        if request.texts is not None:  # two refinement calls of its own (signs, then transitions)
            try:
                composition = await asyncio.to_thread(self._compose, sentence)
            except ValueError as error:  # e.g. a transition that does not fit the model's frames
                raise HTTPException(status_code=422, detail=str(error)) from None
            return await asyncio.to_thread(self._response, composition.generated, sentence.jobs[0], request.format)
        sequence = await self._generate_batch(job)
        if isinstance(sequence, ValueError):
            raise HTTPException(status_code=422, detail=str(sequence))
        # serialised in a thread: the event loop stays free to gather the next batch
        return await asyncio.to_thread(self._response, change_speed(sequence, job.speed), job, request.format)

    @api.post("/v1/correct", response_model=None, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": CorrectRequest.model_json_schema()}}}})
    async def correct_route(self, http_request: Request) -> Response:
        """A recording with missing frames or keypoints, completed; observed values kept exactly."""
        from t2p.correction import correct_pose
        request = parse_request(await http_request.body(), CorrectRequest)
        try:
            recording = decode_pose(request.pose, self.limits.max_first_pose_bytes, field="pose")
            # checked first, for a message naming the field: the model's keypoints are in the recording
            decode_first_pose(request.pose, self.model.skeleton, self.limits.max_first_pose_bytes, field="pose",
                              pose=recording)
            job = validate_request(GenerateRequest(text=request.text or "", notation=request.notation,
                                                   language=request.language, steps=request.steps),
                                   self.model, self.limits)
            corrected = await asyncio.to_thread(correct_pose, self.model, recording, job.sign, request.steps)
        except ValueError as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        return await asyncio.to_thread(self._respond, corrected.pose, request.format)

    def _compose(self, sentence: CompositionJob):
        first = sentence.jobs[0]
        return compose_sentence(self.model, [sign.text for sign in sentence.planned], first.sign.notation,
                                first.sign.language, first.first_pose, spoken_language=sentence.spoken_language,
                                planned=sentence.planned, steps=first.steps, guidance=first.guidance,
                                speed=first.speed, keep_proportions=first.keep_proportions,
                                max_length=self.limits.max_frames).composition

    def _response(self, sequence: Generated, job: Job, format: str) -> Response:
        return self._respond(as_pose(self.model, sequence, job.first_pose), format)

    def _respond(self, pose: Pose, format: str) -> Response:
        if format == "json":
            written = to_sequence(pose, self.model.skeleton, normalize=False)
            return JSONResponse(sequence_json(written, self.model.skeleton))
        return Response(write_pose(pose), media_type="application/octet-stream",
                        headers={"content-disposition": 'attachment; filename="t2p.pose"'})

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.05)  # both replaced from the config in __init__
    async def _generate_batch(self, jobs: list[Job]) -> list[Generated | ValueError]:
        """All waiting requests in one `generate` call, off the event loop so
        more requests can arrive and queue for the next batch meanwhile."""
        outputs = await asyncio.to_thread(self._generate_jobs, jobs)
        self.stats.record(len(jobs), calls=1)
        return outputs

    def _generate_jobs(self, jobs: Sequence[Job]) -> list[Generated | ValueError]:
        """`generate` for a batch of jobs; should one still fail, each is retried alone."""
        try:
            return generate(self.model, [job.sign for job in jobs], first_poses=[job.first_pose for job in jobs],
                            steps=[job.steps for job in jobs], lengths=[job.length for job in jobs],
                            guidance=[job.guidance for job in jobs],
                            max_length=self.limits.max_frames, keep_proportions=[job.keep_proportions for job in jobs])
        except ValueError as error:
            if len(jobs) == 1:
                return [error]
            return [self._generate_jobs([job])[0] for job in jobs]


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder: `args` holds `model` (a folder) and any `ServeConfig` field."""
    args = dict(args)
    model_dir = resolve_model_dir(args.pop("model", None))
    config = ServeConfig.from_args(args)
    # a replica only takes max_ongoing_requests at once: room for a full batch running and one filling
    return T2PServer.options(max_ongoing_requests=2 * config.max_batch_size).bind(str(model_dir), asdict(config))
