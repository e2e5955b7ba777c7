"""Ray Serve: `generate` over HTTP, with concurrent requests sharing one refinement pass per step.

```
POST /v1/generate  {text | texts | spoken_text, model?, notation?, language?, spoken_language?, fallback?, steps?,
                    length?, guidance?, first_pose?, speed?, keep_proportions?, format?, stream?}
                   -> .pose bytes (application/octet-stream) or JSON {fps, components, points, frames, confidence}
                   a sentence ("texts" and/or "spoken_text": signs composed in order with generated transitions)
                   also gives its segments {text, kind, source: model | lexicon | fingerspelled, word, begin, end}:
                   in the JSON, or the x-t2p-segments header (JSON) of a .pose
                   "stream": true (one sign): one event per refinement step, NDJSON or (Accept:
                   text/event-stream) server-sent events, {step, steps, frames...} or {step, steps, pose}
POST /v1/correct   {pose (base64 .pose), model?, text?, notation?, language?, steps?, format?}
                   -> the recording with missing frames and keypoints filled, observed values unchanged
GET  /healthz      -> {"status": "ok", "replica": the id of the replica that answered, "uptime_s": its age}
GET  /v1/models    -> the models this server has, by name; which one is the default, which are loaded
GET  /v1/model     -> skeleton, notations, languages, lexicon, limits (of ?model=NAME, else the default)
GET  /v1/stats     -> batch sizes this replica has seen, its seconds refining, queued and on the CPU
                   (read by the tests and bench/serve_load.py)
```
Every request is validated where it arrives (`t2p.serve_requests`: tokenised, planned, its first
pose decoded, its cost capped) before it joins a batch, so a bad request is a 4xx for its sender
alone. `t2p.serve_batches` then batches the waiting items by model and step group: texts,
lengths, step counts and guidance may all differ, each item equals generating it alone, and the
batches of different groups take turns step by step, so a 1-step request never waits for a
100-step batch to finish. (Generation is deterministic: there is no seed to give, and a request
naming one is refused.) Sentences and /v1/correct call the library's `compose.compose_sentence`
and `correction.correct_pose`, as `t2p generate --compose` and `t2p correct` do, with a generator
that puts their items in the same batches; the server's lexicon (`lexicon` arg, `t2p serve
--lexicon DIR`) signs the glosses it has with its recordings. The HTTP side (routes, tokens, CORS,
body limit, timeout, streaming) is `t2p.serve_http`.

Several models: `models` {name: folder}; a request names one (`"model"`, or Serve's
`serve_multiplexed_model_id` header, which also routes it to a replica that has it loaded), never
a path. Run it with `serve run serve_configs/local.yaml`, `serve run t2p.serve:build_app
model=DIR`, or `t2p serve --model DIR` (`--models sgg=DIR ase=DIR`). The model folder is the
`model` argument, else `$T2P_MODEL`, else `runs/default/best` (what the README's main job trains);
relative paths are read from the repo root.
"""
import asyncio
import functools
import json
import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import torch
from pose_format import Pose
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import RayServeException

from t2p.compose import Sentence, change_speed, compose_sentence, lexicon_spoken_languages
from t2p.config import from_dict
from t2p.generation import Generated, as_pose
from t2p.model import CONFIG_FILE, WEIGHTS_FILE, T2PModel
from t2p.notation import NOTATIONS, Vocabulary
from t2p.serve_batches import FairBatcher, Item
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
    max_batch_size: int = 32              # requests per batch (one run of `generate`'s loop)
    batch_wait_timeout_s: float = 0.05    # how long a batch waits to fill once its first request is in
    max_loaded_models: int = 3            # models a replica keeps loaded besides the default (LRU)
    max_guidance: float = 20.0            # |guidance| above this is refused
    max_first_pose_bytes: int = 8 << 20   # decoded size of `first_pose`
    max_body_bytes: int = 12 << 20        # a request body (a base64 first_pose is 4/3 of its file)
    request_timeout_s: float = 60.0       # longer: 504
    cors_origins: str = ""                # comma-separated origins browsers may call from ("*": any); none by default
    auth_token_file: str = ""             # the bearer token's file; else $T2P_API_TOKEN; required beyond loopback
    device: str = "auto"                  # "auto": CUDA when the replica has a GPU, else CPU
    threads: int = 0                      # CPU threads of the replica's torch; 0: every core of the machine
    # Serve's line per request in the replica's log and, through Ray's log monitor, `t2p serve`'s terminal;
    # turning it off moved throughput no more than run-to-run noise (bench/serve_load.py, README "Speed")
    access_log: bool = True

    def __post_init__(self):
        for name in ("max_text_length", "max_spoken_text_length", "max_signs", "max_frames", "max_steps",
                     "max_step_frames", "max_batch_size", "max_first_pose_bytes", "max_body_bytes",
                     "max_loaded_models"):
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
        return from_dict(cls, args, coerce_strings=True, what="serve config",
                         also_known=["model", "models", "default_model", "lexicon", "num_replicas"])

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
    """What the batches have seen; GET /v1/stats exposes it so batching can be checked from outside.
    A batch is one run of `generate`'s loop (`t2p.serve_batches`); `groups` counts them by model and
    step group."""
    batches: int = 0
    requests: int = 0
    generate_calls: int = 0
    largest: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=256))
    groups: dict = field(default_factory=dict)

    def record(self, size: int, calls: int, group: str = "") -> None:
        self.batches += 1
        self.requests += size
        self.generate_calls += calls
        self.largest = max(self.largest, size)
        self.recent.append(size)
        self.groups[group] = self.groups.get(group, 0) + 1

    def to_dict(self) -> dict:
        return {"batches": self.batches, "requests": self.requests, "generate_calls": self.generate_calls,
                "mean_batch_size": self.requests / self.batches if self.batches else 0.0,
                "max_batch_size": self.largest, "recent_batch_sizes": list(self.recent),
                "batches_by_group": dict(self.groups)}


@dataclass
class ServedModel:
    """A model a replica has loaded, by the name requests pick it with, and the limits that apply to it."""
    name: str
    model: T2PModel
    limits: ServeConfig  # the server's, capped by what the model accepts


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_MODEL_NAME = "default"


def model_catalog(folder: str | Path) -> dict:
    """What GET /v1/models says of a model folder, from its config alone (no weights read)."""
    saved = json.loads((Path(folder) / CONFIG_FILE).read_text())
    config = saved["model"]
    return {"languages": Vocabulary(tuple(config["vocabulary"])).languages,
            "default_notation": config.get("default_notation"), "fps": config.get("fps"),
            "default_steps": saved["schedule"].get("steps")}


class T2PServer:
    """One replica: its models and their batches; `t2p.serve_http.create_api` is its HTTP side.

    `models`: one model folder, or {name: folder} of several; requests pick one by name (never by
    path), else get `default_model` (default: the first). The default stays loaded; the others are
    loaded on demand by Serve's model multiplexing (`@serve.multiplexed`), at most
    `max_loaded_models` of them, least recently used first out. `http_host`: where Serve's proxy
    listens (default: asked of Serve); beyond loopback a token is required."""

    def __init__(self, models: str | Mapping[str, str], config: dict, lexicon: str | None = None,
                 http_host: str | None = None, default_model: str | None = None):
        limits = ServeConfig(**config)
        self.token = load_token(limits.auth_token_file)
        require_token_if_exposed(serve_proxy_host() if http_host is None else http_host, self.token)
        device = limits.torch_device()
        if device == "cpu":
            # Ray sets OMP_NUM_THREADS=1 in a 1-CPU actor, which left the replica's matrix products on one
            # core of a 2-core machine while the batch was the only work there is
            torch.set_num_threads(limits.threads or len(os.sched_getaffinity(0)))
        self.config = replace(limits, device=device)
        self.model_dirs = {DEFAULT_MODEL_NAME: models} if isinstance(models, (str, os.PathLike)) else dict(models)
        self.default_name = default_model or next(iter(self.model_dirs))
        if self.default_name not in self.model_dirs:
            raise ValueError(f"default_model {self.default_name!r} is not one of the models ({', '.join(self.model_dirs)})")
        self.catalog = {name: model_catalog(folder) for name, folder in self.model_dirs.items()}
        self.default = self._load_model(self.default_name)
        self.model, self.limits = self.default.model, self.default.limits  # the default's (GET /v1/model)
        self.lexicon = lexicon
        self.stats = BatchStats()
        self.batches = FairBatcher(self.config.max_batch_size, self.config.batch_wait_timeout_s,
                                   on_run=lambda group, size: self.stats.record(size, calls=1,
                                                                                group=f"{group[0]}/{group[1]}"))
        # sentences and corrections wait on their batches in threads of their own, not the default
        # executor's few, which serialise responses
        self.compositions = ThreadPoolExecutor(max_workers=2 * self.config.max_batch_size,
                                               thread_name_prefix="t2p-compose")

        async def load(name: str) -> ServedModel:
            return await asyncio.to_thread(self._load_model, name)
        self._loader = load  # Serve keeps its model cache on the function it wraps
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id  # GET /healthz names it
            self._load = serve.multiplexed(max_num_models_per_replica=self.config.max_loaded_models)(load)
        except RayServeException:  # the API built in-process (tests): no replica, so no Serve model cache
            self.replica_id, self._load = "in-process", load
        self.started = time.monotonic()

    def _load_model(self, name: str) -> ServedModel:
        model = T2PModel.load(self.model_dirs[name], device=self.config.device)
        limits = self.config.for_model(model)
        if model.schedule_config.steps > limits.max_steps:
            raise ValueError(f"model {name!r}: its default of {model.schedule_config.steps} steps is above "
                             f"max_steps={limits.max_steps}")
        return ServedModel(name, model, limits)

    async def get_model(self, name: str | None = None) -> ServedModel:
        """The model a request names (None: the default), from the configured ones only."""
        name = name or self.default_name
        if name not in self.model_dirs:
            raise ValueError(f"model {name!r} is not one this server has ({', '.join(self.model_dirs)}): "
                             "see GET /v1/models")
        if name == self.default_name:
            return self.default
        return await self._load(name)

    def loaded_models(self) -> list[str]:
        """The models this replica holds now: the default and those in Serve's model cache."""
        cache = getattr(self._loader, "__serve_multiplex_wrapper", None)  # no public API lists Serve's cache
        return [self.default_name] + [name for name in (cache.models if cache else {}) if name != self.default_name]

    def list_models(self) -> dict:
        loaded = set(self.loaded_models())
        return {"default": self.default_name, "max_loaded_models": self.config.max_loaded_models,
                "models": [{"name": name, "default": name == self.default_name, "loaded": name in loaded,
                            **self.catalog[name]} for name in self.model_dirs]}

    def describe(self, served: ServedModel | None = None) -> dict:
        served = served or self.default
        model = served.model
        limits = {key: value for key, value in asdict(served.limits).items() if key != "auth_token_file"}
        limits.update(max_text_tokens=model.config.max_text_tokens, default_steps=model.schedule_config.steps)
        lexicon = None
        if self.lexicon:
            lexicon = {"spoken_languages": {language: sorted(lexicon_spoken_languages(self.lexicon, language))
                                            for language in model.vocabulary.languages}}
        return {"model": served.name, "skeleton": model.skeleton.to_dict(), "fps": model.config.fps,
                "notations": model.config.notations or list(NOTATIONS), "default_notation": model.config.default_notation,
                "languages": model.vocabulary.languages, "lexicon": lexicon,
                "auth": self.token is not None, "limits": limits}

    async def generate(self, served: ServedModel, job: Job) -> Generated:
        """One sign, in the next batch of its model and step group; at the asked speed."""
        sequence = await self.batches.generate(served.model, served.name, self._item(served, job))
        return change_speed(sequence, job.speed)

    async def stream(self, served: ServedModel, job: Job) -> AsyncIterator[Generated]:
        """One sign after each of its refinement steps (the last is what `generate` gives), batched alike."""
        async for sequence in self.batches.stream(served.model, served.name, self._item(served, job)):
            yield change_speed(sequence, job.speed)

    @staticmethod
    def _item(served: ServedModel, job: Job) -> Item:
        return Item(job.sign, job.first_pose, job.steps, job.length, job.guidance,
                    max_length=served.limits.max_frames, keep_proportions=job.keep_proportions)

    async def compose(self, served: ServedModel, sentence: CompositionJob) -> Sentence:
        """A validated sentence, by `compose_sentence`, its signs and transitions in the batches."""
        generator = self.batches.generator(served.model, served.name, asyncio.get_running_loop())
        return await asyncio.get_running_loop().run_in_executor(self.compositions, functools.partial(
            compose_sentence, served.model, notation=sentence.notation, language=sentence.language,
            first_pose=sentence.first_pose, lexicon=self.lexicon, plan=sentence.plan, steps=sentence.steps,
            guidance=sentence.guidance, speed=sentence.speed, keep_proportions=sentence.keep_proportions,
            max_length=served.limits.max_frames, generator=generator))

    async def correct(self, served: ServedModel, request: CorrectRequest) -> Pose:
        """The recording of a /v1/correct request completed (`correction.correct_pose`), its windows in the batches."""
        from t2p.correction import CORRECTION_STEPS, correct_pose
        limits = served.limits
        recording = decode_pose(request.pose, limits.max_first_pose_bytes, field="pose")
        # checked first, for a message naming the field: the model's keypoints are in the recording
        decode_first_pose(request.pose, served.model.skeleton, limits.max_first_pose_bytes, field="pose",
                          pose=recording)
        job = validate_request(GenerateRequest(text=request.text or "", notation=request.notation,
                                               language=request.language, steps=request.steps, length=1),
                               served.model, limits)
        check_work(request.steps or CORRECTION_STEPS, len(recording.body.data), limits)  # every frame, windowed
        generator = self.batches.generator(served.model, served.name, asyncio.get_running_loop())
        corrected = await asyncio.get_running_loop().run_in_executor(self.compositions, functools.partial(
            correct_pose, served.model, recording, job.sign, request.steps, generator))
        return corrected.pose

    def health(self) -> dict:
        """GET /healthz: which replica answered and how long it has been up (a restarted one is young)."""
        return {"status": "ok", "replica": self.replica_id, "uptime_s": round(time.monotonic() - self.started, 3)}

    def batch_stats(self) -> dict:
        """GET /v1/stats: the batches' sizes, and where this replica's time went: seconds in refinement
        steps, seconds items waited for their batch to form (summed), the process's CPU seconds."""
        return {**self.stats.to_dict(), "refine_s": self.batches.busy_s, "queued_s": self.batches.waited_s,
                "cpu_s": time.process_time()}

    def as_pose(self, served: ServedModel, sequence: Generated, first_pose: PoseSequence | None) -> Pose:
        return as_pose(served.model, sequence, first_pose)

    def __del__(self):
        batches = getattr(self, "batches", None)
        if batches is not None:
            batches.shutdown()


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder: `args` holds `model` (a folder) or `models` (several, by name:
    {name: folder} or "name=folder,name=folder"), optionally `default_model` (a name), `lexicon` (a
    folder), `num_replicas` (default 1; a config file's `deployments` section overrides it), and any
    `ServeConfig` field."""
    args = dict(args)
    models, default_model = resolve_models(args.pop("model", None), args.pop("models", None),
                                           args.pop("default_model", None))
    lexicon = args.pop("lexicon", None)
    lexicon = str(resolve_lexicon_dir(lexicon)) if lexicon else None
    num_replicas = int(args.pop("num_replicas", 1))
    config = ServeConfig.from_args(args)
    if config.auth_token_file:
        config = replace(config, auth_token_file=str(resolve_path(config.auth_token_file)))
    deployment = serve.deployment(serve.ingress(create_api(config))(T2PServer), name="T2PServer",
                                  ray_actor_options={"num_cpus": 1},
                                  logging_config={"enable_access_log": config.access_log})
    # a replica only takes max_ongoing_requests at once: room for a full batch running and one filling
    # where the proxy listens is asked of Serve once, here, not through a Serve client in every
    # replica (suspected of keeping `serve run` from exiting on Ctrl-C in the full suite)
    return deployment.options(max_ongoing_requests=2 * config.max_batch_size, num_replicas=num_replicas).bind(
        models, asdict(config), lexicon, serve_proxy_host(), default_model)


def resolve_models(model: str | None, models: str | Mapping[str, str] | None,
                   default_model: str | None = None) -> tuple[dict[str, str], str]:
    """{name: model folder} and the default's name: `models` by name, or the one `model` (see
    `resolve_model_dir`) named "default"."""
    if model and models:
        raise ValueError("give model (one folder) or models (several, by name), not both")
    if not models:
        return {DEFAULT_MODEL_NAME: str(resolve_model_dir(model))}, default_model or DEFAULT_MODEL_NAME
    if isinstance(models, str):  # `serve run ... models=a=DIR,b=DIR` passes a string
        pairs = [entry.split("=", 1) for entry in models.split(",") if entry.strip()]
        if not all(len(pair) == 2 for pair in pairs):
            raise ValueError(f"models must be name=folder,name=folder, got {models!r}")
        models = {name.strip(): folder.strip() for name, folder in pairs}
    for name in models:
        if not MODEL_NAME.fullmatch(name):
            raise ValueError(f"model name {name!r}: letters, digits, '_', '.', '-' (at most 64)")
    resolved = {name: str(resolve_model_dir(folder)) for name, folder in models.items()}
    default_model = default_model or next(iter(resolved))
    if default_model not in resolved:
        raise ValueError(f"default_model {default_model!r} is not one of the models ({', '.join(resolved)})")
    return resolved, default_model


def resolve_path(value: str | os.PathLike, base: Path = REPO_ROOT) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
