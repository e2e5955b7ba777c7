"""The networks inside the model: the text encoder, the length predictor, the first-pose corrector
and the refiner, with the small types they pass (`TextEncoding`, `Known`, `Refined`).

Each takes and returns tensors in the refiner's standardised space; `T2PModel` (`t2p.model.model`)
owns them and does the standardising.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from t2p.model.config import ModelConfig


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
    tokens: torch.Tensor | None = None  # (batch, tokens, parts) the ids encoded: the length predictor reads them


def pad_tokens(token_ids: Sequence[Sequence[Sequence[int] | int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per text, per token, the ids of its parts (`Vocabulary.encode`; a bare id is a token of one
    part) -> tokens (batch, longest, most parts), padded with `pad_id`, and mask (batch, longest)."""
    texts = [[(token,) if isinstance(token, int) else tuple(token) for token in ids] for ids in token_ids]
    longest = max(len(ids) for ids in texts)
    widest = max((len(token) for ids in texts for token in ids), default=1)
    tokens = torch.full((len(texts), longest, widest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(texts), longest), dtype=torch.bool)
    for i, ids in enumerate(texts):
        for j, token in enumerate(ids):
            tokens[i, j, :len(token)] = torch.as_tensor(token, dtype=torch.long)
        mask[i, :len(ids)] = True
    return tokens, mask


def embed_parts(embedding: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
    """Each token's embedding: the sum of its parts' (the padding part's is zero)."""
    # tokens: (batch, tokens, parts) -> (batch, tokens, d_model)
    return embedding(tokens).sum(dim=2)


class TextEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.d_model = config.d_model
        self.embedding = nn.Embedding(len(config.vocabulary), config.d_model, padding_idx=0)
        self.encoder = _encoder(config, config.text_layers)
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> TextEncoding:
        # tokens: (batch, tokens, parts); mask: (batch, tokens)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        states = embed_parts(self.embedding, tokens) * math.sqrt(self.d_model) + sinusoidal(positions, self.d_model)
        states = self.norm(self.encoder(states, src_key_padding_mask=~mask))
        return TextEncoding(states, mask, tokens)


class LengthPredictor(nn.Module):
    """A Laplace distribution over log-length (location, log b^2 of its scale b) from the text's
    tokens, around its language's mean log-length (the training data's, where the language is
    known). Not from the starting pose: a sign lasts as long wherever the hands start, and models
    that read it (before format 6, `length_reads_start`) predicted from a reference's first frame
    1.27x the error of a constant (docs/quality.md, Round V).

    It has its own bag of token embeddings rather than reading the text encoder's states: trained
    on those, the length loss dominated the encoder's gradients (50x the reconstruction's at the
    end of training), and detached from them it found the language (which sets most of a
    recording's length) less well than a per-language median does (docs/quality.md)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.prior = config.log_length_prior
        # each language's mean log-length, on its `lang:` entry: the prior of a text in that language
        offsets = [config.language_log_lengths.get(entry[len("lang:"):], self.prior) - self.prior
                   if entry.startswith("lang:") else 0.0 for entry in config.vocabulary]
        self.register_buffer("language_offset", torch.tensor(offsets, dtype=torch.float32), persistent=False)
        self.tokens_in = nn.EmbeddingBag(len(config.vocabulary), config.d_model, mode="sum")
        # models before format 6 read the starting pose too (`ModelConfig.length_reads_start`)
        self.start_in = nn.Linear(config.num_joints * (config.dims + 1), config.d_model) if config.length_reads_start else None
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
        # text.tokens: (batch, tokens, parts); symbols: (batch,) symbol count; start: (batch, joints, dims)
        # standardised; start_observed: (batch, joints)
        # the mean over tokens of each token's parts summed: a token's first part is always there
        # (<pad> of a token of an old vocabulary has a weight), its padding parts weigh nothing
        share = text.mask.float() / text.mask.float().sum(1, keepdim=True).clamp(min=1)
        present = torch.cat([torch.ones_like(text.tokens[..., :1]), text.tokens[..., 1:] != 0], dim=-1).float()
        weights = share.unsqueeze(-1) * present
        tokens = self.tokens_in(text.tokens.flatten(1), per_sample_weights=weights.flatten(1))
        count = self.count_in(torch.log1p(symbols.float()).unsqueeze(-1))
        hidden = tokens + count
        if self.start_in is not None:
            features = torch.cat([(start * start_observed.unsqueeze(-1)).flatten(1), start_observed], dim=-1)
            hidden = hidden + self.start_in(features)
        hidden = self.mlp(hidden)
        # the spread reads the features without training them: its NLL gradients (scaled by
        # 1/spread) otherwise swamp the location's in the shared layers and the length stays at
        # the prior (measured: training-set MAE 4.07 frames, a constant gives 4.1)
        # log b^2, b the Laplace scale of the log-length (half of it is log b)
        log_squared_scale = self.spread_out(hidden.detach()).squeeze(-1)
        prior = self.prior + (self.language_offset[text.tokens[..., 0]] * text.mask).sum(1)
        return self.location_out(hidden).squeeze(-1) + prior, log_squared_scale


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
