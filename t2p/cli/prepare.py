"""`t2p prepare`: .pose recordings (the shipped fingerspelling lexicon, a lexicon folder, an index)
into Parquet shards + manifest.json (`t2p.data.prepare`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from t2p.cli import DEFAULT_DATA, CommandError, add_verb

FINGERSPELLING_LENGTH_RATIO = 4.0  # the shipped lexicon has two badly trimmed files (t2p.data.prepare)


def register(subparsers) -> None:
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
