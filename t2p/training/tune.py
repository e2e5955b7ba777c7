"""Ray Tune sweeps over refinement-step and loss settings.

Each trial is a Tune function that builds its own `TorchTrainer` (through `run_training`), the
pattern that replaces the deprecated `Tuner(trainer)`; `TuneReportCallback` forwards every
validation's metrics from the Train workers to Tune, and ASHA stops trailing trials early. The
best finished trial's model is copied to `out/best`.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ray.tune import Callback

from t2p.cluster import ensure_ray, verbose
from t2p.config import write_json
from t2p.training.config import TrainConfig, TrainingJob, route_settings
from t2p.training.job import run_training
from t2p.training.runs import copy_folder, write_csv


def default_search_space() -> dict:
    from ray import tune
    return {"steps": tune.choice([1, 3, 10]),
            "shape": tune.choice(["cosine", "linear"]),
            "smoothness_weight": tune.loguniform(0.05, 2.0),
            "length_weight": tune.loguniform(0.01, 1.0)}


def parse_search(specs: list[str], grid: list[str] = ()) -> dict:
    """`key=a,b,c` (a choice) or `key=low:high` (log-uniform) -> a Tune search space; each `grid`
    spec `key=a,b,c` is tried at every value (a grid search: `samples` trials per grid point)."""
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
            space[key] = tune.choice(_choices(values))
        route_settings({key: str(_sample_value(space[key]))})  # fails early on unknown keys
    for spec in grid:
        key, _, values = spec.partition("=")
        if not values or key in space:
            raise ValueError(f"--grid expects KEY=a,b,c with a KEY not also in --search, got {spec!r}")
        space[key] = tune.grid_search(_choices(values))
        route_settings({key: str(_sample_value(space[key]))})
    return space


def _choices(values: str) -> list:
    """`a,b,c` -> its values, each an int, a float or the text itself."""
    return [_number(value) for value in values.split(",")]


def _number(text: str):
    """A choice's value: an int, a float, or (e.g. a schedule shape) the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _sample_value(domain):
    """One value of a search domain: a choice's first, a range's low end, a grid's first point."""
    if isinstance(domain, dict):  # tune.grid_search is a plain {"grid_search": values}
        return domain["grid_search"][0]
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


def run_sweep(job: TrainingJob, samples: int = 4, space: dict | None = None, max_concurrent: int = 1,
              grace_period: int = 1, reduction_factor: int = 2) -> dict:
    """Sweep `space` (default: steps and two loss weights) with `samples` trials under ASHA, which stops
    trials whose validation metric (`job.select_on`, e.g. DTW-MJE from the own start, or the
    handshape from the neutral start for a sweep over hand loss weights) trails the others' at the
    same validation count.

    Writes into job.out: trials.csv (one row per trial: its settings, best metric, status),
    progress.csv (the metric of every trial at every validation), progress.png (the same, plotted),
    sweep.json, and best/ (the model of the best trial that ran to the end). Returns sweep.json."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    job = job.with_absolute_paths()  # a trial runs in its own folder
    out = Path(job.out)
    metric = job.select_on
    ensure_ray()
    # what ASHA counts: a trial's validation reports, on the run's own cadence
    validations = len(job.validation_epochs(int(job.train.get("epochs", TrainConfig().epochs))))
    if grace_period > validations:
        raise ValueError(f"--grace-period {grace_period} is more than the {validations} validations of a trial")
    tuner = tune.Tuner(
        # The trial function only drives; its TorchTrainer asks for the workers' CPUs itself. Any CPU
        # held here leaves less than the one CPU an actor needs to be scheduled (Ray Data's split
        # coordinator), which starves a small machine: the driver reserves memory instead.
        tune.with_resources(tune_trial, {"CPU": 0, "memory": 256 * 1024 ** 2}),
        param_space={"job": job.to_dict(), "search": space or default_search_space()},
        tune_config=tune.TuneConfig(metric=metric, mode="min", num_samples=samples,
                                    max_concurrent_trials=max_concurrent,
                                    # a trial's driver process is kept for the next trial: 3 s less a
                                    # trial here than a new process importing torch and Ray Train
                                    reuse_actors=True,
                                    # max_t one past the last report: ASHA stops a trial that reaches
                                    # max_t, which killed finished trials before they exported their model
                                    # (and left their workers holding the CPUs the next trial waited for)
                                    scheduler=ASHAScheduler(max_t=validations + 1, grace_period=grace_period,
                                                            reduction_factor=reduction_factor)),
        # the per-trial result files that progress.csv is read from, also where auto-loggers are off
        run_config=tune.RunConfig(name="tune", storage_path=str(out), verbose=2 if verbose() else 0,
                                  callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), TrialProgress(samples, metric)]),
    )
    results = tuner.fit()
    trials = [_trial_row(result, out, validations, metric) for result in results]
    finished = [trial for trial in trials if trial["status"] == "completed"]
    if not finished:
        errors = "; ".join(f"{t['trial_id']}: {t['error']}" for t in trials if t["error"])
        raise RuntimeError(f"no trial of the sweep finished{': ' + errors if errors else ''}")
    best = min(finished, key=lambda trial: trial[metric])
    copy_folder(out / "trials" / best["trial_id"] / "best", out / "best")
    progress = [{"trial_id": trial["trial_id"], **row} for result, trial in zip(results, trials)
                for row in _progress(result, metric)]
    write_csv(out / "trials.csv", [{k: v for k, v in trial.items() if k != "config"} | trial["config"]
                                    for trial in trials])
    write_csv(out / "progress.csv", progress)
    plot_progress(progress, out / "progress.png", best["trial_id"], metric)
    summary = {"metric": metric, "best_trial": best["trial_id"], "best_config": best["config"], "best_metrics": best["metrics"],
               "trials": [{k: v for k, v in trial.items() if k != "metrics"} for trial in trials]}
    write_json(out / "sweep.json", summary)
    return summary


class TrialProgress(Callback):
    """A bar of the sweep's trials as they end (a line each when the output is not a terminal),
    with the best score so far; Tune's own status tables only with --verbose."""

    def __init__(self, samples: int, metric: str):
        from tqdm import tqdm
        self.metric, self.best = metric, None
        self.bar = tqdm(total=samples, desc="tune", unit="trial", disable=None, leave=True)

    def _ended(self, trial, how: str) -> None:
        score = (trial.last_result or {}).get(self.metric)
        if score is not None and (self.best is None or score < self.best):
            self.best = score
        if self.bar.disable:
            shown = "-" if score is None else f"{score:.4f}"
            print(f"tune: trial {trial.trial_id} {how} ({self.metric} {shown})", flush=True)
        else:
            self.bar.total = max(self.bar.total, self.bar.n + 1)
            self.bar.set_postfix_str(f"best {self.metric} {self.best:.4f}" if self.best is not None else "")
            self.bar.update(1)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, "ended")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, "failed")

    def on_experiment_end(self, trials, **info):
        self.bar.close()


def _trial_row(result, out: Path, validations: int, metric: str) -> dict:
    history = _progress(result, metric)
    scores = [row[metric] for row in history if row.get(metric) is not None]
    trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
    exported = (out / "trials" / trial_id / "best").is_dir()
    status = "error" if result.error else ("completed" if exported and len(scores) >= validations else "stopped early")
    return {"trial_id": trial_id, "status": status, metric: min(scores) if scores else None,
            "validations": len(scores), "error": str(result.error) if result.error else None,
            "config": dict(result.config["search"]),
            "metrics": {k: v for k, v in (result.metrics or {}).items() if k.startswith(("val_", "train_", "epoch"))}}


def _progress(result, metric: str) -> list[dict]:
    frame = result.metrics_dataframe
    if frame is None or metric not in frame:
        return []
    return [{"epoch": int(epoch), metric: float(value)} for epoch, value in zip(frame["epoch"], frame[metric])]


def plot_progress(progress: list[dict], path: Path, best_trial: str, metric: str) -> None:
    """The validation `metric` of every trial over epochs; the best trial drawn thick."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(7, 4))
    for trial in dict.fromkeys(row["trial_id"] for row in progress):
        rows = [row for row in progress if row["trial_id"] == trial]
        axes.plot([row["epoch"] for row in rows], [row[metric] for row in rows], marker="o",
                  linewidth=3 if trial == best_trial else 1, label=trial + (" (best)" if trial == best_trial else ""))
    axes.set_xlabel("epoch")
    axes.set_ylabel(f"validation {metric}")
    axes.set_title("t2p tune: trials (ASHA stops the trailing ones)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
