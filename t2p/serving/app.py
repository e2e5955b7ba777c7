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
Every request is validated where it arrives (`t2p.serving.requests`: tokenised, planned, its first
pose decoded, its cost capped) before it joins a batch, so a bad request is a 4xx for its sender
alone. `t2p.serving.batches` then batches the waiting items by model and step group: texts,
lengths, step counts and guidance may all differ, each item equals generating it alone, and the
batches of different groups take turns step by step, so a 1-step request never waits for a
100-step batch to finish. (Generation is deterministic: there is no seed to give, and a request
naming one is refused.) Sentences and /v1/correct call the library's `sentence.compose_sentence`
and `correction.correct_pose`, as `t2p generate --compose` and `t2p correct` do, with a generator
that puts their items in the same batches; the server's lexicon (`lexicon` arg, `t2p serve
--lexicon DIR`) signs the glosses it has with its recordings. The HTTP side (routes, tokens, CORS,
body limit, timeout, streaming) is `t2p.serving.http`; the limits are `t2p.serving.config`.

Several models: `models` {name: folder}; a request names one (`"model"`, or Serve's
`serve_multiplexed_model_id` header, which also routes it to a replica that has it loaded), never
a path. Run it with `serve run serve_configs/local.yaml`, `serve run t2p.serving.app:build_app
model=DIR`, or `t2p serve --model DIR` (`--models sgg=DIR ase=DIR`). The model folder is the
`model` argument, else `$T2P_MODEL`, else `runs/default/best` (what the README's main job trains);
relative paths are read from the working directory.
"""
import asyncio
import functools
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import torch
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import RayServeException

from t2p.generation import as_pose
from t2p.generation.compose import change_speed
from t2p.generation.correction import CORRECTION_STEPS, correct_pose
from t2p.generation.sentence import Sentence, compose_sentence, lexicon_spoken_languages
from t2p.model import T2PModel, read_model_config
from t2p.notation import NOTATIONS, Vocabulary
from t2p.pose import Keypoints, Pose, PoseSequence
from t2p.serving.batches import ContinuousBatcher
from t2p.serving.config import (
    DEFAULT_MODEL_NAME,
    ServeConfig,
    ServedModel,
    resolve_lexicon_dir,
    resolve_models,
    resolve_path,
)
from t2p.serving.http import create_api, load_token, require_token_if_exposed
from t2p.serving.ray_private import multiplexed_models, proxy_host
from t2p.serving.requests import (
    CompositionJob,
    CorrectRequest,
    GenerateRequest,
    Job,
    check_work,
    decode_first_pose,
    decode_pose,
    validate_request,
)

# --- the deployment ---------------------------------------------------------------------------

@dataclass
class BatchStats:
    """What the batches have seen; GET /v1/stats exposes it so batching can be checked from outside.
    A batch is the requests that joined a model's refinement pool at one step (`t2p.serving.batches`:
    they are then refined with the rows already there, `recent_step_rows`); `groups` counts them by model."""
    batches: int = 0
    requests: int = 0
    generate_calls: int = 0
    largest: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=256))
    groups: dict = field(default_factory=dict)
    recent_step_rows: deque = field(default_factory=lambda: deque(maxlen=256))  # requests refined per step

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
                "batches_by_group": dict(self.groups), "recent_step_rows": list(self.recent_step_rows)}


def model_catalog(folder: str | Path) -> dict:
    """What GET /v1/models says of a model folder, from its config alone (no weights read)."""
    config, schedule = read_model_config(folder)
    return {"languages": Vocabulary(tuple(config.vocabulary)).languages, "default_notation": config.default_notation,
            "fps": config.fps, "default_steps": schedule.steps}


class T2PServer:
    """One replica: its models and their batches; `t2p.serving.http.create_api` is its HTTP side.

    `models`: one model folder, or {name: folder} of several; requests pick one by name (never by
    path), else get `default_model` (default: the first). The default stays loaded; the others are
    loaded on demand by Serve's model multiplexing (`@serve.multiplexed`), at most
    `max_loaded_models` of them, least recently used first out. `http_host`: where Serve's proxy
    listens (default: asked of Serve); beyond loopback a token is required."""

    def __init__(self, models: str | Mapping[str, str], config: dict, lexicon: str | None = None,
                 http_host: str | None = None, default_model: str | None = None):
        limits = ServeConfig(**config)
        self.token = load_token(limits.auth_token_file)
        require_token_if_exposed(proxy_host() if http_host is None else http_host, self.token)
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
        self.batches = ContinuousBatcher(self.config.max_batch_size, self.config.batch_wait_timeout_s,
                                         on_join=lambda name, count: self.stats.record(count, calls=1, group=str(name)),
                                         on_step=lambda name, rows: self.stats.recent_step_rows.append(rows))
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
        return [self.default_name] + [name for name in multiplexed_models(self._loader) if name != self.default_name]

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

    async def generate(self, served: ServedModel, job: Job) -> Keypoints:
        """One sign, in the next batch of its model and step group; at the asked speed."""
        sequence = await self.batches.generate(served.model, served.name, job.request)
        return change_speed(sequence, job.speed)

    async def stream(self, served: ServedModel, job: Job) -> AsyncIterator[Keypoints]:
        """One sign after each of its refinement steps (the last is what `generate` gives), batched alike."""
        async for sequence in self.batches.stream(served.model, served.name, job.request):
            yield change_speed(sequence, job.speed)

    async def compose(self, served: ServedModel, sentence: CompositionJob) -> Sentence:
        """A validated sentence, by `compose_sentence`, its signs and transitions in the batches."""
        generator = self.batches.generator(served.model, served.name, asyncio.get_running_loop())
        return await asyncio.get_running_loop().run_in_executor(self.compositions, functools.partial(
            compose_sentence, served.model, notation=sentence.notation, language=sentence.language,
            lexicon=self.lexicon, plan=sentence.plan, settings=sentence.settings, speed=sentence.speed,
            generator=generator))

    async def correct(self, served: ServedModel, request: CorrectRequest) -> Pose:
        """The recording of a /v1/correct request completed (`correction.correct_pose`), its windows in the batches."""
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
            correct_pose, served.model, recording, job.request.sign, request.steps, generator))
        return corrected.pose

    def health(self) -> dict:
        """GET /healthz: which replica answered and how long it has been up (a restarted one is young)."""
        return {"status": "ok", "replica": self.replica_id, "uptime_s": round(time.monotonic() - self.started, 3)}

    def batch_stats(self) -> dict:
        """GET /v1/stats: the batches' sizes, and where this replica's time went: seconds in refinement
        steps, seconds items waited for their batch to form (summed), the process's CPU seconds."""
        return {**self.stats.to_dict(), "refine_s": self.batches.busy_s, "queued_s": self.batches.waited_s,
                "cpu_s": time.process_time()}

    def as_pose(self, served: ServedModel, sequence: Keypoints, first_pose: PoseSequence | None) -> Pose:
        return as_pose(served.model, sequence, first_pose)

    def close(self) -> None:
        """Stop the refinement and composition threads. A replica's process ends with them; a
        process that goes on (tests, an embedding application) must call it: an idle refinement
        thread that has run torch keeps its thread pool, which slowed later training in the same
        process 2x on 2 cores."""
        batches = getattr(self, "batches", None)
        if batches is not None:
            batches.shutdown()
        compositions = getattr(self, "compositions", None)
        if compositions is not None:
            compositions.shutdown(wait=False, cancel_futures=True)

    def __del__(self):
        self.close()


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder: `args` holds `model` (a folder) or `models` (several, by name:
    {name: folder} or "name=folder,name=folder"), optionally `default_model` (a name), `lexicon` (a
    folder), `num_replicas` (default 1; a config file's `deployments` section overrides it), and any
    `ServeConfig` field."""
    args = dict(args)
    models, default_model = resolve_models(args.pop("model", None), args.pop("models", None),
                                           args.pop("default_model", None))  # absolute: replicas run elsewhere
    lexicon = args.pop("lexicon", None)
    lexicon = str(resolve_lexicon_dir(lexicon)) if lexicon else None
    num_replicas = int(args.pop("num_replicas", 1))
    config = ServeConfig.from_args(args)
    if config.auth_token_file:
        config = replace(config, auth_token_file=str(resolve_path(config.auth_token_file)))
    deployment = serve.deployment(serve.ingress(create_api(config))(T2PServer), name="T2PServer",
                                  ray_actor_options={"num_cpus": 1},
                                  logging_config={"enable_access_log": config.access_log})
    # where the proxy listens is asked of Serve once, here, not through a Serve client in every
    # replica (suspected of keeping `serve run` from exiting on Ctrl-C in the full suite)
    return deployment.options(max_ongoing_requests=config.max_ongoing_requests, num_replicas=num_replicas).bind(
        models, asdict(config), lexicon, proxy_host(), default_model)
