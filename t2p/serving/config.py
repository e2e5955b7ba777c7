"""What a replica serves and accepts: `ServeConfig` (every limit, with the help `t2p serve` shows
for its flag), and the model folders and lexicon by name or path. Relative paths are read from
the working directory."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from t2p.config import from_dict
from t2p.model import CONFIG_FILE, WEIGHTS_FILE, T2PModel
from t2p.pose import MAX_FRAMES

DEFAULT_MODEL = "runs/default/best"
MODEL_ENV = "T2P_MODEL"
TOKEN_ENV = "T2P_API_TOKEN"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_MODEL_NAME = "default"
# what an application's args hold besides ServeConfig's fields
APP_ARGS = ("model", "models", "default_model", "lexicon", "num_replicas")


def _limit(default, help: str):
    """A ServeConfig field: its default and the help its `t2p serve` flag shows."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServeConfig:
    """What one replica accepts and how it batches; set from a config file's `args` or `t2p serve`'s
    flags (one per field)."""
    max_text_length: int = _limit(256, "characters of text (and of each of texts) per request")
    max_spoken_text_length: int = _limit(1000, "characters of spoken_text per request")
    max_signs: int = _limit(32, "signs of a sentence, before and after fingerspelling")
    max_frames: int = _limit(MAX_FRAMES, "frames per sign, asked for or predicted (never above the model's)")
    max_steps: int = _limit(100, "refinement steps per request (never above the schedule's)")
    max_step_frames: int = _limit(262144, "steps x frames of one request, at most (a sentence: all its signs)")
    # requests join a running batch at its next step (continuous batching, t2p.serving.batches), so
    # a batch fills without waiting: an idle pool starts at once (docs/serving.md)
    max_batch_size: int = _limit(32, "requests refined together (the rows of a model's refinement pool)")
    batch_wait_timeout_s: float = _limit(0.0, "seconds an idle pool waits for more requests before its first step")
    max_loaded_models: int = _limit(3, "models a replica keeps loaded besides the one requests naming none get "
                                       "(least recently used out)")
    max_guidance: float = _limit(20.0, "largest |guidance|")
    max_first_pose_bytes: int = _limit(8 << 20, "decoded size of a first_pose (or /v1/correct pose) .pose file")
    max_body_bytes: int = _limit(12 << 20, "size of a request body, larger: 413 (a base64 first_pose is 4/3 of "
                                           "its file)")
    request_timeout_s: float = _limit(60.0, "seconds a request may take, longer: 504")
    body_timeout_s: float = _limit(10.0, "seconds a request's body may take to arrive, longer: 408 (a slow upload "
                                         "holds no place in a batch, and not for long)")
    # how many requests a replica handles at once: reading bodies and waiting for their batch are
    # cheap awaits (the refinement itself is one step at a time), so this is far above a batch, and
    # /healthz, which shares the replica with them, is not starved by slow clients
    max_ongoing_requests: int = _limit(1024, "requests a replica handles at once (waiting included)")
    cors_origins: str = _limit("", "comma-separated origins browsers may call from (*: any), e.g. "
                                   "https://app.example; empty: none")
    auth_token_file: str = _limit("", f"file holding the bearer token (else ${TOKEN_ENV}); required beyond "
                                      "loopback")
    device: str = _limit("auto", "auto (CUDA when the replica has a GPU), cpu or cuda[:N]")
    threads: int = _limit(0, "CPU threads of the replica's torch (0: every core of the machine)")
    # turning it off moved throughput no more than run-to-run noise (bench/serve_load.py, docs/serving.md)
    access_log: bool = _limit(True, "Serve's line per request in the proxy's and the replica's logs")

    def __post_init__(self):
        for name in ("max_text_length", "max_spoken_text_length", "max_signs", "max_frames", "max_steps",
                     "max_step_frames", "max_batch_size", "max_first_pose_bytes", "max_body_bytes",
                     "max_loaded_models", "max_ongoing_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve config: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.batch_wait_timeout_s <= 10:
            raise ValueError(f"serve config: batch_wait_timeout_s must be in [0, 10], got {self.batch_wait_timeout_s}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"serve config: request_timeout_s must be > 0, got {self.request_timeout_s}")
        if not self.body_timeout_s > 0:
            raise ValueError(f"serve config: body_timeout_s must be > 0, got {self.body_timeout_s}")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(f"serve config: max_ongoing_requests ({self.max_ongoing_requests}) must be at least "
                             f"max_batch_size ({self.max_batch_size}), or batches never fill")
        if not self.max_guidance >= 0:
            raise ValueError(f"serve config: max_guidance must be >= 0, got {self.max_guidance}")
        if self.threads < 0:
            raise ValueError(f"serve config: threads must be >= 0, got {self.threads}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"serve config: device must be auto, cpu or cuda[:N], got {self.device!r}")

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> "ServeConfig":
        """Typed config from plain args (`serve run … key=value` passes every value as a string)."""
        return from_dict(cls, args, coerce_strings=True, what="serve config", also_known=APP_ARGS)

    @staticmethod
    def help(name: str) -> str:
        """What a field limits, as its `t2p serve` flag says."""
        return next(f.metadata["help"] for f in fields(ServeConfig) if f.name == name)

    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    def for_model(self, model: T2PModel) -> "ServeConfig":
        """These limits, capped by what the model itself accepts."""
        return replace(self, max_frames=min(self.max_frames, model.config.max_frames),
                       max_steps=min(self.max_steps, model.schedule_config.max_steps))

    def torch_device(self) -> str:
        if self.device == "auto":
            import torch
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


def resolve_path(value: str | os.PathLike) -> Path:
    """A path as given, a relative one read from the working directory."""
    return Path(value).expanduser().absolute()


def resolve_model_dir(value: str | os.PathLike | None) -> Path:
    """The model folder: `value`, else $T2P_MODEL, else runs/default/best (what the README's main job
    trains), relative to the working directory."""
    chosen = value or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    path = resolve_path(chosen)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        source = "argument" if value else (f"${MODEL_ENV}" if os.environ.get(MODEL_ENV) else "default")
        raise FileNotFoundError(f"model folder {path} ({source}) is not a t2p model (needs {CONFIG_FILE} and "
                                f"{WEIGHTS_FILE}); train one with `t2p quickstart`, or point model / --model / "
                                f"${MODEL_ENV} at one")
    return path


def resolve_lexicon_dir(value: str | os.PathLike) -> Path:
    """A spoken-to-signed lexicon folder (its index.csv), relative to the working directory."""
    path = resolve_path(value)
    if not (path / "index.csv").is_file():
        raise FileNotFoundError(f"lexicon {path} has no index.csv (the spoken-to-signed lexicon format)")
    return path


def resolve_models(model: str | None, models: str | Mapping[str, str] | None,
                   default_model: str | None = None) -> tuple[dict[str, str], str]:
    """{name: model folder} and the default's name: `models` by name ({name: folder}, or
    "name=folder,name=folder" as `serve run` passes it), or the one `model` (see
    `resolve_model_dir`) named "default"."""
    if model and models:
        raise ValueError("give model (one folder) or models (several, by name), not both")
    if not models:
        return {DEFAULT_MODEL_NAME: str(resolve_model_dir(model))}, default_model or DEFAULT_MODEL_NAME
    if isinstance(models, str):
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


@dataclass
class ServedModel:
    """A model a replica has loaded, by the name requests pick it with, and the limits that apply to it."""
    name: str
    model: T2PModel
    limits: ServeConfig  # the server's, capped by what the model accepts
