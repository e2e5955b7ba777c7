"""`T2PModel`: the text encoder, length predictor, first-pose corrector and refiner
(`t2p.model.layers`) around the refiner's standardised space, and the model folder on disk.

`save(dir)` writes `model.safetensors` + `config.json` (the `ModelConfig` and the `ScheduleConfig`
generation needs); `load(dir)` rebuilds the exact model from those two files, strictly, without
unpickling anything, and says in one line what is wrong with a folder it cannot load.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from t2p.config import from_dict, read_json, write_json, written_whole
from t2p.model.config import ModelConfig
from t2p.model.layers import (
    FirstPoseCorrector,
    Known,
    LengthPredictor,
    Refined,
    Refiner,
    TextEncoder,
    TextEncoding,
    pad_tokens,
)
from t2p.model.schedule import RefinementSchedule, ScheduleConfig
from t2p.notation import SignText, Vocabulary
from t2p.pose import Normalization, Skeleton

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 6  # 2: presence head, length from text tokens and starting pose; 3: known frames (inpainting);
#                    4: the length predictor reads the symbol count; 5: the schedule without training knobs;
#                    6: tokens as the sum of their parts (a vocabulary of parts: t2p.notation)
# the weights with a row per vocabulary entry: `start_from` copies them entry by entry
_TOKEN_TABLES = ("text_encoder.embedding.weight", "length_predictor.tokens_in.weight")
# the settings two models must share for one to start the other
_ARCHITECTURE = ("d_model", "heads", "text_layers", "refiner_layers", "ff_mult")
# format 4 saved two training knobs with the schedule; a format-4 folder is read without them
_FORMAT_4_TRAINING_KNOBS = ("training_noise", "first_step_share")


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded; the message names the file and what is wrong."""


class T2PModel(nn.Module):
    def __init__(self, config: ModelConfig, schedule: ScheduleConfig | None = None):
        super().__init__()
        self.config = config
        self.schedule_config = schedule or ScheduleConfig()
        self.vocabulary = Vocabulary(tuple(config.vocabulary))
        self.skeleton = config.build_skeleton()
        size = config.num_joints * config.dims
        shape = (config.num_joints, config.dims)
        self.register_buffer("pose_mean", _tensor(config.pose_mean, 0.0, size).view(shape), persistent=False)
        self.register_buffer("pose_std", _tensor(config.pose_std, 1.0, size).clamp(min=1e-4).view(shape),
                             persistent=False)
        self.register_buffer("neutral_pose", _tensor(config.neutral_pose, 0.0, size).view(shape), persistent=False)
        self.register_buffer("symbol_tokens", torch.tensor(self.vocabulary.symbol_mask()), persistent=False)
        wrists, offsets, reach = _hand_frames(self.skeleton, self.pose_mean) if config.hand_relative else ([], None, None)
        self.hand_joints = [joint for joint, _ in wrists]  # python lists: indexing, not weights
        self.hand_wrists = [wrist for _, wrist in wrists]
        self.register_buffer("hand_offset", offsets, persistent=False)  # (hand joints, dims) mean place from the wrist
        self.register_buffer("hand_reach", reach, persistent=False)     # (hand joints, 1) the hand's size
        self.text_encoder = TextEncoder(config)
        self.length_predictor = LengthPredictor(config)
        self.first_pose_corrector = FirstPoseCorrector(config)
        self.refiner = Refiner(config)

    @property
    def schedule(self) -> RefinementSchedule:
        return RefinementSchedule(self.schedule_config)

    @property
    def output_normalization(self) -> Normalization:
        return Normalization.from_dict(self.config.output_normalization)

    # --- the pieces generation and training call ------------------------------------------------
    def standardize(self, poses: torch.Tensor) -> torch.Tensor:
        """Positions -> the refiner's space: each joint minus its mean over the per-axis spread, and
        (with `hand_relative`) each finger joint as its offset from its wrist, in hand sizes."""
        # poses: (..., joints, dims)
        standard = (poses - self.pose_mean) / self.pose_std
        if not self.hand_joints:
            return standard
        fingers = poses[..., self.hand_joints, :] - poses[..., self.hand_wrists, :]
        standard = standard.clone()
        standard[..., self.hand_joints, :] = (fingers - self.hand_offset) / self.hand_reach
        return standard

    def destandardize(self, standard: torch.Tensor) -> torch.Tensor:
        # standard: (..., joints, dims); the wrists come back first, then the fingers from them
        poses = standard * self.pose_std + self.pose_mean
        if not self.hand_joints:
            return poses
        fingers = standard[..., self.hand_joints, :] * self.hand_reach + self.hand_offset
        poses = poses.clone()
        poses[..., self.hand_joints, :] = poses[..., self.hand_wrists, :] + fingers
        return poses

    def encode_text(self, tokens: torch.Tensor, mask: torch.Tensor) -> TextEncoding:
        if tokens.shape[1] > self.config.max_text_tokens:
            raise ValueError(f"text has {tokens.shape[1]} tokens, the model takes at most {self.config.max_text_tokens}")
        return self.text_encoder(tokens, mask)

    def encode_signs(self, signs: Sequence[SignText], device: torch.device | str | None = None) -> TextEncoding:
        for sign in signs:
            self.config.check_notation(sign.notation)
        tokens, mask = pad_tokens([self.vocabulary.encode(sign) for sign in signs])
        device = device or self.pose_mean.device
        return self.encode_text(tokens.to(device), mask.to(device))

    def predict_length(self, text: TextEncoding, start: torch.Tensor,
                       start_confidence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(location, log b^2) of the Laplace distribution of the log-length in frames (b its scale),
        given the text and the starting pose; exp(location) is the median length."""
        # start: (batch, joints, dims) shoulder-normalised; start_confidence: (batch, joints)
        first = text.tokens[..., 0]  # a token's first part is the token itself
        unknown = first == self.vocabulary.unknown_id  # an unseen character is still a symbol
        symbols = ((self.symbol_tokens[first] | unknown) & text.mask).sum(1)
        return self.length_predictor(text, symbols, self.standardize(start), (start_confidence > 0).float())

    def complete_first_pose(self, pose: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        """Fill missing keypoints of starting poses; observed ones stay exactly as given."""
        # pose: (batch, joints, dims) shoulder-normalised; confidence: (batch, joints)
        predicted = self.destandardize(self.first_pose_corrector(self.standardize(pose), confidence))
        return torch.where((confidence > 0).unsqueeze(-1), pose, predicted)

    def refine(self, x_t: torch.Tensor, start: torch.Tensor, beta: torch.Tensor, text: TextEncoding,
               frame_mask: torch.Tensor, known: Known | None = None) -> Refined:
        """One refinement: the predicted clean sequence, in shoulder-normalised space, and presence."""
        # x_t: (batch, frames, joints, dims); start: (batch, joints, dims); beta: (batch,)
        if known is not None:
            known = Known(self.standardize(known.values), known.mask)
        refined = self.refiner(self.standardize(x_t), self.standardize(start), beta, text, frame_mask, known)
        return Refined(self.destandardize(refined.poses), refined.presence_logits)

    def start_from(self, source: "T2PModel") -> dict[str, int]:
        """Copy into this (new) model every weight of `source` that has the same name and shape,
        and the rows of the token tables by vocabulary entry (a part, letter or language), so a
        model trained or pretrained on other data starts this one whatever its vocabulary.
        Returns how many tensors and entries were copied and how many tensors were left as they are
        (those of another skeleton); a ValueError if the two are not the same network."""
        differ = [f"{name} {getattr(source.config, name)} (here {getattr(self.config, name)})"
                  for name in _ARCHITECTURE if getattr(source.config, name) != getattr(self.config, name)]
        if differ:
            raise ValueError(f"the model started from has {', '.join(differ)}: train with the same sizes "
                             f"(--set {differ[0].split()[0]}=...)")
        own, theirs = self.state_dict(), source.state_dict()
        index = {entry: i for i, entry in enumerate(source.vocabulary.tokens)}
        pairs = [(i, index[entry]) for i, entry in enumerate(self.vocabulary.tokens) if entry in index]
        rows, to = (torch.tensor([pair[k] for pair in pairs], dtype=torch.long) for k in (1, 0))
        copied, entries, kept = 0, len(pairs), 0
        with torch.no_grad():
            for name, tensor in own.items():
                other = theirs.get(name)
                if name in _TOKEN_TABLES and other is not None and other.shape[1:] == tensor.shape[1:]:
                    tensor[to] = other[rows].to(tensor)
                    copied += 1
                elif other is not None and other.shape == tensor.shape and name not in _TOKEN_TABLES:
                    tensor.copy_(other)
                    copied += 1
                else:
                    kept += 1
        return {"tensors": copied, "entries": entries, "kept": kept}

    # --- disk ----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        # the weights are in place before the config that announces them
        with written_whole(directory / CONFIG_FILE) as config, written_whole(directory / WEIGHTS_FILE) as weights:
            save_file(state, str(weights))
            config.write_text(json.dumps(_saved_config(self.config, self.schedule_config), ensure_ascii=False,
                                         indent=1, allow_nan=False))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "T2PModel":
        """The model saved in `directory`; a `ModelFolderError` (a ValueError) naming the file for a
        folder that is not a model, a config that does not parse, or weights that are damaged or do
        not fit the config."""
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{directory} is not a t2p model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        config, schedule = read_model_config(directory)
        weights = directory / WEIGHTS_FILE
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as error:  # truncated, empty or not safetensors at all
            raise ModelFolderError(f"{weights}: the weights cannot be read ({error}); the file is damaged or "
                                   "incomplete: copy or export the model again") from None
        model = cls(config, schedule)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:  # missing, unexpected or differently shaped tensors
            first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
            raise ModelFolderError(f"{weights} does not fit {directory / CONFIG_FILE} ({first[:200]}): the two files "
                                   "come from different models") from None
        return model.to(device).eval()


def read_model_config(directory: str | Path) -> tuple[ModelConfig, ScheduleConfig]:
    """The configs of a model folder, without its weights; a `ModelFolderError` naming the file."""
    path = Path(directory) / CONFIG_FILE
    try:
        saved = read_json(path, "model config")
        if not isinstance(saved, dict):
            raise ValueError("expected a JSON object with t2p_format, model and schedule")
        unknown = set(saved) - {"t2p_format", "model", "schedule"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        version = saved.get("t2p_format")
        if version not in (4, 5, FORMAT_VERSION):  # 4 and 5: vocabularies of whole tokens, read as they were
            raise ValueError(f"model folder format {version!r}, this t2p reads format {FORMAT_VERSION}; retrain "
                             "the model with this version (t2p train)")
        schedule = dict(saved.get("schedule") or {})
        model = dict(saved.get("model") or {})
        if version in (4, 5):  # their length predictor read the starting pose
            model.setdefault("length_reads_start", True)
        if version == 4:
            schedule = {key: value for key, value in schedule.items() if key not in _FORMAT_4_TRAINING_KNOBS}
        return (ModelConfig.from_dict(model),
                from_dict(ScheduleConfig, schedule, what="schedule config"))
    except (ValueError, TypeError, KeyError) as error:
        message = str(error)
        raise ModelFolderError(message if str(path) in message else f"{path}: {message}") from None


def save_schedule(directory: str | Path, schedule: ScheduleConfig) -> None:
    """Give a saved model other default steps and guidance: its config.json rewritten whole, the
    weights untouched (the loaded model, if any, keeps its own)."""
    config, _ = read_model_config(directory)
    write_json(Path(directory) / CONFIG_FILE, _saved_config(config, schedule))


def _saved_config(config: ModelConfig, schedule: ScheduleConfig) -> dict:
    return {"t2p_format": FORMAT_VERSION, "model": asdict(config), "schedule": schedule.to_dict()}


def _hand_frames(skeleton: Skeleton, pose_mean: torch.Tensor) -> tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor]:
    """(finger joint, its wrist) for every hand, each finger joint's mean offset from the wrist and
    the hand's size (the mean length of those offsets), from the mean pose."""
    # pose_mean: (joints, dims)
    pairs = [(joint, hand.wrist) for hand in skeleton.hands() for joint in hand.fingers]
    if not pairs:
        return [], pose_mean.new_zeros(0, pose_mean.shape[1]), pose_mean.new_ones(0, 1)
    joints, wrists = [joint for joint, _ in pairs], [wrist for _, wrist in pairs]
    offsets = pose_mean[joints] - pose_mean[wrists]
    reach = torch.ones(len(pairs), 1)
    for wrist in set(wrists):  # one size per hand
        members = [i for i, w in enumerate(wrists) if w == wrist]
        size = float(offsets[members].norm(dim=-1).mean())
        reach[members] = size if size > 1e-6 else 1.0  # no statistics (an untrained test model): unit size
    return pairs, offsets, reach


def _tensor(values: list[float] | None, default: float, size: int) -> torch.Tensor:
    if values is None:
        return torch.full((size,), default, dtype=torch.float32)
    return torch.tensor(values, dtype=torch.float32)
