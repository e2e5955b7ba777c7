"""Validation: the real generation code, scored with the evaluation metric, and the choice of
the steps and guidance a trained model is saved with."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from t2p.data import PreparedItem
from t2p.evaluation import JointGroups
from t2p.evaluation.baselines import static_baseline
from t2p.evaluation.handshape import handshape_distance
from t2p.evaluation.metrics import dtw_mje, length_error
from t2p.generation import SignRequest, generate
from t2p.model import ScheduleConfig, T2PModel
from t2p.training.config import DEFAULT_SELECTION, SELECTION_METRICS


def evenly_spaced(items: Sequence, count: int) -> list:
    """`count` items evenly spaced over `items` (all when there are fewer): a validation subset that
    is not just the first language of a sorted corpus."""
    if count >= len(items):
        return list(items)
    return [items[int(i * len(items) / count)] for i in range(count)]


def validation_metrics(model: T2PModel, items: Sequence[PreparedItem], steps: int, guidance: float | None = None,
                       batch_size: int = 64) -> dict[str, float]:
    """Mean DTW-MJE of generated vs reference sequences (reference first pose, predicted length),
    the same for the static baseline, the mean absolute length error in frames, and DTW-MJE and
    the handshape distance from the neutral start (no first pose: only the text tells the signs apart)."""
    if not items:
        return {}
    hands = JointGroups.of(model.skeleton).hand_shapes
    errors, static_errors, length_errors, neutral_errors, neutral_shapes = [], [], [], [], []
    for begin in range(0, len(items), batch_size):
        chunk = items[begin:begin + batch_size]
        generated = generate(model, [SignRequest(item.sign, first_pose=item.sequence, steps=steps, guidance=guidance)
                                     for item in chunk])
        from_neutral = generate(model, [SignRequest(item.sign, steps=steps, guidance=guidance) for item in chunk])
        for item, sequence, neutral in zip(chunk, generated, from_neutral):
            reference = item.sequence
            # as `t2p evaluate` scores it: joints the model predicts absent are not trajectories
            errors.append(dtw_mje(sequence.data, reference.data, reference.confidence,
                                  predicted_confidence=sequence.confidence))
            static, _ = static_baseline(reference.data[0], reference.num_frames)
            static_errors.append(dtw_mje(static, reference.data, reference.confidence))
            length_errors.append(length_error(sequence.data, reference.data))
            neutral_errors.append(dtw_mje(neutral.data, reference.data, reference.confidence,
                                          predicted_confidence=neutral.confidence))
            neutral_shapes.append(handshape_distance(neutral.data, reference.data, hands, reference.confidence,
                                                     neutral.confidence))
    return {"val_dtw_mje": float(np.nanmean(errors)), "val_static_dtw_mje": float(np.nanmean(static_errors)),
            "val_length_error": float(np.mean(length_errors)),
            "val_neutral_dtw_mje": float(np.nanmean(neutral_errors)),
            "val_neutral_handshape": float(np.nanmean(neutral_shapes)) if np.isfinite(neutral_shapes).any()
            else float("nan")}


CALIBRATION_STEPS = (1, 3, 10)
CALIBRATION_GUIDANCE = (1.0, 2.0)
CALIBRATION_TOLERANCE = 0.01  # a setting within 1% of the best validation score counts as as good


def choose_generation_defaults(model: T2PModel, items: Sequence[PreparedItem],
                               steps: Sequence[int] = CALIBRATION_STEPS,
                               guidance: Sequence[float] = CALIBRATION_GUIDANCE,
                               metric: str = DEFAULT_SELECTION) -> tuple[ScheduleConfig, list[dict]]:
    """Score every (steps, guidance) on validation items and choose the cheapest good one as the
    model's default: the fewest steps (then the least guidance) within CALIBRATION_TOLERANCE of the
    lowest `metric` (one of SELECTION_METRICS). Steps cost time linearly, and on the default data 1
    step scores within 1% of 10 (docs/quality.md): exact ties almost never happen, so a strict
    minimum paid 10x the time for noise. Returns the model's schedule with the chosen defaults
    (the model itself is left as it is: `save_schedule` writes it) and the table."""
    if metric not in SELECTION_METRICS:
        raise ValueError(f"unknown selection metric {metric!r}; choose from {', '.join(SELECTION_METRICS)}")
    table = []
    for step_count in steps:
        for scale in guidance:
            metrics = validation_metrics(model, items, step_count, scale)
            table.append({"steps": step_count, "guidance": scale, **metrics})
    lowest = min(row[metric] for row in table)
    good = [row for row in table if row[metric] <= lowest * (1 + CALIBRATION_TOLERANCE)]
    best = min(good, key=lambda row: (row["steps"], abs(row["guidance"] - 1), row[metric]))
    for row in table:
        row["chosen"] = row is best
    return replace(model.schedule_config, steps=best["steps"], guidance=best["guidance"]), table
