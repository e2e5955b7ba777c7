"""What a notation carries, for data written in SignWriting or HamNoSys:

- **seen and unseen strings**: held-out items whose exact notation string was trained on (under
  another language: the same drawing of another language's letter) against those whose string is
  new. A model that reads the notation puts the first near the training recordings spelled by that
  string, and handles the second from the string's parts;
- **edits** (a counterfactual test on real data): a trained sign's handshape symbol swapped for
  another handshape symbol of the training data, the rest of its notation kept. The hand should
  move toward the recordings that carry the swapped-in handshape while the arm's path stays. A
  notation-blind model does not move the hand; a model that memorised whole strings meets a string
  it never saw and does not know what changed.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from t2p.data import PreparedItem
from t2p.evaluation.handshape import handshape_distance
from t2p.evaluation.metrics import JointGroups, dtw_mje
from t2p.generation import SignRequest, generate
from t2p.model import T2PModel
from t2p.notation import HAMNOSYS_CLASS, SignText, hamnosys_symbols, signwriting_category
from t2p.pose import Keypoints

NOTATIONS_WITH_PARTS = ("signwriting", "hamnosys")
_FSW_SYMBOL = re.compile(r"S([123][0-9a-f]{2})([0-5][0-9a-f])")


def handshapes(sign: SignText) -> list[str]:
    """The handshape symbols of a sign, in order: SignWriting hand bases (`14c`), HamNoSys
    handshape symbol names."""
    if sign.notation == "signwriting":
        from t2p.notation import signwriting_symbols
        return [symbol[0][1:4] for symbol in signwriting_symbols(sign.text)
                if not isinstance(symbol, str) and signwriting_category(int(symbol[0][1:4], 16)) == "hand"]
    if sign.notation == "hamnosys":
        from t2p.notation import tokenize_hamnosys
        return [name for name in tokenize_hamnosys(sign.text) if HAMNOSYS_CLASS[name] == "handshape"]
    return []


def with_handshape(sign: SignText, handshape: str) -> SignText:
    """The sign with its first handshape symbol replaced by `handshape` (a SignWriting base or a
    HamNoSys handshape name), everything else of its notation kept (fill, rotation and place of a
    SignWriting symbol; the modifiers after a HamNoSys handshape)."""
    if sign.notation == "signwriting":
        from signwriting.formats.swu import is_swu
        from signwriting.formats.swu_to_fsw import swu2fsw
        text = swu2fsw(sign.text) if is_swu(sign.text.strip()) else sign.text
        for match in _FSW_SYMBOL.finditer(text):
            if signwriting_category(int(match[1], 16)) == "hand":
                return SignText(text[:match.start(1)] + handshape + text[match.end(1):], sign.notation, sign.language)
        raise ValueError(f"no hand symbol in {sign.text!r}")
    if sign.notation == "hamnosys":
        from t2p.notation import tokenize_hamnosys
        names = tokenize_hamnosys(sign.text)
        first = next(i for i, name in enumerate(names) if HAMNOSYS_CLASS[name] == "handshape")
        names[first] = handshape
        characters = hamnosys_symbols()
        return SignText("".join(characters[name] for name in names), sign.notation, sign.language)
    raise ValueError(f"{sign.notation}: no handshape symbols to edit")


@dataclass
class StringSplit:
    """Held-out items by whether their notation string was trained on, with the handshape distance
    of the model (and of its other-text control) per item, and, for a seen string, of the training
    recordings spelled by it."""
    seen: dict
    unseen: dict

    def to_dict(self) -> dict:
        return {"seen": self.seen, "unseen": self.unseen}


def string_split(items: Sequence[PreparedItem], training: Sequence[PreparedItem], model_scores: Sequence[float],
                 control_scores: Sequence[float], groups: JointGroups) -> StringSplit:
    """See `StringSplit`; `model_scores` and `control_scores`: the handshape distance of each item."""
    by_string = defaultdict(list)
    for item in training:
        by_string[item.sign.text].append(item)
    rows: dict[str, dict[str, list[float]]] = {"seen": defaultdict(list), "unseen": defaultdict(list)}
    for item, model_score, control_score in zip(items, model_scores, control_scores):
        spelled = by_string.get(item.sign.text, [])
        row = rows["seen" if spelled else "unseen"]
        row["model"].append(model_score)
        row["other_text"].append(control_score)
        if spelled:
            reference = item.sequence
            row["same_string_recordings"].append(float(np.nanmean([
                handshape_distance(recording.sequence.data, reference.data, groups.hand_shapes, reference.confidence,
                                   recording.sequence.confidence) for recording in spelled])))
    summary = {}
    for name, row in rows.items():
        summary[name] = {"items": len(row["model"]), **{system: float(np.nanmean(values)) if values else float("nan")
                                                        for system, values in row.items()}}
    return StringSplit(summary["seen"], summary["unseen"])


def edit_test(model: T2PModel, training: Sequence[PreparedItem], groups: JointGroups, steps: int | None = None,
              targets_per_sign: int = 2, limit: int = 60) -> dict:
    """The counterfactual test (see the module's docstring) on up to `limit` training signs with a
    handshape symbol, each edited to the `targets_per_sign` handshapes of the training data that
    the most recordings carry (other than its own), all from the neutral start. Per edit: the
    handshape distance to the recordings that carry the swapped-in handshape, of the edited and of
    the unedited output, and the arm's DTW-MJE between the two outputs (against the unedited
    output's own arm error: an edit that moves the arm less than that leaves the path)."""
    carriers = defaultdict(list)
    for item in training:
        for handshape in set(handshapes(item.sign)):
            carriers[handshape].append(item)
    common = sorted(carriers, key=lambda handshape: -len(carriers[handshape]))
    edits = []
    for item in training:
        own = handshapes(item.sign)
        if not own:
            continue
        for target in [handshape for handshape in common if handshape not in own][:targets_per_sign]:
            edits.append((item, target))
        if len({id(item) for item, _ in edits}) >= limit:
            break
    if not edits:
        return {"edits": 0}
    signs = [item.sign for item, _ in edits]
    edited_signs = [with_handshape(item.sign, target) for item, target in edits]
    unedited = _generate(model, signs, steps)
    edited = _generate(model, edited_signs, steps)
    arm = [joint for pair in groups.signing_arms for joint in pair]
    rows = []
    for (item, target), before, after in zip(edits, unedited, edited):
        recordings = [recording for recording in carriers[target] if recording is not item][:8]
        toward_before = _mean_handshape(before, recordings, groups)
        toward_after = _mean_handshape(after, recordings, groups)
        reference = item.sequence
        rows.append({"toward_before": toward_before, "toward_after": toward_after,
                     "arm_moved": dtw_mje(after.data[:, arm], before.data[:, arm]) if arm else float("nan"),
                     "arm_error": dtw_mje(before.data[:, arm], reference.data[:, arm], reference.confidence[:, arm])
                     if arm else float("nan")})
    toward_before = np.array([row["toward_before"] for row in rows])
    toward_after = np.array([row["toward_after"] for row in rows])
    return {"edits": len(rows), "signs": len({id(item) for item, _ in edits}),
            "to_carriers_unedited": float(np.nanmean(toward_before)),
            "to_carriers_edited": float(np.nanmean(toward_after)),
            "moved_toward_share": float(np.nanmean(toward_after < toward_before)),
            "arm_moved": float(np.nanmean([row["arm_moved"] for row in rows])),
            "arm_error": float(np.nanmean([row["arm_error"] for row in rows]))}


def _generate(model: T2PModel, signs: Sequence[SignText], steps: int | None, batch_size: int = 32) -> list[Keypoints]:
    requests = [SignRequest(sign, steps=steps) for sign in signs]
    return [output for begin in range(0, len(requests), batch_size)
            for output in generate(model, requests[begin:begin + batch_size])]


def _mean_handshape(output: Keypoints, recordings: Sequence[PreparedItem], groups: JointGroups) -> float:
    """The output's handshape distance to each recording (as the reference), mean."""
    return float(np.nanmean([handshape_distance(output.data, recording.sequence.data, groups.hand_shapes,
                                                recording.sequence.confidence, output.confidence)
                             for recording in recordings])) if recordings else float("nan")
