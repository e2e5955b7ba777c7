"""`ModelConfig`: every hyperparameter of the model and everything needed to use it (vocabulary,
skeleton, notations, normaliser statistics, neutral first pose, frame rate, output space), saved
as the "model" part of a model folder's config.json."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from t2p.config import from_dict
from t2p.pose import MAX_FRAMES, Skeleton


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
    max_frames: int = MAX_FRAMES
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
    # mean log-length of the training data: the length predictor's prior; and of each language's
    # (the language sets most of a recording's length): the prior of a text in that language
    log_length_prior: float = math.log(25.0)
    language_log_lengths: dict[str, float] = field(default_factory=dict)
    # whether the length predictor also reads the starting pose (models before format 6 did: the
    # length then changed with where the hands start, which it should not, docs/quality.md Round V)
    length_reads_start: bool = False
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
