"""Verbs that sign: generate (text to .pose, one sign each or composed into a sentence) and correct
(a recording's missing values filled)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from t2p.cli import DEFAULT_RUN, CommandError, add_device_option, add_verb, refuse_unknown_language, resolve_device


def register(subparsers) -> None:
    _register_generate(subparsers)
    _register_correct(subparsers)


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
                         guidance=args.guidance, keep_proportions=args.keep_proportions)
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


def _compose_command(args: argparse.Namespace, model, texts: list, notation: str, first) -> int:
    from t2p.compose import compose_sentence, write_segments
    from t2p.generation import as_pose
    from t2p.pose import write_pose

    if args.output.suffix != ".pose":
        raise CommandError("--compose writes one sequence: give -o a .pose file")
    if args.length is not None:
        raise CommandError("--length does not apply to --compose (each sign has its predicted length)")
    if args.lexicon is not None and not (args.lexicon / "index.csv").is_file():
        raise CommandError(f"--lexicon {args.lexicon} has no index.csv (spoken-to-signed lexicon format)")
    sentence = compose_sentence(model, texts, notation, args.language, first, spoken_language=args.spoken_language,
                                lexicon=args.lexicon, steps=args.steps, guidance=args.guidance, speed=args.speed,
                                keep_proportions=args.keep_proportions)
    write_pose(as_pose(model, sentence.composition.generated, first), args.output)
    segments = write_segments(sentence.composition.segments, args.output.with_suffix(".segments.json"))
    spelled = sentence.fingerspelled
    print(f"{args.output} ({len(sentence.composition)} frames: {len(sentence.signs)} signs"
          + (f", {sentence.from_lexicon} from the lexicon" if sentence.from_lexicon else "")
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
    from t2p.correction import correct_pose
    from t2p.model import T2PModel
    from t2p.notation import SignText
    from t2p.pose import read_pose, write_pose

    if not args.input.is_file():
        raise CommandError(f"{args.input} not found")
    if args.output.suffix != ".pose":
        raise CommandError("-o must name a .pose file")
    model = T2PModel.load(args.model, device=resolve_device(args.device))
    recording = read_pose(args.input)
    sign = SignText(args.text or "", args.notation or model.config.default_notation, args.language)
    refuse_unknown_language(model, sign.language)
    corrected = correct_pose(model, recording, sign, steps=args.steps)
    write_pose(corrected.pose, args.output)
    print(f"{args.output}: filled {int(corrected.filled.sum())} keypoint values in {corrected.filled_frames} of "
          f"{len(corrected.filled)} frames; observed values unchanged")
    return 0


def _slug(text: str) -> str:
    slug = re.sub(r"[^\w-]+", "_", text, flags=re.UNICODE).strip("_")
    return slug[:40] or "sign"
