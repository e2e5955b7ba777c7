"""A picture of handshape edits: training signs in SignWriting, each generated from its own notation
and from the notation with its hand symbol swapped for another (everything else kept), beside a
recording of the sign and one of a letter that carries the swapped-in handshape. Close-ups of the
signing hand at the middle frame, relative to the wrist, with handshape distances `hs` (lower is
closer) to the recordings carrying the swapped-in handshape. For docs/quality.md, Round V.

    python bench/notation_data.py --out data/notation
    t2p train --data data/notation/signwriting --out runs/notation_sw
    python bench/notation_edit_picture.py docs/images/notation_edit.png --model runs/notation_sw/best \
        --data data/notation/signwriting
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.hand_closeups import draw_hand  # noqa: E402
from t2p.data import read_items  # noqa: E402
from t2p.evaluation.handshape import handshape_distance  # noqa: E402
from t2p.evaluation.notation import handshapes, with_handshape  # noqa: E402
from t2p.generation import generate  # noqa: E402
from t2p.model import T2PModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the picture (.png)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="data/notation/signwriting")
    parser.add_argument("--signs", type=int, default=4, help="rows: training signs edited")
    parser.add_argument("--to", default="1f7", help="the swapped-in SignWriting hand base (1f7: a fist, thumb out)")
    args = parser.parse_args()
    model = T2PModel.load(args.model)
    hands = [hand for hand in model.skeleton.hands() if hand.angles]
    training = read_items(args.data, "train")
    carriers = defaultdict(list)
    for item in training:
        for handshape in set(handshapes(item.sign)):
            carriers[handshape].append(item)
    if args.to not in carriers:
        raise SystemExit(f"no training recording carries S{args.to}; try one of {sorted(carriers)[:12]}")
    # signs whose own handshape is far from the swapped-in one, so that the move is visible
    candidates = [item for item in training if handshapes(item.sign) and args.to not in handshapes(item.sign)]
    chosen = [candidates[k] for k in np.linspace(0, len(candidates) - 1, args.signs).astype(int)]
    carrier = carriers[args.to][0]
    unedited = generate(model, [item.sign for item in chosen])
    edited = generate(model, [with_handshape(item.sign, args.to) for item in chosen])

    def to_carriers(data, confidence) -> float:
        return float(np.nanmean([handshape_distance(data, other.sequence.data, hands, other.sequence.confidence, confidence)
                                 for other in carriers[args.to][:8]]))

    figure, axes = plt.subplots(len(chosen), 4, figsize=(2.3 * 4, 2.3 * len(chosen)), squeeze=False)
    for row, (item, before, after) in enumerate(zip(chosen, unedited, edited)):
        reference = item.sequence
        panels = [(f"{item.sign.language} {item.gloss or ''} recording\nS{handshapes(item.sign)[0]}", reference),
                  (f"generated\nhs to S{args.to} {to_carriers(before.data, before.confidence):.2f}", reference),
                  (f"hand edited to S{args.to}\nhs to S{args.to} {to_carriers(after.data, after.confidence):.2f}", reference),
                  (f"{carrier.sign.language} {carrier.gloss or ''} recording\nS{args.to}", carrier.sequence)]
        for column, ((title, recording), data) in enumerate(zip(panels, (reference.data, before.data, after.data,
                                                                         carrier.sequence.data))):
            # the signing hand: the one the recording tracks most (the sign's own for its outputs)
            hand = max(hands, key=lambda h: (recording.confidence[:, list(h.joints)] > 0).mean())
            draw_hand(axes[row, column], data, hand, title)
    figure.tight_layout()
    figure.savefig(args.out, dpi=80)
    print(args.out)


if __name__ == "__main__":
    main()
