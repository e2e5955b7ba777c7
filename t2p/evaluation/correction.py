"""How well correction fills what a tracker loses: `t2p evaluate --task correct`.

`evaluate_correction` hides values of held-out recordings (runs of whole frames, and one hand for a
few frames, `hide`) and scores the model's correction (`t2p.generation.correction.correct`) and two
baselines that fill the same gaps without a model, linear interpolation in time and a copy of the
nearest observed frame, on what was hidden.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from t2p.config import write_json, write_text
from t2p.data import PreparedItem
from t2p.generation.correction import correct
from t2p.model import T2PModel
from t2p.pose import Hand, Keypoints, PoseSequence

# --- baselines ------------------------------------------------------------------------------------

def interpolate_linearly(sequence: Keypoints) -> np.ndarray:
    """Missing values of each joint, linear in time between its observed frames (held at the ends)."""
    data = sequence.data.copy()
    times = np.arange(sequence.num_frames)
    for joint in range(data.shape[1]):
        seen = sequence.confidence[:, joint] > 0
        if seen.any() and not seen.all():
            for dim in range(data.shape[2]):
                data[~seen, joint, dim] = np.interp(times[~seen], times[seen], data[seen, joint, dim])
    return data


def copy_nearest_frame(sequence: Keypoints) -> np.ndarray:
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


def hide(sequence: PoseSequence, hands: Sequence[Hand], rng: np.random.Generator,
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
    present = [hand for hand in hands if observed[:, list(hand.joints)].any(axis=1).mean() > 0.5]
    if present and frames >= 8:
        joints = list(present[int(rng.integers(len(present)))].joints)
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


def evaluate_correction(model: T2PModel, items: Sequence[PreparedItem], seed: int = 0, steps: int | None = None,
                        use_text: bool = True, out_dir: str | Path | None = None) -> CorrectionReport:
    """Hide values of each item's recording (see `hide`), fill them with the model and both baselines,
    and report the mean joint error (shoulder widths) on the hidden values."""
    from tqdm import tqdm
    hands = model.skeleton.hands()
    rng = np.random.default_rng(seed)
    errors: dict[str, dict[str, list[float]]] = {m: {"frames": [], "hand": []}
                                                 for m in ("model", "linear interpolation", "nearest frame")}
    for item in tqdm(items, desc="correct", unit="item", leave=False, disable=None):
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
        write_json(out / "correction.json", asdict(report))  # a recording set with no hidden hand has NaN: null
        text = (f"# Correction: {len(items)} recordings, 20% of frames hidden in runs of 2-4 and one hand for "
                f"5-15 frames (seed {seed})\n\nMean joint error on the hidden values (shoulder widths):\n\n"
                + report.to_markdown() + "\n")
        write_text(out / "correction.md", text)
    return report
