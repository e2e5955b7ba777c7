"""Composition joins three ways on a split (default validation): signs whole, cut at their connection
points, and cut with the joins smoothed (what `compose` does). docs/quality.md, "Joins".

    python bench/compose_variants.py --model runs/default/best --data data/fingerspelling --split validation
"""
import argparse
import functools

import t2p.evaluation.joins as joins
from t2p.data import read_items
from t2p.generation.compose import compose
from t2p.model import T2PModel

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="runs/default/best")
parser.add_argument("--data", default="data/fingerspelling")
parser.add_argument("--split", default="validation")
args = parser.parse_args()
model = T2PModel.load(args.model)
items = read_items(args.data, args.split)
for name, options in [("whole, not smoothed", dict(cut_at_connections=False, smooth=False)),
                      ("cut, not smoothed", dict(smooth=False)), ("cut, smoothed (landed)", {})]:
    joins.compose = functools.partial(compose, **options)  # evaluate_composition's own compose, varied
    report = joins.evaluate_composition(model, items)
    row = report.joins["t2p (generated transitions)"]; gen = report.joins["t2p, generated signs"]
    print(f"{name}: recorded signs within {row['within_recorded']:.0%} of {row['joins']} (speed rank {row['speed']['rank']:.2f}, jerk rank {row['jerk']['rank']:.2f}); generated signs within {gen['within_recorded']:.0%}; s2s {report.joins['spoken-to-signed concatenation']['within_recorded']:.0%}", flush=True)
