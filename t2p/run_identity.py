"""Whether a training command asks for the run a folder already holds: the settings in which a new
training job differs from the one saved in the run's job.json.

Both jobs are plain dicts in `TrainingJob.to_dict()` form, so this module imports nothing of t2p;
it belongs with the training job (and moves there), not with the command line that calls it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Collection

# the job's own fields that say which run it is, in the order a refusal lists them; `batch_size`
# lives in the job's `train` settings but is a flag of its own
IDENTITY_FIELDS = ("data", "workers", "gpu", "cpus_per_worker", "max_failures", "validation_items",
                   "validate_every", "wandb", "batch_size")
SETTING_PARTS = ("model", "train", "schedule")  # the `--set` overrides, by the config they go to
EXTENDABLE = {"epochs", "batch_size"}  # a run may be extended; batch_size is compared as a field


def changed_settings(saved: dict, asked: dict, given: Collection[str] | None = None) -> list[str]:
    """The names in `IDENTITY_FIELDS` whose value in `asked` differs from `saved`, then "set" when a
    model, training or schedule setting does (epochs may change: a run can be extended).

    `given`: the fields the user gave; the rest keep the saved value and are not compared, and only
    the settings `asked` names count (continuing a run). None: every field and every setting of
    either job counts (the same command run again into a folder that already holds a run)."""
    counts = (lambda name: True) if given is None else (lambda name: name in given)
    settings = {key for part in SETTING_PARTS for key in asked.get(part, {})}
    if given is None:
        settings |= {key for part in SETTING_PARTS for key in saved.get(part, {})}
    settings -= EXTENDABLE
    set_changed = any(asked.get(part, {}).get(key) != saved.get(part, {}).get(key)
                      for key in settings for part in SETTING_PARTS)
    changed = [name for name in IDENTITY_FIELDS if counts(name) and _value(asked, name) != _value(saved, name)]
    return changed + (["set"] if set_changed else [])


def _value(job: dict, name: str):
    if name == "batch_size":
        return job.get("train", {}).get("batch_size")
    if name == "data":  # the same folder however it was written
        return str(Path(job["data"]).resolve())
    return job.get(name)
