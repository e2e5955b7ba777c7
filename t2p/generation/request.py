"""`SignRequest`: one sequence to generate, the one shape a request has from the CLI, evaluation,
composition, correction and Serve's batches down to the refinement loop."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from t2p.notation import SignText
from t2p.pose import Keypoints

if TYPE_CHECKING:
    from t2p.model import T2PModel


@dataclass(frozen=True, eq=False)
class SignRequest:
    """One sign to generate. Every setting left None takes the model's default."""
    sign: SignText | str                  # a str is text in the model's default notation; "" asks for no text
    first_pose: Keypoints | None = None   # who signs: its first frame, missing joints completed; None: the neutral pose
    steps: int | None = None              # refinement steps, each one call of the refiner
    length: int | None = None             # frames; None: predicted (with `observed`: its length)
    guidance: float | None = None         # classifier-free guidance, uncond + s * (cond - uncond); 1 = off
    observed: Keypoints | None = None     # values held fixed at every step (completing a sequence with gaps)
    max_length: int | None = None         # the most frames a predicted length may have (and the model's max_frames)
    keep_proportions: bool = False        # bones held near their length in the first pose (`keep_bone_lengths`)
    length_temperature: float = 0.0       # > 0: the length is sampled, with this much of the predicted spread
    seed: int | None = None               # makes a sampled length reproducible (each request has its own generator)

    def __post_init__(self):
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.length is not None and self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.guidance is not None and not math.isfinite(self.guidance):
            raise ValueError(f"guidance must be a finite number, got {self.guidance}")
        if not (math.isfinite(self.length_temperature) and self.length_temperature >= 0):
            raise ValueError(f"length_temperature must be a finite number >= 0, got {self.length_temperature}")
        if self.first_pose is not None and len(self.first_pose) == 0:
            raise ValueError("first_pose has no frames")

    def text(self, default_notation: str) -> SignText:
        """The sign as a `SignText`, a bare string read in `default_notation`."""
        return self.sign if isinstance(self.sign, SignText) else SignText(self.sign, default_notation)


# what composition and correction generate with: `t2p.generation.generate`, or Serve's batches
Generator = Callable[["T2PModel", Sequence[SignRequest]], "list[Keypoints]"]


def as_requests(items: Sequence[SignRequest | SignText | str]) -> list[SignRequest]:
    """Requests as given, a bare sign (`SignText` or text) as a request with every default."""
    return [item if isinstance(item, SignRequest) else SignRequest(item) for item in items]
