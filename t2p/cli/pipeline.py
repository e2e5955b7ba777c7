"""Verbs of the main pipeline: prepare, train, generate, quickstart."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from t2p.cli import CommandError, add_device_option, add_verb, refuse_unknown_language, resolve_device

DEFAULT_DATA = "data/fingerspelling"
DEFAULT_RUN = "runs/default"
FINGERSPELLING_LENGTH_RATIO = 4.0  # the shipped lexicon has two badly trimmed files (t2p.data.prepare)


def register(subparsers) -> None:
    _register_prepare(subparsers)
    _register_train(subparsers)
    _register_tune(subparsers)
    _register_generate(subparsers)
    _register_correct(subparsers)
    _register_quickstart(subparsers)


# --- prepare -------------------------------------------------------------------------------------

def _register_prepare(subparsers) -> None:
    parser = add_verb(subparsers, "prepare", "Read .pose recordings into Parquet shards + manifest.json.",
                      "t2p prepare --source lexicon --index my_lexicon/index.csv --out data/mine")
    parser.add_argument("--source", choices=["fingerspelling", "lexicon", "index"], default="fingerspelling",
                        help="fingerspelling: the lexicon shipped in the spoken-to-signed package; lexicon: a "
                             "spoken-to-signed lexicon folder; index: a csv/jsonl with path,text,notation,language[,split]")
    parser.add_argument("--index", type=Path, help="index file for --source lexicon/index")
    parser.add_argument("--notation", choices=["text", "signwriting"], default="text",
                        help="text per fingerspelling row: the letter, or its SignWriting where the signwriting "
                             "package can spell it")
    parser.add_argument("--skeleton", choices=["upper_body", "upper_body_face"], default="upper_body")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_DATA), help="output folder")
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,validation,test fractions (by item)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split assignment")
    parser.add_argument("--skip-bad", action="store_true", help="skip missing/corrupt files instead of failing")
    parser.add_argument("--shard-rows", type=int, default=256, help="rows per Parquet shard")
    parser.add_argument("--max-length-ratio", type=float, metavar="R",
                        help="skip recordings more than R times as long as their language's median (badly trimmed "
                             f"files); default {FINGERSPELLING_LENGTH_RATIO:g} for --source fingerspelling, else off")
    parser.set_defaults(handler=prepare_command)


def prepare_command(args: argparse.Namespace) -> int:
    from t2p import data
    try:
        fractions = tuple(float(part) for part in args.split.split(","))
    except ValueError:
        raise CommandError(f"--split must be three numbers like 0.8,0.1,0.1, got {args.split!r}") from None
    if args.source == "fingerspelling":
        items = data.fingerspelling_items(args.notation)
    elif args.index is None:
        raise CommandError(f"--source {args.source} needs --index PATH")
    elif args.source == "lexicon":
        items = data.lexicon_items(args.index)
    else:
        items = data.index_items(args.index)
    try:
        ratio = args.max_length_ratio
        if ratio is None and args.source == "fingerspelling":
            ratio = FINGERSPELLING_LENGTH_RATIO
        if ratio is not None and ratio <= 1:
            raise CommandError(f"--max-length-ratio must be > 1, got {ratio:g}")
        manifest = data.prepare(items, args.out, source=args.source, skeleton=args.skeleton, fractions=fractions,
                                seed=args.seed, skip_bad=args.skip_bad, shard_rows=args.shard_rows,
                                max_length_ratio=ratio)
    except data.PreparationError as error:
        raise CommandError(str(error)) from None
    counts = manifest["counts"]
    print(f"prepared {sum(counts.values())} sequences into {args.out}: "
          + ", ".join(f"{split} {count}" for split, count in counts.items()))
    if manifest["skipped"]:
        print(f"skipped {len(manifest['skipped'])} item(s) (unreadable or too long); listed in {args.out}/manifest.json")
    return 0


# --- train ---------------------------------------------------------------------------------------

# Defaults of the training flags; the parser's own defaults are None, so that a resumed run can tell
# a flag the user gave (and must match the saved job) from one left out (the saved value stands).
TRAINING_DEFAULTS = {"data": Path(DEFAULT_DATA), "workers": 1, "device": "cpu", "cpus_per_worker": 1.0,
                     "max_failures": 1, "validation_items": 64, "validate_every": 0}


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    defaults = TRAINING_DEFAULTS
    parser.add_argument("--data", type=Path, help=f"prepared shards (t2p prepare; default {defaults['data']})")
    parser.add_argument("--workers", type=int, help=f"Ray Train workers (default {defaults['workers']})")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker (the same as --device cuda)")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        help="where the workers train: cuda reserves one GPU per worker (default cpu)")
    parser.add_argument("--cpus-per-worker", type=float,
                        help="CPUs reserved per worker (default 1; on a local Ray, lowered to fit beside data loading)")
    parser.add_argument("--max-failures", type=int, metavar="N",
                        help=f"worker failures survived by restarting from the last checkpoint (default {defaults['max_failures']})")
    parser.add_argument("--epochs", type=int, help="epochs (default: TrainConfig.epochs)")
    parser.add_argument("--batch-size", type=int, help="batch size per worker")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any model, training or schedule setting, e.g. --set d_model=256 --set steps=20")
    parser.add_argument("--validation-items", type=int,
                        help=f"validation items scored at each validation, evenly spaced over the split (default {defaults['validation_items']})")
    parser.add_argument("--validate-every", type=int, metavar="EPOCHS",
                        help="epochs between validations and checkpoints (default 0: about 20 in a run)")
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases (offline without a key)")


def _option(args: argparse.Namespace, name: str):
    value = getattr(args, name)
    return TRAINING_DEFAULTS[name] if value is None else value


def _register_train(subparsers) -> None:
    parser = add_verb(subparsers, "train", "Train with Ray Train on prepared shards (local Ray unless RAY_ADDRESS).",
                      "t2p train --data data/fingerspelling --out runs/default --epochs 30 --set d_model=128")
    _add_training_options(parser)
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_RUN), help="run folder: best/, metrics.csv, job.json")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.set_defaults(handler=train_command)


def training_job_from_args(args: argparse.Namespace):
    from t2p.ray_train import TrainingJob, route_settings
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
    if _option(args, "workers") < 1:
        raise CommandError("--workers must be >= 1")
    if _option(args, "max_failures") < 0:
        raise CommandError("--max-failures must be >= 0")
    if _option(args, "validate_every") < 0 or _option(args, "validation_items") < 1:
        raise CommandError("--validate-every must be >= 0 and --validation-items >= 1")
    return TrainingJob(data=str(_option(args, "data")), out=str(args.out), workers=_option(args, "workers"),
                       gpu=args.gpu or _option(args, "device") == "cuda",
                       cpus_per_worker=_option(args, "cpus_per_worker"), model=model, train=train, schedule=schedule,
                       validation_items=_option(args, "validation_items"),
                       validate_every=_option(args, "validate_every"), wandb=args.wandb,
                       max_failures=_option(args, "max_failures"))


def changed_settings(args: argparse.Namespace, saved, only_given: bool) -> list[str]:
    """The flags whose value differs from the saved job's (epochs may change: a run can be extended).
    With `only_given`, flags left out keep the saved value (`--resume RUN`); without, every flag counts
    (re-running `t2p train --out RUN` into a run that already has a job.json)."""
    asked = training_job_from_args(args)
    given = lambda name: not only_given or getattr(args, name) not in (None, False)  # noqa: E731
    settings = {key for part in (asked.model, asked.train, asked.schedule) for key in part} | \
        ({key for part in (saved.model, saved.train, saved.schedule) for key in part} if not only_given else set())
    settings -= {"epochs", "batch_size"}
    set_changed = any(asked_part.get(key) != saved_part.get(key) for key in settings
                      for asked_part, saved_part in ((asked.model, saved.model), (asked.train, saved.train),
                                                     (asked.schedule, saved.schedule)))
    checks = (
        ("--data", given("data"), str(Path(asked.data).resolve()), str(Path(saved.data).resolve())),
        ("--workers", given("workers"), asked.workers, saved.workers),
        ("--gpu/--device", given("gpu") or given("device"), asked.gpu, saved.gpu),
        ("--cpus-per-worker", given("cpus_per_worker"), asked.cpus_per_worker, saved.cpus_per_worker),
        ("--max-failures", given("max_failures"), asked.max_failures, saved.max_failures),
        ("--validation-items", given("validation_items"), asked.validation_items, saved.validation_items),
        ("--validate-every", given("validate_every"), asked.validate_every, saved.validate_every),
        ("--wandb", given("wandb"), asked.wandb, saved.wandb),
        ("--batch-size", given("batch_size"), asked.train.get("batch_size"), saved.train.get("batch_size")),
    )
    changed = [flag for flag, counts, mine, theirs in checks if counts and mine != theirs]
    return changed + (["--set"] if set_changed else [])


def train_command(args: argparse.Namespace) -> int:
    import json

    from t2p.ray_train import TrainingJob, run_training
    if args.resume is not None:
        saved = args.resume / "job.json"
        if not saved.is_file():
            raise CommandError(f"{args.resume} is not a t2p run folder (no job.json)")
        job = TrainingJob.from_dict(json.loads(saved.read_text())["job"])
        changed = changed_settings(args, job, only_given=True)
        if changed:
            raise CommandError(f"--resume continues {args.resume} as it was started; {', '.join(changed)} "
                               "differ(s) from its job.json: start a new run with --out instead")
        if args.epochs is not None:
            job.train["epochs"] = args.epochs
        print(f"resuming {args.resume} (epochs: {job.train.get('epochs', 'default')})")
    else:
        job = training_job_from_args(args)
        saved = Path(job.out) / "job.json"
        if saved.is_file():  # the same command again (after Ctrl-C, a lost machine) continues that run
            changed = changed_settings(args, TrainingJob.from_dict(json.loads(saved.read_text())["job"]),
                                       only_given=False)
            if changed:
                raise CommandError(f"{job.out} holds a run started with other settings ({', '.join(changed)} "
                                   "differ); continue it with --resume, or train into a new --out")
            print(f"continuing the run in {job.out} from its last checkpoint")
    best = run_training(job)
    out = Path(job.out)
    print(f"best epoch {best.get('epoch')}: validation DTW-MJE {best['val_dtw_mje']:.4f} "
          f"(static baseline {best['val_static_dtw_mje']:.4f}); default generation: {best['steps']} steps, "
          f"guidance {best['guidance']:g} (validation DTW-MJE {best['val_dtw_mje_chosen']:.4f})")
    print(f"model: {out / 'best'}\nmetrics: {out / 'metrics.csv'}\nconfig: {out / 'job.json'}\n"
          f"steps and guidance measured: {out / 'generation.json'}")
    return 0


# --- tune ----------------------------------------------------------------------------------------

def _register_tune(subparsers) -> None:
    parser = add_verb(subparsers, "tune", "Sweep refinement steps and loss weights with Ray Tune (one TorchTrainer per trial).",
                      "t2p tune --data data/fingerspelling --out runs/sweep --samples 8 --epochs 10 "
                      "--search steps=1,5,10 --search smoothness_weight=0.05:2")
    _add_training_options(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="sweep folder: trials/, best/, sweep.json")
    parser.add_argument("--samples", type=int, default=4, help="trials")
    parser.add_argument("--max-concurrent", type=int, default=1, help="trials at once")
    parser.add_argument("--grace-period", type=int, default=1, metavar="VALIDATIONS",
                        help="validations every trial runs before ASHA may stop it")
    parser.add_argument("--search", action="append", default=[], metavar="KEY=SPEC",
                        help="KEY=a,b,c (choice) or KEY=low:high (log-uniform); default: steps, smoothness_weight "
                             "and length_weight")
    parser.set_defaults(handler=tune_command)


def tune_command(args: argparse.Namespace) -> int:
    from t2p.tune import METRIC, parse_search, run_sweep
    if args.samples < 1:
        raise CommandError("--samples must be >= 1")
    job = training_job_from_args(args)
    if args.grace_period < 1:
        raise CommandError("--grace-period must be >= 1")
    summary = run_sweep(job, samples=args.samples, space=parse_search(args.search) if args.search else None,
                        max_concurrent=args.max_concurrent, grace_period=args.grace_period)
    for trial in summary["trials"]:
        score = "-" if trial[METRIC] is None else f"{trial[METRIC]:.4f}"
        print(f"{trial['trial_id']}  {trial['status']:<14} {METRIC} {score}  {trial['config']}"
              + ("   <- best" if trial["trial_id"] == summary["best_trial"] else ""))
    print(f"model: {args.out / 'best'}\ntables: {args.out / 'trials.csv'}, {args.out / 'progress.csv'}\n"
          f"plot: {args.out / 'progress.png'}\nsummary: {args.out / 'sweep.json'}")
    return 0


# --- generate ------------------------------------------------------------------------------------

def _register_generate(subparsers) -> None:
    parser = add_verb(subparsers, "generate", "Generate .pose files from text with a trained model.",
                      't2p generate --model runs/default/best --text A --language ase -o a.pose')
    parser.add_argument("--model", type=Path, default=Path(DEFAULT_RUN) / "best", help="model folder")
    parser.add_argument("--text", action="append", default=[], help="a sign to generate (repeatable; one batch)")
    parser.add_argument("--texts-file", type=Path, help="one sign per line")
    parser.add_argument("--notation", choices=["hamnosys", "signwriting", "text"],
                        help="notation of the texts (default: the model's)")
    parser.add_argument("--language", help="sign language code, ISO 639-3 (e.g. ase)")
    parser.add_argument("--first-pose", type=Path, help=".pose whose first frame decides who signs")
    parser.add_argument("--steps", type=int, help="refinement steps (default: the model's)")
    parser.add_argument("--length", type=int, help="frames (default: predicted)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--speed", type=float, default=1.0, help="signing speed, 0.5..2 (the frame rate stays)")
    parser.add_argument("--keep-proportions", action="store_true",
                        help="hold every bone within 4%% of its length in the first pose (costs some accuracy: "
                             "2D bones vary as hands turn)")
    parser.add_argument("--compose", action="store_true",
                        help="one sequence signing every --text in order, with generated transitions; a gloss "
                             "the model (or --lexicon) does not know is fingerspelled")
    parser.add_argument("--spoken-language", default="en",
                        help="spoken language of the glosses, for the fingerspelling alphabet (with --compose)")
    parser.add_argument("--lexicon", type=Path,
                        help="a spoken-to-signed lexicon folder (index.csv): its recordings sign the glosses it "
                             "has, the model the rest (--compose)")
    parser.add_argument("--spoken-text", metavar="TEXT",
                        help="spoken-language text, turned into glosses by spoken-to-signed (--compose; with "
                             "--spoken-language)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output .pose for one text (or --compose), or a folder for several")
    add_device_option(parser)
    parser.set_defaults(handler=generate_command)


def generate_command(args: argparse.Namespace) -> int:
    from t2p.compose import change_speed, validate_speed
    from t2p.generation import as_pose, generate
    from t2p.model import T2PModel
    from t2p.notation import SignText
    from t2p.pose import load_sequence, write_pose

    texts = list(args.text)
    if args.texts_file is not None:
        if not args.texts_file.is_file():
            raise CommandError(f"--texts-file {args.texts_file} not found")
        texts += [line.rstrip("\n") for line in args.texts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if args.spoken_text is not None:
        from t2p.compose import text_to_glosses
        if not args.compose:
            raise CommandError("--spoken-text makes one sentence: give --compose too")
        texts += text_to_glosses(args.spoken_text, args.spoken_language)  # (word, gloss) pairs
    if not texts:
        raise CommandError("give at least one --text (or --texts-file, --spoken-text)")
    model = T2PModel.load(args.model, device=resolve_device(args.device))
    refuse_unknown_language(model, args.language)
    notation = args.notation or model.config.default_notation
    first = load_sequence(args.first_pose, model.skeleton) if args.first_pose else None
    validate_speed(args.speed)
    if args.compose:
        return _compose_command(args, model, texts, notation, first)
    signs = [SignText(text, notation, args.language) for text in texts]
    sequences = generate(model, signs, first_poses=[first] * len(signs), steps=args.steps, lengths=args.length,
                         guidance=args.guidance, seed=args.seed, keep_proportions=args.keep_proportions)
    sequences = [change_speed(sequence, args.speed) for sequence in sequences]
    if len(signs) == 1 and args.output.suffix == ".pose":
        destinations = [args.output]
    else:
        if args.output.suffix == ".pose":
            raise CommandError(f"{len(signs)} texts need a folder for -o, not a .pose file")
        destinations = [args.output / f"{i:03d}-{_slug(text)}.pose" for i, text in enumerate(texts)]
    for destination, sequence in zip(destinations, sequences):
        write_pose(as_pose(model, sequence, first), destination)
        print(f"{destination} ({len(sequence)} frames)")
    return 0


def _compose_command(args: argparse.Namespace, model, texts: list[str], notation: str, first) -> int:
    import json

    from t2p.compose import PlannedSign, compose, lexicon_sign, plan_signs
    from t2p.generation import as_pose
    from t2p.notation import SignText
    from t2p.pose import write_pose

    if args.output.suffix != ".pose":
        raise CommandError("--compose writes one sequence: give -o a .pose file")
    if args.length is not None:
        raise CommandError("--length does not apply to --compose (each sign has its predicted length)")
    if args.lexicon is not None and not (args.lexicon / "index.csv").is_file():
        raise CommandError(f"--lexicon {args.lexicon} has no index.csv (spoken-to-signed lexicon format)")
    lexicon = str(args.lexicon) if args.lexicon else None
    if notation == "text":  # glosses: the lexicon's are recordings, unknown ones are fingerspelled
        planned = plan_signs(model, texts, args.language, args.spoken_language, lexicon)
    else:
        planned = [PlannedSign(text, "model") for text in texts]
    recorded = {index: lexicon_sign(model, lexicon, sign, args.spoken_language, args.language, first)
                for index, sign in enumerate(planned) if sign.source == "lexicon"}
    composition = compose(model, [SignText(p.text, notation, args.language) for p in planned], first,
                          steps=args.steps, guidance=args.guidance, speed=args.speed,
                          keep_proportions=args.keep_proportions, recorded=recorded)
    write_pose(as_pose(model, composition.generated, first), args.output)
    segments = args.output.with_suffix(".segments.json")
    segments.write_text(json.dumps([vars(segment) for segment in composition.segments], ensure_ascii=False, indent=1))
    spelled = sorted({p.source.split(":", 1)[1] for p in planned if p.source.startswith("fingerspelling:")})
    print(f"{args.output} ({len(composition)} frames: {len(planned)} signs"
          + (f", {len(recorded)} from the lexicon" if recorded else "")
          + (f"; fingerspelled {', '.join(spelled)}" if spelled else "") + f"); segments: {segments}")
    return 0


# --- correct -------------------------------------------------------------------------------------

def _register_correct(subparsers) -> None:
    parser = add_verb(subparsers, "correct",
                      "Fill the missing frames and keypoints of a real recording with the model; observed values "
                      "are kept exactly.",
                      "t2p correct recording.pose -o repaired.pose --text B --language ase")
    parser.add_argument("input", type=Path, help="the recording (.pose): zero-confidence values are missing")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the corrected .pose")
    parser.add_argument("--model", type=Path, default=Path(DEFAULT_RUN) / "best", help="model folder")
    parser.add_argument("--text", help="what the recording signs (optional: it guides the filling)")
    parser.add_argument("--notation", choices=["hamnosys", "signwriting", "text"], help="notation of --text")
    parser.add_argument("--language", help="sign language code, ISO 639-3")
    parser.add_argument("--steps", type=int, help="refinement steps (default: 1, measured best for filling gaps)")
    add_device_option(parser)
    parser.set_defaults(handler=correct_command)


def correct_command(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from t2p.correction import correct
    from t2p.model import T2PModel
    from t2p.notation import SignText
    from t2p.pose import PoseFormatError, fill_in, read_pose, to_sequence, write_pose

    if not args.input.is_file():
        raise CommandError(f"{args.input} not found")
    if args.output.suffix != ".pose":
        raise CommandError("-o must name a .pose file")
    model = T2PModel.load(args.model, device=resolve_device(args.device))
    original = read_pose(args.input)
    recording = to_sequence(original, model.skeleton)
    sign = SignText(args.text or "", args.notation or model.config.default_notation, args.language)
    refuse_unknown_language(model, sign.language)
    corrected = correct(model, recording, sign, steps=args.steps)
    # only the filled values are written into the recording: the rest of the file stays as it was
    filled = replace(recording, data=corrected.data, confidence=corrected.confidence)
    write_pose(fill_in(original, model.skeleton, filled, corrected.filled), args.output)
    frames = int(corrected.filled.any(axis=1).sum())
    print(f"{args.output}: filled {int(corrected.filled.sum())} keypoint values in {frames} of "
          f"{recording.num_frames} frames; observed values unchanged")
    return 0


def _slug(text: str) -> str:
    slug = re.sub(r"[^\w-]+", "_", text, flags=re.UNICODE).strip("_")
    return slug[:40] or "sign"


# --- quickstart ----------------------------------------------------------------------------------

def _register_quickstart(subparsers) -> None:
    parser = add_verb(subparsers, "quickstart",
                      "The main job on the embedded data: prepare the fingerspelling lexicon, train, generate.",
                      "t2p quickstart --epochs 5   # a shorter run")
    parser.add_argument("--data", type=Path, default=Path(DEFAULT_DATA))
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_RUN))
    parser.add_argument("--epochs", type=int, help="epochs (default: TrainConfig.epochs)")
    parser.set_defaults(handler=quickstart_command)


def quickstart_command(args: argparse.Namespace) -> int:
    import time

    from t2p import data
    from t2p.generation import as_pose, generate
    from t2p.model import T2PModel
    from t2p.notation import SignText
    from t2p.pose import write_pose
    from t2p.ray_train import TrainingJob, run_training

    started = time.time()
    if not (args.data / data.MANIFEST_FILE).is_file():
        manifest = data.prepare(data.fingerspelling_items(), args.data, source="fingerspelling",
                                max_length_ratio=FINGERSPELLING_LENGTH_RATIO)
        print(f"prepared {sum(manifest['counts'].values())} fingerspelling sequences into {args.data}")
    train = {"epochs": args.epochs} if args.epochs else {}
    best = run_training(TrainingJob(data=str(args.data), out=str(args.out), train=train))
    example = args.out / "examples" / "ase-A.pose"
    model = T2PModel.load(args.out / "best")
    (sequence,) = generate(model, [SignText("A", "text", "ase")])
    write_pose(as_pose(model, sequence), example)
    print(f"{example} ({len(sequence)} frames)")
    print(f"\ndone in {time.time() - started:.0f} s")
    print(f"  data:     {args.data}  (manifest.json, Parquet shards)")
    print(f"  model:    {args.out / 'best'}  (validation DTW-MJE {best['val_dtw_mje_chosen']:.4f} at "
          f"{best['steps']} steps, guidance {best['guidance']:g}; static baseline {best['val_static_dtw_mje']:.4f})")
    print(f"  metrics:  {args.out / 'metrics.csv'}")
    print(f"  example:  {example}")
    print(f"next: t2p generate --model {args.out / 'best'} --text B --language ase -o b.pose")
    return 0
