"""Ray Serve: `generate` over HTTP, with concurrent requests sharing one refinement pass per step.

```
POST /v1/generate  {text | texts | spoken_text, notation?, language?, spoken_language?, fallback?, steps?,
                    length?, guidance?, first_pose?, speed?, keep_proportions?, format?}
                   -> .pose bytes (application/octet-stream) or JSON {fps, components, points, frames, confidence}
                   a sentence ("texts" and/or "spoken_text": signs composed in order with generated transitions)
                   also gives its segments {text, kind, source: model | lexicon | fingerspelled, word, begin, end}:
                   in the JSON, or the x-t2p-segments header (JSON) of a .pose
POST /v1/correct   {pose (base64 .pose), text?, notation?, language?, steps?, format?}
                   -> the recording with missing frames and keypoints filled, observed values unchanged
GET  /healthz      -> {"status": "ok"}
GET  /v1/model     -> skeleton, notations, languages, lexicon, limits
GET  /v1/stats     -> batch sizes this replica has seen (read by the tests and bench/serve_load.py)
```
Every request is validated where it arrives (`t2p.serve_requests`: tokenised, planned, its first
pose decoded, its cost capped) before it joins a batch, so a bad request is a 4xx for its sender
alone. `@serve.batch` then hands the waiting one-sign requests to one `generate` call: texts,
lengths, step counts and guidance may all differ, and each item equals generating it alone.
(Generation is deterministic: there is no seed to give, and a request naming one is refused.)
Sentences and /v1/correct call the library's `compose.compose_sentence` and
`correction.correct_pose`, as `t2p generate --compose` and `t2p correct` do; the server's lexicon
(`lexicon` arg, `t2p serve --lexicon DIR`) signs the glosses it has with its recordings.
The HTTP side (routes, tokens, CORS, body limit, timeout) is `t2p.serve_http`.

Run it with `serve run serve_configs/local.yaml`, `serve run t2p.serve:build_app model=DIR`, or
`t2p serve --model DIR`. The model folder is the `model` argument, else `$T2P_MODEL`, else
`runs/default/best` (what the README's main job trains); relative paths are read from the repo root.
"""
import asyncio
import os
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from pose_format import Pose
from ray import serve
from ray.serve import Application

from t2p.compose import Sentence, change_speed, compose_sentence, lexicon_spoken_languages
from t2p.config import from_dict
from t2p.generation import Generated, as_pose, generate
from t2p.model import CONFIG_FILE, WEIGHTS_FILE, T2PModel
from t2p.notation import NOTATIONS
from t2p.pose import PoseSequence
from t2p.serve_http import create_api, load_token, require_token_if_exposed, serve_proxy_host
from t2p.serve_requests import (CompositionJob, CorrectRequest, GenerateRequest, Job, check_work,  # noqa: F401
                                decode_first_pose, decode_pose, validate_request)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "runs/default/best"
MODEL_ENV = "T2P_MODEL"


@dataclass(frozen=True)
class ServeConfig:
    """What one replica accepts and how it batches; set from a config file's `args` or CLI flags."""
    max_text_length: int = 256            # characters of `text`, and of each of `texts`
    max_spoken_text_length: int = 1000    # characters of `spoken_text`
    max_signs: int = 32                   # signs of a sentence, before and after fingerspelling
    max_frames: int = 256                 # frames per sign, asked for or predicted (never above the model's)
    max_steps: int = 100                  # refinement steps per request (never above the schedule's)
    max_step_frames: int = 262144         # steps x frames of one request, at most (a sentence: all its signs)
    # chosen by bench/serve_sweep.py on 2 CPU cores (README, "Speed"): a batch that waits 50 ms fills, and
    # full batches doubled throughput over 10 ms waits, whose batches held 3-4 requests
    max_batch_size: int = 32              # requests per `generate` call
    batch_wait_timeout_s: float = 0.05    # how long a batch waits to fill once its first request is in
    max_guidance: float = 20.0            # |guidance| above this is refused
    max_first_pose_bytes: int = 8 << 20   # decoded size of `first_pose`
    max_body_bytes: int = 12 << 20        # a request body (a base64 first_pose is 4/3 of its file)
    request_timeout_s: float = 60.0       # longer: 504
    cors_origins: str = ""                # comma-separated origins browsers may call from ("*": any); none by default
    auth_token_file: str = ""             # the bearer token's file; else $T2P_API_TOKEN; required beyond loopback
    device: str = "auto"                  # "auto": CUDA when the replica has a GPU, else CPU
    threads: int = 0                      # CPU threads of the replica's torch; 0: every core of the machine

    def __post_init__(self):
        for name in ("max_text_length", "max_spoken_text_length", "max_signs", "max_frames", "max_steps",
                     "max_step_frames", "max_batch_size", "max_first_pose_bytes", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve config: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.batch_wait_timeout_s <= 10:
            raise ValueError(f"serve config: batch_wait_timeout_s must be in [0, 10], got {self.batch_wait_timeout_s}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"serve config: request_timeout_s must be > 0, got {self.request_timeout_s}")
        if not self.max_guidance >= 0:
            raise ValueError(f"serve config: max_guidance must be >= 0, got {self.max_guidance}")
        if self.threads < 0:
            raise ValueError(f"serve config: threads must be >= 0, got {self.threads}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"serve config: device must be auto, cpu or cuda[:N], got {self.device!r}")

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> "ServeConfig":
        """Typed config from plain args (`serve run … key=value` passes every value as a string)."""
        return from_dict(cls, args, coerce_strings=True, what="serve config", also_known=["model", "lexicon"])

    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

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


def resolve_lexicon_dir(value: str | os.PathLike, base: Path = REPO_ROOT) -> Path:
    """A spoken-to-signed lexicon folder (its index.csv); relative to `base`."""
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not (path / "index.csv").is_file():
        raise FileNotFoundError(f"lexicon {path} has no index.csv (the spoken-to-signed lexicon format)")
    return path


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



class T2PServer:
    """One replica: the model, loaded once, and its batches; `t2p.serve_http.create_api` is its HTTP side.

    `http_host`: where Serve's proxy listens (default: asked of Serve); beyond loopback a token is
    required."""

    def __init__(self, model_dir: str, config: dict, lexicon: str | None = None, http_host: str | None = None):
        limits = ServeConfig(**config)
        self.token = load_token(limits.auth_token_file)
        require_token_if_exposed(serve_proxy_host() if http_host is None else http_host, self.token)
        device = limits.torch_device()
        if device == "cpu":
            # Ray sets OMP_NUM_THREADS=1 in a 1-CPU actor, which left the replica's matrix products on one
            # core of a 2-core machine while the batch was the only work there is
            torch.set_num_threads(limits.threads or len(os.sched_getaffinity(0)))
        self.model = T2PModel.load(model_dir, device=device)
        self.lexicon = lexicon
        self.limits = replace(limits.for_model(self.model), device=device)  # what GET /v1/model reports
        if self.model.schedule_config.steps > self.limits.max_steps:
            raise ValueError(f"the model's default of {self.model.schedule_config.steps} steps is above "
                             f"max_steps={self.limits.max_steps}")
        self.stats = BatchStats()
        self._generate_batch.set_max_batch_size(self.limits.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(self.limits.batch_wait_timeout_s)

    def describe(self) -> dict:
        limits = {key: value for key, value in asdict(self.limits).items() if key != "auth_token_file"}
        limits.update(max_text_tokens=self.model.config.max_text_tokens,
                      default_steps=self.model.schedule_config.steps)
        lexicon = None
        if self.lexicon:
            lexicon = {"spoken_languages": {language: sorted(lexicon_spoken_languages(self.lexicon, language))
                                            for language in self.model.vocabulary.languages}}
        return {"skeleton": self.model.skeleton.to_dict(), "fps": self.model.config.fps,
                "notations": self.model.config.notations or list(NOTATIONS), "default_notation": self.model.config.default_notation,
                "languages": self.model.vocabulary.languages, "lexicon": lexicon,
                "auth": self.token is not None, "limits": limits}

    async def generate(self, job: Job) -> Generated:
        """One sign, in the next batch; at the asked speed."""
        sequence = await self._generate_batch(job)
        if isinstance(sequence, ValueError):
            raise sequence
        return change_speed(sequence, job.speed)

    async def compose(self, sentence: CompositionJob) -> Sentence:
        """A validated sentence, by `compose_sentence` (its two refinement calls are its own: signs, then transitions)."""
        return await asyncio.to_thread(
            compose_sentence, self.model, notation=sentence.notation, language=sentence.language,
            first_pose=sentence.first_pose, lexicon=self.lexicon, plan=sentence.plan, steps=sentence.steps,
            guidance=sentence.guidance, speed=sentence.speed, keep_proportions=sentence.keep_proportions,
            max_length=self.limits.max_frames)

    async def correct(self, request: CorrectRequest) -> Pose:
        """The recording of a /v1/correct request completed (`correction.correct_pose`)."""
        from t2p.correction import CORRECTION_STEPS, correct_pose
        recording = decode_pose(request.pose, self.limits.max_first_pose_bytes, field="pose")
        # checked first, for a message naming the field: the model's keypoints are in the recording
        decode_first_pose(request.pose, self.model.skeleton, self.limits.max_first_pose_bytes, field="pose",
                          pose=recording)
        job = validate_request(GenerateRequest(text=request.text or "", notation=request.notation,
                                               language=request.language, steps=request.steps, length=1),
                               self.model, self.limits)
        check_work(request.steps or CORRECTION_STEPS, len(recording.body.data), self.limits)  # every frame, windowed
        corrected = await asyncio.to_thread(correct_pose, self.model, recording, job.sign, request.steps)
        return corrected.pose

    def as_pose(self, sequence: Generated, first_pose: PoseSequence | None) -> Pose:
        return as_pose(self.model, sequence, first_pose)

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
    """Serve application builder: `args` holds `model` (a folder), optionally `lexicon` (a folder), and
    any `ServeConfig` field."""
    args = dict(args)
    model_dir = resolve_model_dir(args.pop("model", None))
    lexicon = args.pop("lexicon", None)
    lexicon = str(resolve_lexicon_dir(lexicon)) if lexicon else None
    config = ServeConfig.from_args(args)
    if config.auth_token_file:
        config = replace(config, auth_token_file=str(resolve_path(config.auth_token_file)))
    deployment = serve.deployment(serve.ingress(create_api(config))(T2PServer), name="T2PServer",
                                  ray_actor_options={"num_cpus": 1})
    # a replica only takes max_ongoing_requests at once: room for a full batch running and one filling
    # where the proxy listens is asked of Serve once, here, not through a Serve client in every
    # replica (suspected of keeping `serve run` from exiting on Ctrl-C in the full suite)
    return deployment.options(max_ongoing_requests=2 * config.max_batch_size).bind(
        str(model_dir), asdict(config), lexicon, serve_proxy_host())


def resolve_path(value: str | os.PathLike, base: Path = REPO_ROOT) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
