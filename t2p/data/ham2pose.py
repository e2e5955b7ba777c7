"""Ham2Pose's published layout as a t2p source (Shalev-Arkushin et al., CVPR 2023).

`data.json` maps an id to its HamNoSys (`hamnosys`, Unicode), gloss (`type_name`) and video URLs;
the poses are a folder of `<id>.pose` files in whatever layout they are (Ham2Pose's own: OpenPose
137 points, 2D, 25 fps). The file names no sign language: as Ham2Pose's own `get_lang` does, it
comes from the id (`pjm_*` Polish, `gsl_*` Greek, digits only: DGS Corpus types, anything else:
French). Ham2Pose mirrors its left-handed PJM signers (`data/pjm_left_videos.json`); `mirror_list`
takes such a list. Signers are not in `data.json`; an entry's own `signer` field is read where present.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from t2p.data.sources import SourceItem

# Ham2Pose's sources -> ISO 639-3 codes of their sign languages
LANGUAGES = {"dgs": "gsg", "gsl": "gss", "lsf": "fsl", "pjm": "pso"}


def source_of(sign_id: str) -> str:
    """The corpus an id comes from, by Ham2Pose's own rule (`test.py: get_lang`)."""
    if "pjm" in sign_id:
        return "pjm"
    if "gsl" in sign_id:
        return "gsl"
    return "dgs" if sign_id.isnumeric() else "lsf"


@dataclass
class Ham2PoseSource:
    items: list[SourceItem]
    missing: list[str]                                     # ids in data.json without a .pose file
    unindexed: list[str] = field(default_factory=list)     # .pose files whose id data.json lacks
    unknown_mirrors: list[str] = field(default_factory=list)  # mirror-list ids data.json lacks


def ham2pose_items(index: str | Path, poses: str | Path, mirror_list: str | Path | None = None) -> Ham2PoseSource:
    """One item per id of `index` (Ham2Pose's data.json) with a `<id>.pose` in `poses`; the text is
    its HamNoSys and the key its language and HamNoSys, so that signs transcribed alike (Ham2Pose's
    DUP_KEYS) share a split. Ids without a file are returned as `missing`, never an error."""
    index, poses = Path(index), Path(poses)
    entries = _read_index(index)
    if not poses.is_dir():
        raise FileNotFoundError(f"--poses {poses} is not a folder of <id>.pose files")
    mirrored = read_mirror_list(mirror_list) if mirror_list is not None else set()
    present = {path.stem for path in poses.glob("*.pose")}
    items, missing = [], []
    for sign_id, entry in entries.items():
        if sign_id not in present:
            missing.append(sign_id)
            continue
        hamnosys = entry.get("hamnosys") if isinstance(entry, dict) else None
        if not hamnosys:
            raise ValueError(f"{index}: entry {sign_id!r} has no hamnosys")
        language = LANGUAGES[source_of(sign_id)]
        signer = entry.get("signer")
        items.append(SourceItem(poses / f"{sign_id}.pose", hamnosys, "hamnosys", language, f"{language}:{hamnosys}",
                                entry.get("type_name") or sign_id,
                                signer=None if signer in (None, "") else str(signer), mirror=sign_id in mirrored))
    return Ham2PoseSource(items, missing, sorted(present - set(entries)), sorted(mirrored - set(entries)))


def _read_index(index: Path) -> dict:
    if not index.is_file():
        raise FileNotFoundError(f"index {index} not found")
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{index}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"{index}: expected Ham2Pose's data.json, an object of id -> {{hamnosys, type_name, ...}}")
    return entries


def read_mirror_list(path: str | Path) -> set[str]:
    """Ids to mirror: a JSON list (as Ham2Pose's pjm_left_videos.json) or one id per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mirror list {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        ids = json.loads(text)
    except json.JSONDecodeError:
        ids = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not isinstance(ids, list) or not all(isinstance(i, (str, int)) for i in ids):
        raise ValueError(f"{path}: a mirror list is a JSON list of ids or one id per line")
    return {str(i) for i in ids}
