"""Close-ups of the signing hand at the middle frame, from the neutral start, for five letters:
the reference next to each model's output, with its handshape distance. Makes the pictures in
docs/quality.md.

    python bench/hand_closeups.py docs/images/hands.png "before=runs/r3/best" "after=runs/r4/best" --data data/c4
"""
from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from t2p.data import read_items  # noqa: E402
from t2p.evaluation.handshape import handshape_distance  # noqa: E402
from t2p.generation import generate  # noqa: E402
from t2p.model import T2PModel  # noqa: E402

# three held-out letters (a flat hand, a closed one, a thumb spread out) and two trained ones
LETTERS = (("test", "ase", "B"), ("test", "ase", "O"), ("test", "gsg", "L"), ("train", "ase", "W"), ("train", "ase", "V"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the picture (.png)")
    parser.add_argument("models", nargs="+", metavar="LABEL=MODEL_DIR")
    parser.add_argument("--data", default="data/fingerspelling")
    args = parser.parse_args()
    labels, models = zip(*(spec.split("=", 1) for spec in args.models))
    loaded = [T2PModel.load(model) for model in models]
    hands = [hand for hand in loaded[0].skeleton.hands() if hand.angles]
    items = {split: read_items(args.data, split) for split in ("test", "train")}
    figure, axes = plt.subplots(len(LETTERS), len(models) + 1, figsize=(2.2 * (len(models) + 1), 2.2 * len(LETTERS)))
    for row, (split, language, letter) in enumerate(LETTERS):
        item = next(i for i in items[split] if i.sign.language == language and i.sign.text == letter)
        reference = item.sequence
        hand = max(hands, key=lambda h: (reference.confidence[:, list(h.joints)] > 0).mean())  # the signing hand
        panels = [("reference", reference.data)]
        for label, model in zip(labels, loaded):
            (generated,) = generate(model, [item.sign])
            distance = handshape_distance(generated.data, reference.data, hands, reference.confidence, generated.confidence)
            panels.append((f"{label} hs {distance:.2f}", generated.data))
        for column, (title, data) in enumerate(panels):
            draw_hand(axes[row, column], data, hand,
                      f"{language} {letter} ({split})\n{title}" if column == 0 else title)
    figure.tight_layout()
    figure.savefig(args.out, dpi=80)
    print(args.out)


def draw_hand(axis, data, hand, title: str) -> None:
    """The bones of `hand`'s five digits at the middle frame of `data` (frames, joints, xyz),
    relative to its wrist, seen from the front."""
    middle = len(data) // 2
    points = data[middle, list(hand.joints)] - data[middle, hand.wrist]  # the hand from its wrist
    index = {joint: k for k, joint in enumerate(hand.joints)}
    for a, b, c, d in hand.angles[:15]:  # the bones of the five digits
        for start, end in ((a, b), (c, d)):
            axis.plot([points[index[start], 0], points[index[end], 0]],
                      [-points[index[start], 1], -points[index[end], 1]], "r-")
    axis.set_aspect("equal")
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title, fontsize=7)


if __name__ == "__main__":
    main()
