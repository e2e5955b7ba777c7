"""The model: text encoder, refiner, length predictor and first-pose correction.

One `ModelConfig` holds every hyperparameter and everything needed to use the model (vocabulary,
skeleton, normaliser statistics, neutral first pose, fps). `save(dir)` writes `model.safetensors`
+ `config.json`; `load(dir)` rebuilds the exact model from those two files, strictly, without
unpickling anything.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from t2p.config import from_dict, written_whole
from t2p.notation import SignText, Vocabulary
from t2p.pose import Normalization, Skeleton
from t2p.schedule import RefinementSchedule, ScheduleConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 4  # 2: presence head, length from text tokens and starting pose; 3: known frames (inpainting);
#                    4: the length predictor reads the symbol count


@dataclass
class ModelConfig:
    vocabulary: list[str]
    skeleton: dict
    d_model: int = 128
    heads: int = 4
    text_layers: int = 2
    refiner_layers: int = 4
    ff_mult: int = 4
    dropout: float = 0.1
    max_frames: int = 256
    max_text_tokens: int = 128
    fps: float = 25.0
    default_notation: str = "text"
    # the notations of the texts trained on: a text in another one meets embeddings never trained
    # and is refused (`check_notation`). Empty: not recorded (model folders from before), none refused.
    notations: list[str] = field(default_factory=list)
    # normaliser statistics over the training data, per joint and dim (flattened joints*dims)
    pose_mean: list[float] | None = None
    pose_std: list[float] | None = None
    # the mean first frame of the training data: the default starting pose
    neutral_pose: list[float] | None = None
    # mean log-length of the training data: the length predictor's prior
    log_length_prior: float = math.log(25.0)
    # where outputs without a first pose are written (the training data's mean normalisation)
    output_normalization: dict = field(default_factory=lambda: {"center": [250.0, 250.0, 0.0], "scale": 0.005})
    output_canvas: list[int] = field(default_factory=lambda: [500, 500, 0])
    # language ("" for none) -> the texts trained on: a gloss outside them is fingerspelled when composing
    known_texts: dict[str, list[str]] = field(default_factory=dict)
    # the refiner sees and predicts each finger joint as its offset from its wrist, in hand sizes,
    # instead of in body coordinates: there a hand is 21 points that must each follow the wrist,
    # and averaged over where the wrist may be they gave the same small closed hand for every
    # letter (docs/quality.md, Round III). The wrist itself stays in body coordinates.
    hand_relative: bool = True

    def __post_init__(self):
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")
        if self.max_frames < 1 or self.max_text_tokens < 2:
            raise ValueError("max_frames must be >= 1 and max_text_tokens >= 2")
        if self.notations and self.default_notation not in self.notations:
            raise ValueError(f"default_notation {self.default_notation!r} is not among the notations trained on "
                             f"({', '.join(self.notations)})")
        size = self.num_joints * self.dims
        for name in ("pose_mean", "pose_std", "neutral_pose"):
            value = getattr(self, name)
            if value is not None and len(value) != size:
                raise ValueError(f"{name} has {len(value)} values, the skeleton needs {size}")

    def build_skeleton(self) -> Skeleton:
        """The `Skeleton` that the stored `skeleton` dict describes."""
        return Skeleton.from_dict(self.skeleton)

    @property
    def num_joints(self) -> int:
        return sum(len(c["points"]) for c in self.skeleton["components"])

    @property
    def dims(self) -> int:
        return int(self.skeleton["dims"])

    def check_notation(self, notation: str) -> None:
        """Raise ValueError for a text in a notation this model was not trained on."""
        if self.notations and notation not in self.notations:
            raise ValueError(f"this model was trained on {' and '.join(self.notations)} only; it does not take "
                             f"{notation} (its symbols were never trained)")

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return from_dict(cls, data, what="model config")


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) positions."""
    # positions: (...,) -> (..., dim)
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / half)
    angles = positions.float().unsqueeze(-1) * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _encoder(config: ModelConfig, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(config.d_model, config.heads, config.d_model * config.ff_mult,
                                       config.dropout, batch_first=True, norm_first=True, activation="gelu")
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


@dataclass
class TextEncoding:
    """The encoded text, computed once per request and reused at every refinement step."""
    states: torch.Tensor  # (batch, tokens, d_model)
    mask: torch.Tensor    # (batch, tokens) True = real token
    tokens: torch.Tensor | None = None  # (batch, tokens) the ids encoded: the length predictor reads them


def pad_tokens(token_ids: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of token ids -> (tokens, mask), both (batch, longest)."""
    longest = max(len(ids) for ids in token_ids)
    tokens = torch.full((len(token_ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), longest), dtype=torch.bool)
    for i, ids in enumerate(token_ids):
        tokens[i, :len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
        mask[i, :len(ids)] = True
    return tokens, mask


class TextEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.d_model = config.d_model
        self.embedding = nn.Embedding(len(config.vocabulary), config.d_model, padding_idx=0)
        self.encoder = _encoder(config, config.text_layers)
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> TextEncoding:
        # tokens, mask: (batch, tokens)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        states = self.embedding(tokens) * math.sqrt(self.d_model) + sinusoidal(positions, self.d_model)
        states = self.norm(self.encoder(states, src_key_padding_mask=~mask))
        return TextEncoding(states, mask, tokens)


class LengthPredictor(nn.Module):
    """A Laplace distribution over log-length (location, log b^2 of its scale b) from the text's tokens and
    the starting pose (where the hands start tells how far they have to go).

    It has its own bag of token embeddings rather than reading the text encoder's states: trained
    on those, the length loss dominated the encoder's gradients (50x the reconstruction's at the
    end of training), and detached from them it found the language (which sets most of a
    recording's length) less well than a per-language median does (docs/quality.md)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.prior = config.log_length_prior
        self.tokens_in = nn.EmbeddingBag(len(config.vocabulary), config.d_model, mode="sum")
        self.start_in = nn.Linear(config.num_joints * (config.dims + 1), config.d_model)
        # how many symbols the text has: the mean of the token embeddings hides it, and it tells a
        # doubled letter (Irish "bb", 14 frames) from a single one (29), also for unseen characters
        self.count_in = nn.Linear(1, config.d_model)
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(config.d_model, config.d_model), nn.GELU())
        self.location_out = nn.Linear(config.d_model, 1)
        self.spread_out = nn.Linear(config.d_model, 1)
        for layer in (self.location_out, self.spread_out):  # starts at the prior
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, text: TextEncoding, symbols: torch.Tensor, start: torch.Tensor,
                start_observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # text.tokens: (batch, tokens); symbols: (batch,) symbol count; start: (batch, joints, dims)
        # standardised; start_observed: (batch, joints)
        weights = text.mask.float()
        tokens = self.tokens_in(text.tokens, per_sample_weights=weights / weights.sum(1, keepdim=True).clamp(min=1))  # the mean
        features = torch.cat([(start * start_observed.unsqueeze(-1)).flatten(1), start_observed], dim=-1)
        count = self.count_in(torch.log1p(symbols.float()).unsqueeze(-1))
        hidden = self.mlp(tokens + count + self.start_in(features))
        # the spread reads the features without training them: its NLL gradients (scaled by
        # 1/spread) otherwise swamp the location's in the shared layers and the length stays at
        # the prior (measured: training-set MAE 4.07 frames, a constant gives 4.1)
        # log b^2, b the Laplace scale of the log-length (half of it is log b)
        log_squared_scale = self.spread_out(hidden.detach()).squeeze(-1)
        return self.location_out(hidden).squeeze(-1) + self.prior, log_squared_scale


class FirstPoseCorrector(nn.Module):
    """Fills the missing keypoints of a starting pose; observed keypoints are kept as they are."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        size = config.num_joints * config.dims
        hidden = 2 * config.d_model
        self.mlp = nn.Sequential(nn.Linear(size + config.num_joints, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, size))

    def forward(self, pose: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
        # pose: (batch, joints, dims) standardised; confidence: (batch, joints)
        observed = (confidence > 0).float()
        features = torch.cat([(pose * observed.unsqueeze(-1)).flatten(1), observed], dim=-1)
        return self.mlp(features).view_as(pose)


@dataclass
class Refined:
    """One refinement: the predicted clean sequence and, per joint and frame, whether it is there."""
    poses: torch.Tensor            # (batch, frames, joints, dims)
    presence_logits: torch.Tensor  # (batch, frames, joints); > 0: the joint is there (e.g. a hand in view)


@dataclass
class Known:
    """Values of the sequence that are given (transition contexts, a recording's observed values)."""
    values: torch.Tensor  # (batch, frames, joints, dims); anything where not known
    mask: torch.Tensor    # (batch, frames, joints) bool, True = known


def interpolate_known(values: torch.Tensor, mask: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """The starting sequence x_T where some values are known: each joint linear in time between the
    frames where it is known (held before the first and after the last), and `fallback` (the
    starting pose) where it is never known. A gap in a recording, or the transition between two
    signs, then starts from a straight path rather than from the first pose, which put a jump
    back to the first pose at every known frame; the model refines the path."""
    # values: (batch, frames, joints, dims); mask: (batch, frames, joints) bool; fallback: (batch, joints, dims)
    batch, frames, joints, dims = values.shape
    index = torch.arange(frames, device=values.device).view(1, frames, 1).expand(batch, frames, joints)
    previous = torch.where(mask, index, -1).cummax(dim=1).values                       # last known frame <= f
    following = torch.where(mask, index, frames).flip(1).cummin(dim=1).values.flip(1)  # first known frame >= f

    def at(frame_index: torch.Tensor) -> torch.Tensor:
        return values.gather(1, frame_index.clamp(0, frames - 1).unsqueeze(-1).expand(-1, -1, -1, dims))

    before, after = at(previous), at(following)
    has_before, has_after = (previous >= 0).unsqueeze(-1), (following < frames).unsqueeze(-1)
    weight = ((index - previous) / (following - previous).clamp(min=1)).unsqueeze(-1).to(values.dtype)
    path = torch.where(has_before & has_after, before + weight * (after - before),
                       torch.where(has_before, before, after))
    return torch.where(has_before | has_after, path, fallback.unsqueeze(1).expand_as(values))


class Refiner(nn.Module):
    """Predicts the clean sequence (and which joints are present) from x_t, the starting pose, the
    step's beta, the text and, where some values are already known, those values."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        size = config.num_joints * config.dims
        self.d_model = config.d_model
        # per frame: x_t, the starting pose, the known values (0 where unknown) and the known mask
        self.frames_in = nn.Linear(3 * size + config.num_joints, config.d_model)
        self.step = nn.Sequential(nn.Linear(config.d_model, config.d_model), nn.GELU(),
                                  nn.Linear(config.d_model, config.d_model))
        self.text_in = nn.Linear(config.d_model, config.d_model)
        self.type_embedding = nn.Embedding(3, config.d_model)  # step token, text, frames
        self.encoder = _encoder(config, config.refiner_layers)
        self.norm = nn.LayerNorm(config.d_model)
        self.frames_out = nn.Linear(config.d_model, size)
        self.presence_out = nn.Linear(config.d_model, config.num_joints)
        # starts as the identity (x0_hat = x_t) with every joint present: the static baseline,
        # improved from there
        nn.init.zeros_(self.frames_out.weight)
        nn.init.zeros_(self.frames_out.bias)
        nn.init.zeros_(self.presence_out.weight)
        nn.init.constant_(self.presence_out.bias, 3.0)

    def forward(self, x_t: torch.Tensor, start: torch.Tensor, beta: torch.Tensor,
                text: TextEncoding, frame_mask: torch.Tensor, known: Known | None = None) -> Refined:
        # x_t: (batch, frames, joints, dims) standardised; start: (batch, joints, dims); beta: (batch,)
        batch, frames, joints, dims = x_t.shape
        start_frames = start.unsqueeze(1).expand(-1, frames, -1, -1)
        if known is None:
            known_values, known_mask = torch.zeros_like(x_t), x_t.new_zeros(batch, frames, joints)
        else:
            known_mask = known.mask.to(x_t.dtype)
            known_values = known.values * known_mask.unsqueeze(-1)
        features = torch.cat([torch.cat([x_t, start_frames, known_values], dim=-1).flatten(2), known_mask], dim=-1)
        frame_states = self.frames_in(features)  # (batch, frames, d)
        step = self.step(sinusoidal(beta * 1000, self.d_model)).unsqueeze(1)              # (batch, 1, d)
        positions = torch.arange(frames, device=x_t.device)
        frame_states = frame_states + sinusoidal(positions, self.d_model) + step + self.type_embedding.weight[2]
        text_states = self.text_in(text.states) + self.type_embedding.weight[1]
        sequence = torch.cat([step + self.type_embedding.weight[0], text_states, frame_states], dim=1)
        keep = torch.cat([torch.ones_like(frame_mask[:, :1]), text.mask, frame_mask], dim=1)
        states = self.norm(self.encoder(sequence, src_key_padding_mask=~keep)[:, 1 + text_states.shape[1]:])
        delta = self.frames_out(states).view(batch, frames, joints, dims)
        return Refined(x_t + delta, self.presence_out(states))


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
        unknown = text.tokens == self.vocabulary.unknown_id  # an unseen character is still a symbol
        symbols = ((self.symbol_tokens[text.tokens] | unknown) & text.mask).sum(1)
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

    # --- disk ----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        # the weights are in place before the config that announces them
        with written_whole(directory / CONFIG_FILE) as config, written_whole(directory / WEIGHTS_FILE) as weights:
            save_file(state, str(weights))
            config.write_text(json.dumps({"t2p_format": FORMAT_VERSION, "model": asdict(self.config),
                                          "schedule": self.schedule_config.to_dict()}, ensure_ascii=False, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "T2PModel":
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{directory} is not a t2p model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        saved = json.loads((directory / CONFIG_FILE).read_text())
        unknown = set(saved) - {"t2p_format", "model", "schedule"}
        if unknown:
            raise ValueError(f"{directory / CONFIG_FILE}: unknown keys {sorted(unknown)}")
        if saved.get("t2p_format") != FORMAT_VERSION:
            raise ValueError(f"{directory}: model folder format {saved.get('t2p_format')!r}, this t2p reads format "
                             f"{FORMAT_VERSION}; retrain the model with this version (t2p train)")
        model = cls(ModelConfig.from_dict(saved["model"]),
                    from_dict(ScheduleConfig, saved["schedule"], what="schedule config"))
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
        return model.to(device).eval()


def _hand_frames(skeleton: Skeleton, pose_mean: torch.Tensor) -> tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor]:
    """(finger joint, its wrist) for every hand, each finger joint's mean offset from the wrist and
    the hand's size (the mean length of those offsets), from the mean pose."""
    # pose_mean: (joints, dims)
    pairs = [(joint, joints[0]) for joints in skeleton.hands().values() for joint in joints[1:]]
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
