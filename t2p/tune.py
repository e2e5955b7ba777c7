"""Ray Tune sweeps over refinement-step and loss settings.

Each trial is a Tune function that builds its own `TorchTrainer` (through `run_training`), the
pattern that replaces the deprecated `Tuner(trainer)`; `TuneReportCallback` forwards every epoch's
metrics from the Train workers to Tune. The best trial's model is copied to `out/best`.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from t2p.train import TrainingJob, ensure_ray, route_settings, run_training

METRIC = "val_dtw_mje"


def default_search_space() -> dict:
    from ray import tune
    return {"steps": tune.choice([1, 3, 10]),
            "smoothness_weight": tune.loguniform(0.05, 2.0),
            "length_weight": tune.loguniform(0.01, 1.0)}


def parse_search(specs: list[str]) -> dict:
    """`key=a,b,c` (a choice) or `key=low:high` (log-uniform) -> a Tune search space."""
    from ray import tune
    space = {}
    for spec in specs:
        key, _, values = spec.partition("=")
        if not values:
            raise ValueError(f"--search expects KEY=a,b,c or KEY=low:high, got {spec!r}")
        if ":" in values:
            low, _, high = values.partition(":")
            space[key] = tune.loguniform(float(low), float(high))
        else:
            space[key] = tune.choice([_number(v) for v in values.split(",")])
        route_settings({key: str(_sample_value(space[key]))})  # fails early on unknown keys
    return space


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def _sample_value(domain):
    return domain.categories[0] if hasattr(domain, "categories") else domain.lower


def tune_trial(config: dict) -> None:
    """One Tune trial: a full Ray Train run with this trial's settings."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    job = TrainingJob.from_dict(config["job"])
    model, train, schedule = route_settings({key: str(value) for key, value in config["search"].items()})
    trial = tune.get_context().get_trial_id()
    # a swept step count or guidance is kept as the trial's model default, not re-chosen after training
    job = replace(job, out=str(Path(job.out) / "trials" / trial), model={**job.model, **model},
                  train={**job.train, **train}, schedule={**job.schedule, **schedule},
                  calibrate=job.calibrate and not {"steps", "guidance"} & set(schedule))
    run_training(job, callbacks=[TuneReportCallback()])


def run_sweep(job: TrainingJob, samples: int = 4, space: dict | None = None, max_concurrent: int = 1) -> dict:
    """Sweep `space` (default: steps and two loss weights) with `samples` trials; returns the best."""
    from ray import tune
    out = Path(job.out).resolve()
    job = replace(job, out=str(out), data=str(Path(job.data).resolve()))
    ensure_ray()
    tuner = tune.Tuner(
        # The trial function only drives; its TorchTrainer asks for the workers' CPUs itself. Any CPU
        # held here leaves less than the one CPU an actor needs to be scheduled (Ray Data's split
        # coordinator), which starves a small machine: the driver reserves memory instead.
        tune.with_resources(tune_trial, {"CPU": 0, "memory": 256 * 1024 ** 2}),
        param_space={"job": job.to_dict(), "search": space or default_search_space()},
        tune_config=tune.TuneConfig(metric=METRIC, mode="min", num_samples=samples,
                                    max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name="tune", storage_path=str(out)),
    )
    results = tuner.fit()
    best = results.get_best_result(metric=METRIC, mode="min", scope="all")
    if best.error:
        raise best.error
    trial_dir = out / "trials" / best.metrics["trial_id"]
    shutil.rmtree(out / "best", ignore_errors=True)
    shutil.copytree(trial_dir / "best", out / "best")
    summary = {"best_config": best.config["search"], "best_metrics": {k: v for k, v in best.metrics.items()
                                                                     if k.startswith(("val_", "train_", "epoch"))},
               "trials": [{"config": r.config["search"], METRIC: (r.metrics or {}).get(METRIC),
                           "error": str(r.error) if r.error else None} for r in results]}
    (out / "sweep.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
