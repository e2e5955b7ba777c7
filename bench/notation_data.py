"""The fingerspelled letters that SignWriting covers, prepared twice with the same keys and splits:
once as SignWriting (handshape symbols shared across languages), once as plain letters. Train and
evaluate each the same way to see which notation carries a handshape to an unseen (language,
letter) (issue 17 item 5; docs/quality.md has the table).

    python bench/notation_data.py --out data/notation
    t2p train --data data/notation/signwriting --out runs/notation_sw
    t2p train --data data/notation/text --out runs/notation_text
    t2p evaluate --model runs/notation_sw/best --data data/notation/signwriting --split validation --out reports/notation_sw
"""
from __future__ import annotations

import argparse
from pathlib import Path

from t2p.data import prepare
from t2p.data.sources import FINGERSPELLING_LENGTH_RATIO, fingerspelling_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/notation", help="writes OUT/signwriting and OUT/text")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    args = parser.parse_args()
    signwriting = fingerspelling_items("signwriting")
    covered = {item.key for item in signwriting}
    text = [item for item in fingerspelling_items("text") if item.key in covered]
    for name, items in (("signwriting", signwriting), ("text", text)):
        manifest = prepare(items, Path(args.out) / name, source="fingerspelling", seed=args.seed,
                           max_length_ratio=FINGERSPELLING_LENGTH_RATIO)
        print(f"{name}: {len(items)} letters in {len({i.language for i in items})} languages, {manifest['counts']}")


if __name__ == "__main__":
    main()
