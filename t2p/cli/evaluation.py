"""Verbs that judge poses: evaluate (model vs baselines), compare (two files), render (pictures)."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from t2p.cli import CommandError, add_device_option, add_verb, refuse_unknown_language, resolve_device
from t2p.data import SPLITS
from t2p.evaluation.evaluate import BASELINE_LENGTHS, STARTS
from t2p.evaluation.metrics import METRICS
from t2p.notation import NOTATIONS

TASKS = ("generate", "correct", "compose")


def register(subparsers) -> None:
    _register_evaluate(subparsers)
    _register_compare(subparsers)
    _register_render(subparsers)


# --- evaluate ------------------------------------------------------------------------------------

def _register_evaluate(subparsers) -> None:
    parser = add_verb(subparsers, "evaluate",
                      "Score a model against the static, retrieval and mean baselines on every metric; write "
                      "report.json, report.md, a plot per metric and rendered examples.",
                      "t2p evaluate --model runs/default/best --data data/fingerspelling --split test --out reports/test "
                      "--steps 1,3,10,30 --guidance 1,2,4")
    parser.add_argument("--model", type=Path, required=True, help="model folder (config.json + model.safetensors)")
    parser.add_argument("--data", type=Path, required=True, help="prepared shards (t2p prepare)")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--task", choices=TASKS, default="generate",
                        help="generate: from text against the baselines; correct: fill hidden frames and a hidden "
                             "hand of real recordings, against linear interpolation and nearest-frame copy; "
                             "compose: sentences of three signs, the peak speed and jerk at each join against the "
                             "recordings' own motion, spoken-to-signed's concatenation, a linear blend and a jump cut")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--steps", type=_numbers(int), metavar="N[,N...]",
                        help="refinement steps; several (1,3,10,30) sweep them (default: the model's)")
    parser.add_argument("--guidance", type=_numbers(float), metavar="S[,S...]",
                        help="classifier-free guidance scales; several (1,2,4) sweep them (default: the model's)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items")
    parser.add_argument("--examples", type=int, default=3, help="rendered side-by-side examples")
    parser.add_argument("--batch-size", type=int, default=32, help="items per generation call")
    parser.add_argument("--baseline-length", choices=BASELINE_LENGTHS, default="predicted",
                        help="length of the retrieval and mean baselines: the model's predicted length or the "
                             "reference length")
    parser.add_argument("--start", type=_starts, default=STARTS, metavar="START[,START...]",
                        help="starting poses, each scoring every system; the first is the headline: neutral (the "
                             "model's neutral pose), own (the reference's first frame), other (another sign's first "
                             f"frame) (default: {','.join(STARTS)})")
    parser.add_argument("--metric", action="append", choices=list(METRICS), dest="metrics",
                        help="metric to compute (repeatable; default: all)")
    add_device_option(parser)
    parser.set_defaults(handler=evaluate_command)


def _starts(text: str) -> tuple[str, ...]:
    starts = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [start for start in starts if start not in STARTS]
    if unknown or not starts:
        raise argparse.ArgumentTypeError(f"starts are {', '.join(STARTS)}, separated by commas; got {text!r}")
    return starts


def _numbers(kind):
    """An argparse type: one number or a comma-separated list of them (finite ones), as a tuple."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}s separated by commas, got {text!r}") from None
        if not all(math.isfinite(value) for value in values):
            raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
        return values
    return parse


def evaluate_command(args: argparse.Namespace) -> int:
    from t2p.evaluation import EvaluationConfig, evaluate
    from t2p.model import T2PModel

    if args.task == "correct":
        return _evaluate_correction(args)
    if args.task == "compose":
        return _evaluate_composition(args)
    config = EvaluationConfig(split=args.split, steps=args.steps, guidance=args.guidance, batch_size=args.batch_size,
                              limit=args.limit, examples=args.examples, baseline_length=args.baseline_length,
                              metrics=tuple(args.metrics or METRICS), starts=args.start)
    model = T2PModel.load(args.model, device=resolve_device(args.device))
    report = evaluate(model, args.data, args.out, config, model_name=str(args.model))
    print(f"evaluated {len(report.items)} {args.split} items at {report.steps} steps, guidance {report.guidance:g}")
    headlines = [m for m in ("handshape", "dtw_mje") if m in config.metrics] or list(config.metrics[:1])
    for start in report.starts:
        summary = report.summary(start=start.start)
        for headline in headlines:
            print(f"{start.start} start, {headline} mean: "
                  + ", ".join(f"{system} {summary[system][headline]['mean']:.3f}" for system in summary))
        print(f"{start.start} start, back-retrieval top-5: "
              + ", ".join(f"{system} {summary[system]['back_retrieval_top5']['mean']:.2f}" for system in summary)
              + f" (chance {min(1.0, 5 / len(report.items)):.2f}); length MAE: model {start.length['model']:.2f}, "
              f"constant {start.length['constant']:.2f} frames")
    if report.sweep:
        names = [name for name in ("dtw_mje", "dtwp", "back_retrieval_top5") if name in report.sweep[0].scores]
        print("steps guidance " + " ".join(f"{name:>19}" for name in names))
        for setting in report.sweep:
            print(f"{setting.steps:5d} {setting.guidance:8g} " + " ".join(f"{setting.scores[name]:19.4f}" for name in names)
                  + ("   <- best" if setting is report.best_setting else ""))
    print(f"report: {args.out / 'report.md'} and {args.out / 'report.json'}")
    return 0


def _evaluate_correction(args: argparse.Namespace) -> int:
    from t2p.data import read_items
    from t2p.evaluation.correction import evaluate_correction
    from t2p.model import T2PModel

    model = T2PModel.load(args.model, device=resolve_device(args.device))
    items = read_items(args.data, args.split, limit=args.limit)
    if not items:
        raise CommandError(f"{args.data} has no {args.split} items")
    report = evaluate_correction(model, items, steps=args.steps[0] if args.steps else None, out_dir=args.out)
    print(f"correction of {report.items} {args.split} recordings: mean joint error on hidden values\n"
          + report.to_markdown())
    print(f"report: {args.out / 'correction.md'} and {args.out / 'correction.json'}")
    return 0


def _evaluate_composition(args: argparse.Namespace) -> int:
    from t2p.data import read_items
    from t2p.evaluation.joins import evaluate_composition
    from t2p.model import T2PModel

    model = T2PModel.load(args.model, device=resolve_device(args.device))
    items = read_items(args.data, args.split, limit=args.limit)
    report = evaluate_composition(model, items, steps=args.steps[0] if args.steps else None)
    if not report.sentences:
        raise CommandError(f"{args.data} has no language with three {args.split} items to compose")
    text = report.write(args.out, args.split)
    print(text + f"report: {args.out / 'composition.md'} and {args.out / 'composition.json'}")
    return 0


# --- compare -------------------------------------------------------------------------------------

def _register_compare(subparsers) -> None:
    parser = add_verb(subparsers, "compare",
                      "Every metric between two .pose files of any supported layout (the first is the "
                      "prediction, the second the reference).",
                      "t2p compare generated.pose reference.pose --json")
    parser.add_argument("predicted", type=Path, help="the .pose file to judge")
    parser.add_argument("reference", type=Path, help="the reference .pose file")
    parser.add_argument("--metric", action="append", choices=list(METRICS), dest="metrics",
                        help="metric to print (repeatable; default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object: metric name -> value")
    parser.set_defaults(handler=compare_command)


def compare_command(args: argparse.Namespace) -> int:
    from t2p.evaluation import compare_files

    values = compare_files(args.predicted, args.reference, args.metrics)
    if args.json:
        print(json.dumps({name: (value if value == value else None) for name, value in values.items()}))
        return 0
    width = max(len(name) for name in values)
    for name, value in values.items():
        print(f"{name:<{width}}  {value:12.4f}  ({METRICS[name].better} is better)")
    return 0


# --- render --------------------------------------------------------------------------------------

def _register_render(subparsers) -> None:
    parser = add_verb(subparsers, "render",
                      "Draw a pose (next to its reference, with the text as caption) as a GIF or MP4; with "
                      "--model and --steps, draw the refinement itself, one panel per step.",
                      "t2p render generated.pose --reference reference.pose --text \"essen\" -o essen.gif")
    parser.add_argument("pose", type=Path, nargs="?",
                        help="the .pose file to draw (with --model: the first pose, who signs; optional)")
    parser.add_argument("--reference", type=Path, help="a reference .pose drawn next to it")
    parser.add_argument("--segments", type=Path,
                        help="a composed sentence's .segments.json (t2p generate --compose): mark its sign boundaries")
    parser.add_argument("--original", type=Path,
                        help="the recording a corrected pose was made from (t2p correct): filled values in green")
    parser.add_argument("--text", default="", help="caption (with --model: the text to generate)")
    parser.add_argument("--notation", choices=NOTATIONS, help="notation of --text for --model (default: the model's)")
    parser.add_argument("--language", help="sign language of --text for --model (ISO 639-3)")
    parser.add_argument("--model", type=Path, help="model folder: render the refinement of --text")
    parser.add_argument("--steps", type=int, help="refinement steps to render (needs --model)")
    parser.add_argument("--panels", type=int, default=6, help="most step panels shown (evenly spaced)")
    parser.add_argument("--height", type=int, default=320, help="panel height in pixels")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output .gif or .mp4")
    parser.set_defaults(handler=render_command)


def render_command(args: argparse.Namespace) -> int:
    from t2p.evaluation.render import FORMATS, render_composition, render_correction, render_file, render_refinement

    if args.out.suffix.lower() not in FORMATS:
        raise CommandError(f"-o must end in {' or '.join(FORMATS)}, got {args.out.name!r}")
    if args.steps is not None and args.model is None:
        raise CommandError("--steps renders a model's refinement: give --model DIR and --text too")
    if args.model is None:
        if args.pose is None:
            raise CommandError("give a .pose file to draw, or --model DIR --text ... --steps N")
        if args.segments is not None:
            result = render_composition(args.pose, args.segments, args.out, text=args.text, panel_height=args.height)
        elif args.original is not None:
            result = render_correction(args.pose, args.original, args.out, text=args.text, panel_height=args.height)
        else:
            result = render_file(args.pose, args.out, reference=args.reference, text=args.text,
                                 panel_height=args.height)
    else:
        result = _render_model(args, render_refinement)
    print(f"wrote {result.path} ({result.frames} frames, {result.width}x{result.height})")
    return 0


def _render_model(args: argparse.Namespace, render_refinement):
    from t2p.model import T2PModel
    from t2p.notation import SignText
    from t2p.pose import load_sequence, read_pose

    if not args.text:
        raise CommandError("--model needs --text: what to sign")
    model = T2PModel.load(args.model)
    refuse_unknown_language(model, args.language)
    sign = SignText(args.text, args.notation or model.config.default_notation, args.language)
    first_pose = load_sequence(args.pose, model.skeleton) if args.pose is not None else None
    reference = read_pose(args.reference) if args.reference is not None else None
    return render_refinement(model, sign, args.out, steps=args.steps or model.schedule_config.steps,
                             first_pose=first_pose, reference=reference, max_panels=args.panels,
                             panel_height=args.height)
