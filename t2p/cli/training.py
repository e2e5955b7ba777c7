"""Verbs that train: train (Ray Train), tune (Ray Tune), quickstart (prepare, train, generate)."""
from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path

from t2p.cli import DEFAULT_DATA, DEFAULT_RUN, CommandError, add_verb, finite_number
from t2p.training import TrainConfig, TrainingJob
from t2p.training.config import SELECTION_METRICS


def register(subparsers) -> None:
    _register_train(subparsers)
    _register_tune(subparsers)
    _register_quickstart(subparsers)


# --- train ---------------------------------------------------------------------------------------

# The defaults of the training flags are TrainingJob's own; the parser's defaults are None, so that a
# resumed run can tell a flag the user gave (and must match the saved job) from one left out (the
# saved value stands).
JOB_DEFAULTS = {f.name: f.default for f in fields(TrainingJob) if f.name not in ("data", "out")}
TRAIN_DEFAULTS = TrainConfig()
DEVICES = ("cpu", "cuda")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    defaults = JOB_DEFAULTS
    parser.add_argument("--data", type=Path, help=f"prepared shards (t2p prepare; default {DEFAULT_DATA})")
    parser.add_argument("--workers", type=int, help=f"Ray Train workers (default {defaults['workers']})")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker (the same as --device cuda)")
    parser.add_argument("--device", choices=DEVICES,
                        help="where the workers train: cuda reserves one GPU per worker (default cpu)")
    parser.add_argument("--cpus-per-worker", type=finite_number,
                        help=f"CPUs reserved per worker (default {defaults['cpus_per_worker']:g}; on a local Ray, "
                             "lowered to fit beside data loading)")
    parser.add_argument("--max-failures", type=int, metavar="N",
                        help=f"worker failures survived by restarting from the last checkpoint (default {defaults['max_failures']})")
    parser.add_argument("--epochs", type=int, help=f"epochs (default {TRAIN_DEFAULTS.epochs})")
    parser.add_argument("--batch-size", type=int, help=f"batch size per worker (default {TRAIN_DEFAULTS.batch_size})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any model, training or schedule setting, e.g. --set d_model=256 --set steps=20")
    parser.add_argument("--validation-items", type=int,
                        help=f"validation items scored at each validation, evenly spaced over the split (default {defaults['validation_items']})")
    parser.add_argument("--validate-every", type=int, metavar="EPOCHS",
                        help=f"epochs between validations and checkpoints (default {defaults['validate_every']}: "
                             "about 20 in a run)")
    parser.add_argument("--select-on", choices=list(SELECTION_METRICS), metavar="METRIC",
                        help="validation metric that picks the best checkpoint, the saved steps and guidance, and "
                             "a sweep's best trial (lower is better): "
                             + "; ".join(f"{name}: {what}" for name, what in SELECTION_METRICS.items())
                             + f" (default {defaults['select_on']})")
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases (offline without a key)")
    parser.add_argument("--init", type=Path, dest="init_from", metavar="MODEL_DIR",
                        help="start a new run from this model folder's weights where they fit (fine-tuning on a new "
                             "corpus: every token the two vocabularies share keeps its embedding)")


def _option(args: argparse.Namespace, name: str):
    value = getattr(args, name)
    if value is not None:
        return value
    return Path(DEFAULT_DATA) if name == "data" else "cpu" if name == "device" else JOB_DEFAULTS[name]


def _register_train(subparsers) -> None:
    parser = add_verb(subparsers, "train", "Train with Ray Train on prepared shards (local Ray unless RAY_ADDRESS).",
                      "t2p train --data data/fingerspelling --out runs/default --epochs 30 --set d_model=128")
    _add_training_options(parser)
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_RUN), help="run folder: best/, metrics.csv, job.json")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.set_defaults(handler=train_command)


def training_job_from_args(args: argparse.Namespace) -> TrainingJob:
    from t2p.training import route_settings
    settings = {}
    for pair in args.set:
        if "=" not in pair:
            raise CommandError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        settings[key.strip()] = value.strip()
    model, train, schedule = route_settings(settings)
    if args.epochs is not None:
        train["epochs"] = args.epochs
    if args.batch_size is not None:
        train["batch_size"] = args.batch_size
    return TrainingJob(data=str(_option(args, "data")), out=str(args.out), workers=_option(args, "workers"),
                       gpu=args.gpu or _option(args, "device") == "cuda",
                       cpus_per_worker=_option(args, "cpus_per_worker"), model=model, train=train, schedule=schedule,
                       validation_items=_option(args, "validation_items"),
                       validate_every=_option(args, "validate_every"), wandb=args.wandb,
                       max_failures=_option(args, "max_failures"), select_on=_option(args, "select_on"),
                       init_from=str(args.init_from) if args.init_from else "")


# the job fields `TrainingJob.changed_settings` names, as the flags that set them
FLAGS = {"data": "--data", "workers": "--workers", "gpu": "--gpu/--device", "cpus_per_worker": "--cpus-per-worker",
         "max_failures": "--max-failures", "validation_items": "--validation-items",
         "validate_every": "--validate-every", "wandb": "--wandb", "batch_size": "--batch-size",
         "select_on": "--select-on", "init_from": "--init", "set": "--set"}


def changed_flags(args: argparse.Namespace, saved, only_given: bool) -> list[str]:
    """The flags whose value differs from the saved job's. With `only_given`, flags left out keep the
    saved value (`--resume RUN`); without, every flag counts (re-running `t2p train --out RUN` into a
    run that already has a job.json)."""
    given = None
    if only_given:
        given = {name for name in saved.IDENTITY_FIELDS if getattr(args, name) not in (None, False)}
        given |= {"gpu"} if args.device is not None else set()
    return [FLAGS[name] for name in saved.changed_settings(training_job_from_args(args), given)]


def train_command(args: argparse.Namespace) -> int:
    from t2p.training.job import JOB_FILE, read_job, run_training
    if args.resume is not None:
        if not (args.resume / JOB_FILE).is_file():
            raise CommandError(f"{args.resume} is not a t2p run folder (no {JOB_FILE})")
        job = read_job(args.resume)
        changed = changed_flags(args, job, only_given=True)
        if changed:
            raise CommandError(f"--resume continues {args.resume} as it was started; {', '.join(changed)} "
                               "differ(s) from its job.json: start a new run with --out instead")
        if args.epochs is not None:
            job = replace(job, train={**job.train, "epochs": args.epochs})
        print(f"resuming {args.resume} (epochs: {job.train.get('epochs', 'default')})")
    else:
        job = training_job_from_args(args)
        if (Path(job.out) / JOB_FILE).is_file():  # the same command again (after Ctrl-C, a lost machine) continues that run
            changed = changed_flags(args, read_job(Path(job.out)), only_given=False)
            if changed:
                raise CommandError(f"{job.out} holds a run started with other settings ({', '.join(changed)} "
                                   "differ); continue it with --resume, or train into a new --out")
            print(f"continuing the run in {job.out} from its last checkpoint")
    best = run_training(job)
    out = Path(job.out)
    print(f"best epoch {best.get('epoch')}: validation DTW-MJE {best['val_dtw_mje']:.4f} "
          f"(static baseline {best['val_static_dtw_mje']:.4f}); default generation: {best['steps']} steps, "
          f"guidance {best['guidance']:g} (validation DTW-MJE {best['val_dtw_mje_chosen']:.4f})")
    if best["selected_on"] != "val_dtw_mje":
        print(f"selected on {best['selected_on']}: {best['selected_score']:.4f}")
    print(f"model: {out / 'best'}\nmetrics: {out / 'metrics.csv'}\nconfig: {out / 'job.json'}\n"
          f"steps and guidance measured: {out / 'generation.json'}")
    return 0


# --- tune ----------------------------------------------------------------------------------------

def _register_tune(subparsers) -> None:
    parser = add_verb(subparsers, "tune", "Sweep refinement steps and loss weights with Ray Tune (one TorchTrainer per trial).",
                      "t2p tune --data data/fingerspelling --out runs/sweep --samples 8 --epochs 10 "
                      "--search steps=1,5,10 --search smoothness_weight=0.05:2\n"
                      "  t2p tune --data data/fingerspelling --samples 1 --grid learning_rate=0.001,0.003  # each value once")
    _add_training_options(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="sweep folder: trials/, best/, sweep.json")
    parser.add_argument("--samples", type=int, default=4, help="trials")
    parser.add_argument("--max-concurrent", type=int, default=1, help="trials at once")
    parser.add_argument("--grace-period", type=int, default=1, metavar="VALIDATIONS",
                        help="validations every trial runs before ASHA may stop it")
    parser.add_argument("--search", action="append", default=[], metavar="KEY=SPEC",
                        help="KEY=a,b,c (choice) or KEY=low:high (log-uniform); default: steps, smoothness_weight "
                             "and length_weight")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=a,b,c",
                        help="try every value of KEY (--samples trials each), beside any --search keys")
    parser.set_defaults(handler=tune_command)


def tune_command(args: argparse.Namespace) -> int:
    from t2p.training.tune import parse_search, run_sweep
    if args.samples < 1:
        raise CommandError("--samples must be >= 1")
    job = training_job_from_args(args)
    if args.grace_period < 1:
        raise CommandError("--grace-period must be >= 1")
    summary = run_sweep(job, samples=args.samples, space=parse_search(args.search, args.grid) if args.search or args.grid else None,
                        max_concurrent=args.max_concurrent, grace_period=args.grace_period)
    metric = summary["metric"]
    for trial in summary["trials"]:
        score = "-" if trial[metric] is None else f"{trial[metric]:.4f}"
        print(f"{trial['trial_id']}  {trial['status']:<14} {metric} {score}  {trial['config']}"
              + ("   <- best" if trial["trial_id"] == summary["best_trial"] else ""))
    print(f"model: {args.out / 'best'}\ntables: {args.out / 'trials.csv'}, {args.out / 'progress.csv'}\n"
          f"plot: {args.out / 'progress.png'}\nsummary: {args.out / 'sweep.json'}")
    return 0


# --- quickstart ----------------------------------------------------------------------------------

# The quickstart's training: a shorter budget than `t2p train`'s defaults (which --full keeps), so the
# main job ends within about 150 s on a 2-core machine; docs/quality.md ("The quickstart's budget")
# has what it costs against the full run, measured on test.
QUICKSTART_TRAINING = {"epochs": 30}
QUICKSTART_MODEL = {"dropout": 0.0}
QUICKSTART_VALIDATE_EVERY = 15
QUICKSTART_GUIDANCE = [1.0]  # at 40 epochs guidance 2 scored 0.30-0.32 DTW-MJE against 0.18 for 1: never chosen


def _register_quickstart(subparsers) -> None:
    parser = add_verb(subparsers, "quickstart",
                      "The main job on the embedded data: prepare the fingerspelling lexicon, train, generate an example.",
                      "t2p quickstart            # about 2.5 minutes on 2 cores\n"
                      "  t2p quickstart --full     # the full training (t2p train's defaults): better, about 3x longer")
    parser.add_argument("--data", type=Path, default=Path(DEFAULT_DATA))
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_RUN))
    parser.add_argument("--full", action="store_true",
                        help=f"train with t2p train's defaults ({TRAIN_DEFAULTS.epochs} epochs) instead of the "
                             f"quickstart's shorter budget ({QUICKSTART_TRAINING['epochs']} epochs)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the budget's)")
    parser.set_defaults(handler=quickstart_command)


def quickstart_command(args: argparse.Namespace) -> int:
    import time

    from t2p.data import prepare
    from t2p.data.shards import MANIFEST_FILE
    from t2p.data.sources import FINGERSPELLING_LENGTH_RATIO, fingerspelling_items
    from t2p.generation import as_pose, generate
    from t2p.model import T2PModel
    from t2p.notation import SignText
    from t2p.pose import write_pose
    from t2p.training.job import run_training

    started = time.time()
    seconds = {}
    if not (args.data / MANIFEST_FILE).is_file():
        manifest = prepare(fingerspelling_items(), args.data, source="fingerspelling",
                           max_length_ratio=FINGERSPELLING_LENGTH_RATIO)
        print(f"prepared {sum(manifest['counts'].values())} fingerspelling sequences into {args.data}")
        seconds["prepare"] = time.time() - started
    train = {} if args.full else dict(QUICKSTART_TRAINING)
    if args.epochs:
        train["epochs"] = args.epochs
    job = TrainingJob(data=str(args.data), out=str(args.out), train=train,
                      model={} if args.full else dict(QUICKSTART_MODEL),
                      validate_every=0 if args.full else QUICKSTART_VALIDATE_EVERY,
                      **({} if args.full else {"calibration_guidance": QUICKSTART_GUIDANCE}))
    best = run_training(job)
    seconds.update(best.pop("seconds"))
    began = time.time()
    example = args.out / "examples" / "ase-A.pose"
    model = T2PModel.load(args.out / "best")
    (sequence,) = generate(model, [SignText("A", "text", "ase")])
    write_pose(as_pose(model, sequence), example)
    seconds["example"] = time.time() - began
    print(f"{example} ({len(sequence)} frames)")
    print(f"\ndone in {time.time() - started:.0f} s (" + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
          + ")")
    print(f"  data:     {args.data}  (manifest.json, Parquet shards)")
    print(f"  model:    {args.out / 'best'}  (validation DTW-MJE {best['val_dtw_mje_chosen']:.4f} at "
          f"{best['steps']} steps, guidance {best['guidance']:g}; static baseline {best['val_static_dtw_mje']:.4f})")
    print(f"  metrics:  {args.out / 'metrics.csv'}")
    print(f"  example:  {example}")
    print(f"next: t2p serve --model {args.out / 'best'}   then open http://127.0.0.1:8000/ to watch signs being made")
    return 0
