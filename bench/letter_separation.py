"""How far apart the recordings themselves put two letters' hands: for each held-out item, the
handshape distance (`t2p.evaluation.handshape`) from its reference to the recording of the
other-text control's letter (`evaluate.other_items`: another letter, same language where there
is one), against the distance to the same letter recorded in another language (the retrieval
baseline's pick). Their ratio is what the recordings say about the other-text ratio `t2p evaluate`
reports for a model: a model as close to its reference as retrieval, drawing the other letter as
it was recorded, would score it (docs/quality.md, Round VI).

    python bench/letter_separation.py data/notation/signwriting --split validation
"""
from __future__ import annotations

import argparse

import numpy as np

from t2p.data import load_manifest, read_items
from t2p.evaluation.baselines import RetrievalBaseline
from t2p.evaluation.evaluate import other_items
from t2p.evaluation.handshape import handshape_distance
from t2p.evaluation.metrics import JointGroups
from t2p.pose import Skeleton


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+", help="prepared data folders (t2p prepare, bench/notation_data.py)")
    parser.add_argument("--split", default="validation")
    args = parser.parse_args()
    for data in args.data:
        items, training = read_items(data, args.split), read_items(data, "train")
        hands = JointGroups.of(Skeleton.from_dict(load_manifest(data)["skeleton"])).hand_shapes
        retrieval = RetrievalBaseline(training, hands)

        def distance(recording, reference) -> float:
            return handshape_distance(recording.sequence.data, reference.sequence.data, hands,
                                      reference.sequence.confidence, recording.sequence.confidence)
        other = np.array([distance(control, item) for item, control in zip(items, other_items(items))])
        same = np.array([distance(retrieval.closest(item.sign, item.gloss), item) for item in items])
        kept = ~np.isnan(other) & ~np.isnan(same)
        print(f"{data} ({args.split}, {kept.sum()} items): another letter's recording {other[kept].mean():.3f}, "
              f"the same letter in another language {same[kept].mean():.3f}, "
              f"ratio {other[kept].mean() / same[kept].mean():.2f}x")


if __name__ == "__main__":
    main()
