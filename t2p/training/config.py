"""The configs of training, one per concern: `TrainConfig` (the optimiser, the losses' weights, how
examples are started and noised), `TrainingJob` (a run: its data, workers, validation and where it
is written; saved as the run's job.json), and `route_settings`, which sends `--set key=value` to the
config that owns the key. At the Ray boundary they are plain dicts (`to_dict` / `from_dict`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Collection

from t2p.config import from_dict, typed_fields
from t2p.model import ModelConfig, ScheduleConfig

# what validation reports that a run (its best checkpoint, its saved steps) and a sweep can be
# selected on, by `t2p.training.validation.validation_metrics`'s names; lower is better
SELECTION_METRICS = {
    "val_dtw_mje": "DTW-MJE from the reference's own first pose (the seed's and Ham2Pose's protocol)",
    "val_neutral_dtw_mje": "DTW-MJE from the neutral start (what t2p generate without --first-pose gives)",
    "val_neutral_handshape": "handshape distance from the neutral start (the fingers' joint angles)",
}
DEFAULT_SELECTION = "val_dtw_mje"


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    text_dropout: float = 0.1      # share of examples trained without text, for guidance
    # the starts users give, instead of the reference's own first frame (which shows the handshape,
    # so copying it was the cheapest solution and the text was ignored; docs/quality.md): shares of
    # examples started from the neutral pose, from another recording's first frame, and from another
    # recording's last frame (the previous sign of a composition)
    neutral_start: float = 0.2
    other_start: float = 0.2
    last_frame_start: float = 0.2
    unknown_symbols: float = 0.1   # share of text symbols replaced by <unk>: unseen characters still mean "a sign"
    # the same for the length predictor, which learns more from the language and the symbol count
    # than from which letter it is: held-out letters are unseen in their language (docs/quality.md)
    length_unknown_symbols: float = 0.5
    inpainting: float = 0.3        # share of examples given some of their values (ends, dropped frames, a lost hand)
    reconstruction_weight: float = 1.0
    presence_weight: float = 0.1
    length_weight: float = 0.1
    smoothness_weight: float = 0.5
    # the fingers relative to their wrist, in hand sizes (`objective.hand_shape_loss`): a wrong
    # finger costs as much as a wrong wrist, where in body coordinates a finger is a tenth of
    # the spread all joints share (docs/quality.md, Round III)
    hand_weight: float = 1.0
    # the fingers' joint angles (`objective.hand_angle_loss`), what the handshape metric compares:
    # scored on positions alone, even 60 letters seen 320 times each kept one generic hand; 3
    # made the hands closer still but pulled the arm's path 6-9% off (docs/quality.md, Round IV)
    hand_angle_weight: float = 1.5
    first_pose_weight: float = 0.1
    training_noise: float = 0.01   # std of the small Gaussian noise added to x_t
    # share of examples at beta = 1 exactly: the first step of every schedule, where only the text
    # and the starting pose say what to draw (the rest are spread over the schedule); 0.5 against
    # 0.25 brought the held-out hands closer (docs/quality.md, Round IV)
    first_step_share: float = 0.5
    # where the reconstruction is scored: "body" (every joint standardised in body coordinates, so
    # a hand's place weighs as much as its 21 joints, as DTW-MJE weighs it) or "refiner" (the
    # model's own space, `T2PModel.standardize`: with wrist-relative fingers the wrist was one
    # joint in 50 and the arm's path fell behind, DTW-MJE 0.23 against 0.15 on validation)
    reconstruction_space: str = "body"
    ema_decay: float = 0.95        # weight average validated and exported by `t2p train` (0: the raw weights)
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not all(0 <= value <= 1 for value in (self.text_dropout, self.unknown_symbols, self.length_unknown_symbols,
                                                 self.inpainting, self.neutral_start, self.other_start,
                                                 self.last_frame_start)):
            raise ValueError("text_dropout, unknown_symbols, length_unknown_symbols, inpainting and the start shares "
                             "must be in [0, 1]")
        if self.neutral_start + self.other_start + self.last_frame_start > 1:
            raise ValueError("neutral_start + other_start + last_frame_start must be at most 1 (the rest start from "
                             "their own first frame)")
        if self.reconstruction_space not in ("refiner", "body"):
            raise ValueError(f"reconstruction_space must be 'refiner' or 'body', got {self.reconstruction_space!r}")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if not 0 <= self.ema_decay < 1:
            raise ValueError("ema_decay must be in [0, 1)")
        if self.training_noise < 0:
            raise ValueError("training_noise must be >= 0")
        if not 0 <= self.first_step_share <= 1:
            raise ValueError(f"first_step_share must be in [0, 1], got {self.first_step_share}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return from_dict(cls, data, what="training config")


@dataclass
class TrainingJob:
    """Everything a training run needs; saved as job.json in the run folder."""
    data: str
    out: str
    workers: int = 1
    gpu: bool = False
    cpus_per_worker: float = 1.0
    model: dict = field(default_factory=dict)     # ModelConfig overrides (d_model, heads, ...)
    train: dict = field(default_factory=dict)     # TrainConfig fields
    schedule: dict = field(default_factory=dict)  # ScheduleConfig fields
    validation_items: int = 64                    # validation items scored (evenly spaced over the split)
    validate_every: int = 0                       # epochs between validations; 0: about 20 in a run
    calibrate: bool = True                        # after training, save the best-measured steps and guidance
    calibration_guidance: list = field(default_factory=lambda: [1.0, 2.0])  # the guidance scales calibration tries
    # the validation metric the best checkpoint, the saved steps and a sweep's best trial are chosen
    # on: one of SELECTION_METRICS
    select_on: str = DEFAULT_SELECTION
    max_failures: int = 1                         # worker failures survived by restarting from the last checkpoint
    # a worker keeps its decoded rows in memory after the first epoch when they take at most this
    # many MB, and shuffles them itself instead of reading its shard again (0: stream every epoch)
    cache_mb: int = 1024
    wandb: bool = False
    name: str = "ray"                             # Ray's run name inside `out`
    # a model folder whose weights start a new run where names and shapes match, token tables by
    # vocabulary entry (`T2PModel.start_from`): fine-tuning on a new corpus; "" starts from scratch
    init_from: str = ""

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"training job workers: must be >= 1, got {self.workers}")
        if self.max_failures < 0:
            raise ValueError(f"training job max_failures: must be >= 0, got {self.max_failures}")
        if self.validate_every < 0 or self.validation_items < 1:
            raise ValueError("training job validate_every must be >= 0 and validation_items >= 1")
        if not self.calibration_guidance or any(not float(scale) >= 1 for scale in self.calibration_guidance):
            raise ValueError(f"training job calibration_guidance: scales >= 1, got {self.calibration_guidance}")
        if self.cache_mb < 0:
            raise ValueError(f"training job cache_mb: must be >= 0, got {self.cache_mb}")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"training job cpus_per_worker: must be > 0, got {self.cpus_per_worker}")
        if self.select_on not in SELECTION_METRICS:
            raise ValueError(f"training job select_on: {self.select_on!r} is not one of {', '.join(SELECTION_METRICS)}")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_absolute_paths(self) -> "TrainingJob":
        """The job with its folders (data, out, init_from) absolute: Ray workers and Tune trials
        run elsewhere than the command."""
        return replace(self, data=str(Path(self.data).resolve()), out=str(Path(self.out).resolve()),
                       init_from=str(Path(self.init_from).resolve()) if self.init_from else "")

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingJob":
        return from_dict(cls, data, what="training job")

    def validation_epochs(self, epochs: int) -> list[int]:
        """The epochs (0-based) after which a run validates and checkpoints: every `validate_every`
        (default: about 20 in a run) and always the last. ASHA counts a trial's progress in these."""
        every = self.validate_every or max(1, epochs // 20)
        return [epoch for epoch in range(epochs) if (epoch + 1) % every == 0 or epoch == epochs - 1]

    # the fields that say which run a job is, in the order a refusal lists them; `batch_size` lives
    # in the `train` settings but is a flag of its own
    IDENTITY_FIELDS = ("data", "workers", "gpu", "cpus_per_worker", "max_failures", "validation_items",
                       "validate_every", "wandb", "batch_size", "select_on", "init_from")

    def changed_settings(self, asked: "TrainingJob", given: Collection[str] | None = None) -> list[str]:
        """Whether `asked` is the run this (saved) job is: the names in `IDENTITY_FIELDS` whose value
        differs, then "set" when a model, training or schedule setting does (epochs may change: a
        run can be extended).

        `given`: the fields the user gave; the rest keep the saved value and are not compared, and
        only the settings `asked` names count (continuing a run). None: every field and every
        setting of either job counts (the same command run again into a folder that holds a run)."""
        saved, wanted = self.to_dict(), asked.to_dict()
        parts = ("model", "train", "schedule")
        counts = (lambda name: True) if given is None else (lambda name: name in given)
        settings = {key for part in parts for key in wanted[part]}
        if given is None:
            settings |= {key for part in parts for key in saved[part]}
        settings -= {"epochs", "batch_size"}  # a run may be extended; batch_size is compared as a field
        set_changed = any(wanted[part].get(key) != saved[part].get(key) for key in settings for part in parts)
        changed = [name for name in self.IDENTITY_FIELDS
                   if counts(name) and _identity_value(wanted, name) != _identity_value(saved, name)]
        return changed + (["set"] if set_changed else [])


def _identity_value(job: dict, name: str):
    if name == "batch_size":
        return job["train"].get("batch_size")
    if name in ("data", "init_from") and job.get(name):  # the same folder however it was written
        return str(Path(job[name]).resolve())
    return job[name]


def route_settings(settings: dict[str, str]) -> tuple[dict, dict, dict]:
    """`--set key=value` pairs -> (model, train, schedule) overrides, typed by the config fields."""
    targets = [(ModelConfig, {}), (TrainConfig, {}), (ScheduleConfig, {})]
    for key, raw in settings.items():
        for config_class, chosen in targets:
            known = {f.name: f for f in fields(config_class)}
            if key in known and key not in ("vocabulary", "skeleton"):
                chosen[key] = raw
                break
        else:
            names = sorted({f.name for c, _ in targets for f in fields(c)} - {"vocabulary", "skeleton"})
            raise ValueError(f"unknown setting {key!r}; known settings: {', '.join(names)}")
    model, train, schedule = (typed_fields(config_class, chosen, coerce_strings=True, what="setting")
                              for config_class, chosen in targets)
    return model, train, schedule
