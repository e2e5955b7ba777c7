"""Correction: a real recording with missing frames or keypoints, completed by the refinement model.

`correct_pose` is what the CLI (`t2p correct`) and Serve (`POST /v1/correct`) call: a recording in,
the same recording out with only its missing values filled. `correct` does the filling on a
sequence. The recording's observed values are the known part of the sequence: `generate` holds them fixed at
every refinement step (`Observed`) and the model fills the rest, reading the sign's text when
given. Observed values come back exactly as they were. Two baselines fill the same gaps without a
model: linear interpolation in time and a copy of the nearest observed frame. `evaluate_correction`
hides values of held-out recordings (runs of whole frames, and one hand for a few frames) and
scores all three on what was hidden.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from t2p.generation import Generated, Observed, generate
from t2p.model import T2PModel
from t2p.notation import SignText
from t2p.pose import PoseSequence, fill_in, to_sequence

if TYPE_CHECKING:
    from pose_format import Pose


@dataclass
class Corrected:
    data: np.ndarray        # (frames, joints, dims) shoulder-normalised
    confidence: np.ndarray  # (frames, joints): the observed confidence, 1 where filled and present
    filled: np.ndarray      # (frames, joints) True where the value was missing and is now the model's


def missing_mask(sequence: PoseSequence) -> np.ndarray:
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


def correct(model: T2PModel, sequence: PoseSequence, text: SignText | str | None = None,
            steps: int | None = None, generator: Callable[..., list[Generated]] = generate) -> Corrected:
    """Fill the missing frames and keypoints of `sequence`; observed values stay exactly as they are.
    `steps`: refinement steps, default `CORRECTION_STEPS`. `generator`: `generate`, or a function with
    its signature (Serve's sends each window to its batches)."""
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
            first_pose = (data[begin - 1], (confidence[begin - 1] > 0).astype(np.float32))
        else:
            first_pose = (sequence.data[begin + first], sequence.confidence[begin + first])
        (result,) = generator(model, [sign], first_poses=[first_pose], steps=steps, lengths=[end - begin],
                             observed=[Observed(sequence.data[begin:end], known.astype(np.float32))])
        window = slice(begin, end)
        data[window] = np.where(window_missing[..., None], result.data, sequence.data[window])
        confidence[window] = np.where(window_missing, result.confidence, sequence.confidence[window])
        filled[window] = window_missing & (result.confidence > 0)
    return Corrected(data, confidence, filled)


@dataclass
class CorrectedRecording:
    """A recording with its missing values filled, in the recording's own layout and coordinates."""
    pose: "Pose"         # every recorded value, point and the header as they were; the filled values added
    filled: np.ndarray   # (frames, joints of the model's skeleton) True where the model filled a value

    @property
    def filled_frames(self) -> int:
        return int(self.filled.any(axis=1).sum())


def correct_pose(model: T2PModel, recording: "Pose", text: SignText | str | None = None,
                 steps: int | None = None, generator: Callable[..., list[Generated]] = generate) -> CorrectedRecording:
    """`correct` on a pose-format recording: read onto the model's skeleton, filled, and only the
    filled values written back into the recording (`pose.fill_in`), so the rest of the file stays
    exactly as recorded. `generator`: as for `correct`."""
    sequence = to_sequence(recording, model.skeleton)
    corrected = correct(model, sequence, text, steps, generator)
    filled = replace(sequence, data=corrected.data, confidence=corrected.confidence)
    return CorrectedRecording(fill_in(recording, model.skeleton, filled, corrected.filled), corrected.filled)


def _longest_run(flags: np.ndarray) -> int:
    longest = current = 0
    for flag in flags:
        current = current + 1 if flag else 0
        longest = max(longest, current)
    return longest


# --- baselines ------------------------------------------------------------------------------------

def interpolate_linearly(sequence: PoseSequence) -> np.ndarray:
    """Missing values of each joint, linear in time between its observed frames (held at the ends)."""
    data = sequence.data.copy()
    times = np.arange(sequence.num_frames)
    for joint in range(data.shape[1]):
        seen = sequence.confidence[:, joint] > 0
        if seen.any() and not seen.all():
            for dim in range(data.shape[2]):
                data[~seen, joint, dim] = np.interp(times[~seen], times[seen], data[seen, joint, dim])
    return data


def copy_nearest_frame(sequence: PoseSequence) -> np.ndarray:
    """Missing values of each joint copied from the nearest frame where that joint was observed."""
    data = sequence.data.copy()
    times = np.arange(sequence.num_frames)
    for joint in range(data.shape[1]):
        seen = np.flatnonzero(sequence.confidence[:, joint] > 0)
        if seen.size and seen.size < len(times):
            nearest = seen[np.abs(times[:, None] - seen[None]).argmin(axis=1)]
            data[:, joint] = data[nearest, joint]
    return data


# --- evaluation ---------------------------------------------------------------------------------------

@dataclass
class Hidden:
    """A recording with values hidden, and which ones."""
    sequence: PoseSequence
    frames: np.ndarray  # (frames, joints) True: hidden as part of a dropped frame
    hand: np.ndarray    # (frames, joints) True: hidden as part of a lost hand


def hide(sequence: PoseSequence, hand_joints: dict[str, list[int]], rng: np.random.Generator,
         frame_share: float = 0.2) -> Hidden:
    """Hide `frame_share` of the frames in runs of 2-4 (never the first) and one present hand for
    5-15 frames, as a tracker loses them."""
    frames = sequence.num_frames
    observed = sequence.confidence > 0
    dropped = np.zeros(frames, bool)
    target = max(1, round(frame_share * frames))
    for _ in range(100):  # runs until the share is reached
        if dropped.sum() >= target or frames < 3:
            break
        length = int(rng.integers(2, 5))
        start = int(rng.integers(1, max(2, frames - length + 1)))
        dropped[start:start + length] = True
    frame_hidden = dropped[:, None] & observed
    hand_hidden = np.zeros_like(observed)
    present = [name for name, joints in hand_joints.items() if observed[:, joints].any(axis=1).mean() > 0.5]
    if present and frames >= 8:
        joints = hand_joints[present[int(rng.integers(len(present)))]]
        length = int(rng.integers(5, min(15, frames - 2) + 1))
        start = int(rng.integers(1, frames - length + 1))
        hand_hidden[start:start + length, joints] = True
        hand_hidden &= observed & ~frame_hidden
    confidence = np.where(frame_hidden | hand_hidden, 0.0, sequence.confidence).astype(np.float32)
    data = np.where((frame_hidden | hand_hidden)[..., None], 0.0, sequence.data).astype(np.float32)
    hidden = PoseSequence(data, confidence, sequence.fps, sequence.normalization, sequence.canvas)
    return Hidden(hidden, frame_hidden, hand_hidden)


@dataclass
class CorrectionReport:
    items: int
    errors: dict = field(default_factory=dict)  # method -> {"frames": mean error, "hand": ..., "all": ...}

    def to_markdown(self) -> str:
        lines = ["| method | hidden frames | hidden hand | all hidden values |", "|---|---|---|---|"]
        for method, scores in self.errors.items():
            lines.append(f"| {method} | {scores['frames']:.4f} | {scores['hand']:.4f} | {scores['all']:.4f} |")
        return "\n".join(lines)


def evaluate_correction(model: T2PModel, items: Sequence, seed: int = 0, steps: int | None = None,
                        use_text: bool = True, out_dir: str | Path | None = None) -> CorrectionReport:
    """Hide values of each item's recording (see `hide`), fill them with the model and both baselines,
    and report the mean joint error (shoulder widths) on the hidden values."""
    from tqdm import tqdm
    skeleton = model.skeleton
    hands = skeleton.hands()
    rng = np.random.default_rng(seed)
    errors: dict[str, dict[str, list[float]]] = {m: {"frames": [], "hand": []}
                                                 for m in ("model", "linear interpolation", "nearest frame")}
    for item in tqdm(items, desc="correct", unit="item", leave=False):
        truth = item.sequence
        hidden = hide(truth, hands, rng)
        filled = {"model": correct(model, hidden.sequence, item.sign if use_text else None, steps).data,
                  "linear interpolation": interpolate_linearly(hidden.sequence),
                  "nearest frame": copy_nearest_frame(hidden.sequence)}
        for method, data in filled.items():
            distance = np.linalg.norm(data - truth.data, axis=-1)
            for kind, mask in (("frames", hidden.frames), ("hand", hidden.hand)):
                errors[method][kind].extend(distance[mask].tolist())
    report = CorrectionReport(len(items))
    for method, kinds in errors.items():
        values = kinds["frames"] + kinds["hand"]
        report.errors[method] = {"frames": float(np.mean(kinds["frames"])) if kinds["frames"] else float("nan"),
                                 "hand": float(np.mean(kinds["hand"])) if kinds["hand"] else float("nan"),
                                 "all": float(np.mean(values)) if values else float("nan"),
                                 "hidden_values": len(values)}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "correction.json").write_text(json.dumps(asdict(report), indent=1))
        (out / "correction.md").write_text(
            f"# Correction: {len(items)} recordings, 20% of frames hidden in runs of 2-4 and one hand for "
            f"5-15 frames (seed {seed})\n\nMean joint error on the hidden values (shoulder widths):\n\n"
            + report.to_markdown() + "\n")
    return report
