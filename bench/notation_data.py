"""The fingerspelled letters that SignWriting covers, prepared with the same keys and splits as
SignWriting read by its parts (OUT/signwriting: handshape symbols shared across languages), as
SignWriting read as whole tokens, the way models before parts read it (OUT/signwriting_tokens:
the same shards, another vocabulary), and as plain letters (OUT/text). Train and evaluate each the
same way to see which carries a handshape to an unseen (language, letter) (docs/quality.md,
Round V, has the tables).

    python bench/notation_data.py --out data/notation --seed 0
    t2p train --data data/notation/signwriting --out runs/notation_sw
    t2p train --data data/notation/text --out runs/notation_text
    t2p evaluate --model runs/notation_sw/best --data data/notation/signwriting --split validation --out reports/notation_sw
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from t2p.data import prepare
from t2p.data.sources import FINGERSPELLING_LENGTH_RATIO, fingerspelling_items
from t2p.notation import SignText, Vocabulary


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
    # the same shards, the vocabulary of whole tokens (what SignWriting was before parts)
    tokens = Path(args.out) / "signwriting_tokens"
    shutil.rmtree(tokens, ignore_errors=True)
    shutil.copytree(Path(args.out) / "signwriting", tokens)
    manifest = json.loads((tokens / "manifest.json").read_text())
    manifest["vocabulary"] = list(Vocabulary.build((SignText(item.text, item.notation, item.language)
                                                    for item in signwriting), parts=False).tokens)
    (tokens / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1))
    print(f"signwriting_tokens: the same shards, {len(manifest['vocabulary'])} whole tokens")


if __name__ == "__main__":
    main()
