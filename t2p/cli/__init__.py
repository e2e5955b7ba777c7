"""The `t2p` command: one verb per capability, each a thin parser over a library function.

Verbs live in small modules by concern (`t2p.cli.prepare`: prepare; `t2p.cli.training`: train, tune,
quickstart; `t2p.cli.generation`: generate, correct; `t2p.cli.evaluation`: evaluate, compare,
render; `t2p.cli.serving`: serve). Each module exposes `register(subparsers)`; a verb's handler
parses, calls the library and prints; it returns an exit code. User mistakes raise
`CommandError` (or a library ValueError/FileNotFoundError) and exit non-zero with one clear line.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys

from t2p.cluster import VERBOSE_ENV

VERB_MODULES = ("t2p.cli.prepare", "t2p.cli.training", "t2p.cli.generation", "t2p.cli.evaluation",
                "t2p.cli.serving")
DEFAULT_DATA = "data/fingerspelling"
DEFAULT_RUN = "runs/default"


class CommandError(Exception):
    """A user mistake on the command line: printed as one line, exit code 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, and each option's default shown once: added as "(default: X)" only
    where the help does not already name its default, and never for a default that says nothing
    (None: the model's or the library's own; an off switch; an empty list or text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        default = action.default
        silent = default is None or default is argparse.SUPPRESS or default is False or default in ([], "")
        if "default" in help.lower() or silent or not (action.option_strings or action.nargs in ("?", "*")):
            return help
        return help + " (default: %(default)s)"


def add_verb(subparsers, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """A verb parser whose --help ends with a worked example, and a --verbose switch."""
    parser = subparsers.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                                   formatter_class=HelpFormatter)
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's own log lines too (otherwise they stay in Ray's session logs, "
                             "/tmp/ray/session_latest/logs, and t2p shows its own lines and progress)")
    return parser


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="auto (CUDA when there is a GPU), cpu, cuda or cuda:N")


def resolve_device(name: str) -> str:
    """--device as a torch device name; a CUDA device that is not there is an error, not a fallback."""
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise CommandError(f"--device {name}: this machine has no CUDA device (use --device cpu)")
        if name != "cuda" and int(name[5:]) >= torch.cuda.device_count():
            raise CommandError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return name
    raise CommandError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")


def finite_number(text: str) -> float:
    """An argparse type: a float that is a number (not nan or inf, which float() accepts)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def refuse_unknown_language(model, language: str | None) -> None:
    """As Serve does: a language the model was not trained on would be an unknown token, silently."""
    if language is not None and language not in model.vocabulary.languages:
        known = ", ".join(model.vocabulary.languages) or "none: leave --language out"
        raise CommandError(f"--language {language!r} is not one this model knows ({known})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2p", formatter_class=HelpFormatter,
        description="Sign language notation (HamNoSys, SignWriting, text) to pose sequences.",
        epilog="example:\n  t2p quickstart            # prepare the fingerspelling data, train, generate")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for module_name in VERB_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"  # read by the processes Ray starts too
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("t2p: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, FileNotFoundError) as error:
        print(f"t2p {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a folder that cannot be written (read-only, full, not permitted), ...
        where = f"{error.filename}: " if error.filename else ""
        print(f"t2p {args.verb}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
