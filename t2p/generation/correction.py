"""Correction: a real recording with missing frames or keypoints, completed by the refinement model.

`correct_pose` is what the CLI (`t2p correct`) and Serve (`POST /v1/correct`) call: a recording in,
the same recording out with only its missing values filled. `correct` does the filling on a
sequence. The recording's observed values are the known part of the sequence: generation holds
them fixed at every refinement step (`SignRequest.observed`) and the model fills the rest, reading
the sign's text when given. Observed values come back exactly as they were. How well it fills
hidden values against interpolation: `t2p.evaluation.correction`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from t2p.generation.loop import generate
from t2p.generation.request import Generator, SignRequest
from t2p.model import T2PModel
from t2p.notation import SignText
from t2p.pose import Keypoints, Pose, fill_in, to_sequence


@dataclass
class Corrected(Keypoints):
    """A sequence completed: the observed confidence, 1 where filled and present, and which values were filled."""
    filled: np.ndarray  # (frames, joints) True where the value was missing and is now the model's


def missing_mask(sequence: Keypoints) -> np.ndarray:
    """(frames, joints) True where a value is missing; joints never seen in the whole recording (a
    hand that is not part of the sign) are not missing, they are absent."""
    observed = sequence.confidence > 0
    if not observed.any():
        raise ValueError("the recording has no observed keypoints in any frame: nothing to correct from")
    return ~observed & observed.any(axis=0, keepdims=True)


# Filling gaps between observed values needs fewer steps than generating a whole sign: on the
# validation split (hidden frames and a lost hand, `evaluate_correction`), the quickstart model's error
# on the hidden values was 0.156 at 1 step, 0.160 at 3 and 0.163 at 10 (docs/quality.md)
CORRECTION_STEPS = 1


def correct(model: T2PModel, sequence: Keypoints, text: SignText | str | None = None,
            steps: int | None = None, generator: Generator = generate) -> Corrected:
    """Fill the missing frames and keypoints of `sequence`; observed values stay exactly as they are.
    `steps`: refinement steps, default `CORRECTION_STEPS`. `generator`: `generate`, or a function
    like it (Serve's sends each window to its batches)."""
    steps = CORRECTION_STEPS if steps is None else steps
    missing = missing_mask(sequence)
    frames = sequence.num_frames
    limit = model.config.max_frames
    longest_gap = _longest_run(~(sequence.confidence > 0).any(axis=1))
    if longest_gap >= limit:
        raise ValueError(f"a gap of {longest_gap} frames with nothing observed; the model fills at most "
                         f"{limit - 1} frames at a time")
    sign = text if isinstance(text, SignText) else SignText(text or "", model.config.default_notation)
    data = sequence.data.copy()
    confidence = sequence.confidence.copy()
    filled = np.zeros_like(missing)
    # windows of the model's length; each starts from its first frame that has observed values
    for begin in range(0, frames, limit):
        end = min(frames, begin + limit)
        window_missing = missing[begin:end]
        if not window_missing.any():
            continue
        known = sequence.confidence[begin:end] > 0
        first = int(np.argmax(known.any(axis=1)))
        if not known.any():  # a window with nothing observed: continue from the previous window's values
            known = np.zeros_like(known)
            first_pose = Keypoints(data[begin - 1:begin], (confidence[begin - 1:begin] > 0).astype(np.float32))
        else:
            first_pose = sequence.frames(begin + first, begin + first + 1)
        (result,) = generator(model, [SignRequest(sign, first_pose=first_pose, steps=steps, length=end - begin,
                                                  observed=Keypoints(sequence.data[begin:end],
                                                                     known.astype(np.float32)))])
        window = slice(begin, end)
        data[window] = np.where(window_missing[..., None], result.data, sequence.data[window])
        confidence[window] = np.where(window_missing, result.confidence, sequence.confidence[window])
        filled[window] = window_missing & (result.confidence > 0)
    return Corrected(data, confidence, filled)


@dataclass
class CorrectedRecording:
    """A recording with its missing values filled, in the recording's own layout and coordinates."""
    pose: Pose           # every recorded value, point and the header as they were; the filled values added
    filled: np.ndarray   # (frames, joints of the model's skeleton) True where the model filled a value

    @property
    def filled_frames(self) -> int:
        return int(self.filled.any(axis=1).sum())


def correct_pose(model: T2PModel, recording: Pose, text: SignText | str | None = None,
                 steps: int | None = None, generator: Generator = generate) -> CorrectedRecording:
    """`correct` on a pose-format recording: read onto the model's skeleton, filled, and only the
    filled values written back into the recording (`pose.fill_in`), so the rest of the file stays
    exactly as recorded. `generator`: as for `correct`."""
    sequence = to_sequence(recording, model.skeleton)
    corrected = correct(model, sequence, text, steps, generator)
    filled = replace(sequence, data=corrected.data, confidence=corrected.confidence)  # a copy, in the recording's space
    return CorrectedRecording(fill_in(recording, model.skeleton, filled, corrected.filled), corrected.filled)


def _longest_run(flags: np.ndarray) -> int:
    longest = current = 0
    for flag in flags:
        current = current + 1 if flag else 0
        longest = max(longest, current)
    return longest


