"""Does the text choose the hand? A quick local fit (no Ray) and the neutral-start check, for
trying a change to the model or the loss in minutes before a full `t2p train` + `t2p evaluate`.

    python bench/hand_fit.py --steps 1500                                         # the defaults
    python bench/hand_fit.py --steps 1500 --set model.hand_relative=false --set train.hand_weight=0
    LIMIT=60 python bench/hand_fit.py --steps 600      # fit 60 training items only: can it memorise?

Trains with `t2p.training.loop.Learner`, the step `t2p train` runs, on the training split (its
weight average is what is scored, as `t2p train` exports it), and
at a third, two thirds and the end scores 60 training and the validation items from the neutral
start at their true length: handshape and DTW-MJE with the right text and with another letter's
text of the same language (`t2p.evaluation.evaluate.other_texts`). docs/quality.md (Round III) has its table.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from t2p.data import load_manifest, read_items
from t2p.data.shards import training_texts
from t2p.evaluation import JointGroups
from t2p.evaluation.evaluate import other_texts
from t2p.evaluation.handshape import handshape_distance
from t2p.evaluation.metrics import dtw_mje
from t2p.generation import SignRequest, generate
from t2p.model import ScheduleConfig, T2PModel
from t2p.notation import Vocabulary
from t2p.training import Learner, TrainConfig
from t2p.training.batches import Example
from t2p.training.job import model_config_from_manifest
from t2p.training.loop import local_batches
from t2p.training.validation import evenly_spaced


def score(model: T2PModel, items, hands) -> str:
    results = {}
    for kind, texts in (("right", [item.sign for item in items]), ("other", other_texts(items))):
        generated = generate(model, [SignRequest(text, length=item.sequence.num_frames)
                                     for text, item in zip(texts, items)])
        shapes = [handshape_distance(g.data, i.sequence.data, hands, i.sequence.confidence, g.confidence)
                  for g, i in zip(generated, items)]
        paths = [dtw_mje(g.data, i.sequence.data, i.sequence.confidence, predicted_confidence=g.confidence)
                 for g, i in zip(generated, items)]
        results[kind] = (float(np.nanmean(shapes)), float(np.nanmean(paths)))
    (shape, path), (other_shape, other_path) = results["right"], results["other"]
    return (f"handshape {shape:.3f} other {other_shape:.3f} ({other_shape / shape:.2f}x) | "
            f"DTW-MJE {path:.3f} other {other_path:.3f} ({other_path / path:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/fingerspelling")
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps")
    parser.add_argument("--set", action="append", default=[], metavar="{model,train,schedule}.KEY=VALUE")
    args = parser.parse_args()
    overrides = {"model": {}, "train": {}, "schedule": {}}
    for setting in args.set:
        key, value = setting.split("=", 1)
        where, key = key.split(".", 1)
        overrides[where][key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    manifest = load_manifest(args.data)
    config = model_config_from_manifest(manifest, known_texts=training_texts(args.data), **overrides["model"])
    model = T2PModel(config, ScheduleConfig(**overrides["schedule"]))
    train_config = TrainConfig(**overrides["train"])
    vocabulary = Vocabulary(tuple(config.vocabulary))
    training = read_items(args.data, "train")
    if os.environ.get("LIMIT"):
        training = evenly_spaced(training, int(os.environ["LIMIT"]))
    validation = read_items(args.data, "validation")
    examples = [Example(vocabulary.encode(i.sign), i.sequence) for i in training]
    generator = torch.Generator().manual_seed(train_config.seed)
    torch.manual_seed(train_config.seed)
    learner = Learner.create(model, train_config, args.steps)
    hands = JointGroups.of(model.skeleton).hand_shapes
    checks = sorted({args.steps // 3, 2 * args.steps // 3, args.steps})
    started, done = time.time(), 0
    for batch, lengths in local_batches(examples, train_config, generator, args.steps):
        learner.step(batch, lengths, generator)
        done += 1
        if done in checks:
            scored = learner.exported.eval()
            print(f"step {done} ({time.time() - started:.0f} s)")
            print(f"  60 training items: {score(scored, evenly_spaced(training, 60), hands)}")
            print(f"  validation:        {score(scored, validation, hands)}", flush=True)


if __name__ == "__main__":
    main()
