"""`t2p prepare`: .pose recordings (the shipped fingerspelling lexicon, a lexicon folder, an index,
Ham2Pose's layout) into Parquet shards + manifest.json, on Ray Data (`t2p.data.prepare`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from t2p.cli import DEFAULT_DATA, CommandError, add_verb, finite_number
from t2p.data.prepare import SPLIT_BY
from t2p.data.sources import FINGERSPELLING_LENGTH_RATIO, FINGERSPELLING_NOTATIONS
from t2p.pose import MAX_FRAMES, SKELETON_PRESETS

SOURCES = ("fingerspelling", "lexicon", "index", "ham2pose")
SKIPS_SHOWN = 20  # skipped files named on the terminal; the manifest lists them all


def register(subparsers) -> None:
    parser = add_verb(subparsers, "prepare", "Read .pose recordings into Parquet shards + manifest.json.",
                      "t2p prepare --source lexicon --index my_lexicon/index.csv --out data/mine --fps 25\n"
                      "  t2p prepare --source ham2pose --index data.json --poses poses/ --mirror-list "
                      "pjm_left_videos.json --out data/ham2pose")
    parser.add_argument("--source", choices=SOURCES, default="fingerspelling",
                        help="fingerspelling: the lexicon shipped in the spoken-to-signed package; lexicon: a "
                             "spoken-to-signed lexicon folder (start/end ms cut segments; optional signer column); "
                             "index: a csv/jsonl with path,text,notation,language[,split,signer]; ham2pose: "
                             "Ham2Pose's data.json (--index) and a folder of <id>.pose files (--poses)")
    parser.add_argument("--index", type=Path, help="index file for --source lexicon/index/ham2pose")
    parser.add_argument("--poses", type=Path, help="folder of <id>.pose files for --source ham2pose")
    parser.add_argument("--mirror-list", type=Path, metavar="FILE",
                        help="--source ham2pose: ids of left-handed signers' recordings to mirror (a JSON list, "
                             "as Ham2Pose's data/pjm_left_videos.json, or one id per line)")
    parser.add_argument("--notation", choices=FINGERSPELLING_NOTATIONS, default="text",
                        help="text per fingerspelling row: the letter, or its SignWriting where the signwriting "
                             "package can spell it")
    parser.add_argument("--skeleton", choices=list(SKELETON_PRESETS), default="upper_body",
                        help="the points kept: the upper body and hands, or with the face's contours too")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_DATA), help="output folder")
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,validation,test fractions (by item)")
    parser.add_argument("--split-by", choices=SPLIT_BY, default="key",
                        help="key: hold out whole signs (same text and language); signer: hold out whole signers "
                             "(fractions of signers; every item needs a signer)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split assignment")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip missing/corrupt files instead of failing (each is named in the manifest)")
    parser.add_argument("--shard-rows", type=int, default=256,
                        help="rows per Parquet shard; one Ray task converts and writes one shard, so this bounds "
                             "each task's memory")
    parser.add_argument("--max-frames", type=int, default=MAX_FRAMES, metavar="N",
                        help="skip (and list in the manifest) sequences longer than N frames at the corpus's rate; "
                             "a model trained on the data holds N frames (ModelConfig.max_frames)")
    parser.add_argument("--max-length-ratio", type=finite_number, metavar="R",
                        help="skip recordings more than R times as long as their language's median (badly trimmed "
                             f"files); default {FINGERSPELLING_LENGTH_RATIO:g} for --source fingerspelling, else off")
    parser.add_argument("--fps", type=finite_number, metavar="N",
                        help="resample every recording to N frames per second (pose-format's interpolation); "
                             "default the recordings' median rate. The model's lengths are in this rate")
    parser.set_defaults(handler=prepare_command)


def prepare_command(args: argparse.Namespace) -> int:
    from t2p.data import PreparationError, prepare
    from t2p.data.sources import fingerspelling_items, index_items, lexicon_items
    try:
        fractions = tuple(float(part) for part in args.split.split(","))
    except ValueError:
        raise CommandError(f"--split must be three numbers like 0.8,0.1,0.1, got {args.split!r}") from None
    if args.source != "ham2pose" and (args.poses is not None or args.mirror_list is not None):
        raise CommandError("--poses and --mirror-list are for --source ham2pose")
    missing: list[str] = []
    if args.source == "fingerspelling":
        items = fingerspelling_items(args.notation)
    elif args.index is None:
        raise CommandError(f"--source {args.source} needs --index PATH")
    elif args.source == "lexicon":
        items = lexicon_items(args.index)
    elif args.source == "index":
        items = index_items(args.index)
    else:
        items, missing = _ham2pose(args)
    try:
        ratio = args.max_length_ratio
        if ratio is None and args.source == "fingerspelling":
            ratio = FINGERSPELLING_LENGTH_RATIO
        if ratio is not None and ratio <= 1:
            raise CommandError(f"--max-length-ratio must be > 1, got {ratio:g}")
        if args.fps is not None and not args.fps > 0:
            raise CommandError(f"--fps must be > 0, got {args.fps:g}")
        if args.max_frames < 1 or args.shard_rows < 1:
            raise CommandError(f"--max-frames and --shard-rows must be >= 1, got {args.max_frames} and "
                               f"{args.shard_rows}")
        manifest = prepare(items, args.out, source=args.source, skeleton=args.skeleton, fractions=fractions,
                           seed=args.seed, skip_bad=args.skip_bad, shard_rows=args.shard_rows, max_length_ratio=ratio,
                           split_by=args.split_by, missing=missing, fps=args.fps, max_frames=args.max_frames)
    except PreparationError as error:
        raise CommandError(str(error)) from None
    counts = manifest["counts"]
    print(f"prepared {sum(counts.values())} sequences into {args.out}: "
          + ", ".join(f"{split} {count}" for split, count in counts.items()))
    rate, dims = manifest["frame_rate"], manifest["dimensions"]
    print(f"{rate['fps']:g} fps ({rate['chosen']}; recorded at "
          + ", ".join(f"{fps} fps: {count}" for fps, count in rate["recordings"].items())
          + f"; {rate['resampled']} resampled), {dims['skeleton']}D skeleton")
    if dims["mixed"]:
        print(f"the recordings mix 2D and 3D ({', '.join(f'{d}D: {n}' for d, n in dims['recordings'].items())}): "
              f"the skeleton is 2D and {dims['depth_dropped']} 3D recording(s) lost their depth")
    if args.split_by == "signer":
        print("signers per split: " + ", ".join(f"{split} {count}" for split, count in manifest["signers"].items()))
    skipped = manifest["skipped"]
    if skipped:
        print(f"skipped {len(skipped)} item(s) (unreadable or too long; {manifest['max_frames']['skipped']} over "
              f"--max-frames {manifest['max_frames']['limit']}), all listed in {args.out}/manifest.json:")
        for entry in skipped[:SKIPS_SHOWN]:
            print(f"  {entry['path']}: {entry['reason']}")
        if len(skipped) > SKIPS_SHOWN:
            print(f"  ... and {len(skipped) - SKIPS_SHOWN} more")
    return 0


def _ham2pose(args: argparse.Namespace):
    from t2p.data.ham2pose import ham2pose_items
    if args.poses is None:
        raise CommandError("--source ham2pose needs --poses DIR, the folder of <id>.pose files")
    source = ham2pose_items(args.index, args.poses, args.mirror_list)
    total = len(source.items) + len(source.missing)
    print(f"ham2pose: {len(source.items)} of {total} ids in {args.index} have a .pose in {args.poses}"
          + (f"; {len(source.missing)} without one are left out (listed in the manifest)" if source.missing else ""))
    if source.unindexed:
        print(f"ham2pose: {len(source.unindexed)} .pose file(s) whose id {args.index} lacks are ignored "
              f"(the first: {source.unindexed[0]}.pose)")
    if args.mirror_list is not None:
        print(f"ham2pose: {sum(item.mirror for item in source.items)} recording(s) mirrored"
              + (f"; {len(source.unknown_mirrors)} id(s) of {args.mirror_list} are not in {args.index}"
                 if source.unknown_mirrors else ""))
    if not source.items:
        raise CommandError(f"no id of {args.index} has a .pose file in {args.poses} (expected <id>.pose, e.g. "
                           f"{source.missing[0]}.pose)")
    return source.items, source.missing
