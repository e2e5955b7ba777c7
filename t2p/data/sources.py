"""Sources: real corpora as lists of `SourceItem`s, before preparation (`t2p.data.prepare`).

The fingerspelling lexicon shipped in spoken-to-signed, a lexicon folder in the spoken-to-signed
format (start/end segments, an optional signer column) and a generic index; Ham2Pose's layout is
`t2p.data.ham2pose`. Nothing here reads a `.pose` file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "validation", "test")
# the shipped fingerspelling lexicon has two badly trimmed files, 13x and 32x their language's median
# length: preparing it skips recordings over this many times the median (`prepare`'s max_length_ratio)
FINGERSPELLING_LENGTH_RATIO = 4.0
FINGERSPELLING_NOTATIONS = ("text", "signwriting")


@dataclass
class SourceItem:
    """One recording and what it signs, before preparation."""
    path: Path
    text: str
    notation: str
    language: str | None
    key: str                 # items with the same key always land in the same split
    gloss: str = ""          # the plain word/letter, for retrieval baselines
    split: str | None = None  # fixed by the index, or assigned by `prepare`
    signer: str | None = None  # who signed it, where the source says
    start_ms: int = 0        # the sign's segment of the recording (spoken-to-signed's start/end); 0 = whole
    end_ms: int = 0
    mirror: bool = False     # a left-handed signer's recording, mirrored to the right hand (pose.mirror)


def fingerspelling_lexicon_dir() -> Path:
    """The fingerspelling lexicon shipped inside the `spoken-to-signed` package."""
    from importlib.resources import files
    path = Path(str(files("spoken_to_signed").joinpath("assets", "fingerspelling_lexicon")))
    if not (path / "index.csv").is_file():
        raise FileNotFoundError(f"{path}/index.csv not found: is spoken-to-signed>=0.4 installed?")
    return path


def fingerspelling_items(notation: str = "text") -> list[SourceItem]:
    """The 600 fingerspelled letters of the spoken-to-signed lexicon (19 sign languages).

    The 26 `fsl` rows point at the `ase` recordings and are dropped. With notation "signwriting",
    only letters the `signwriting` package can spell for their language are kept.
    """
    from signwriting.fingerspelling.fingerspelling import spell
    root = fingerspelling_lexicon_dir()
    items = []
    for row in _read_rows(root / "index.csv"):
        language, letter = row["signed_language"], row["words"]
        if language == "fsl":
            continue
        text = letter
        if notation == "signwriting":
            try:
                # a fixed seed: without one `spell` draws one of a letter's variants at random, and
                # two preparations of the same lexicon gave different texts
                text = spell(letter, language, seed=0)
            except FileNotFoundError:  # the package has no alphabet (data/<language>.json) for this language
                text = None
            if not text:
                continue
        elif notation not in FINGERSPELLING_NOTATIONS:
            raise ValueError(f"the fingerspelling source offers notations {' and '.join(FINGERSPELLING_NOTATIONS)}, "
                             f"not {notation!r}")
        items.append(SourceItem(root / row["path"], text, notation, language, f"{language}:{letter}", letter))
    return items


def lexicon_items(index: str | Path) -> list[SourceItem]:
    """A folder in the spoken-to-signed lexicon format: path, spoken_language, signed_language,
    start, end, words, glosses, priority[, signer]. The text is the `words` column; `start`/`end`
    (milliseconds, 0 = whole file) cut the sign out of its recording as spoken-to-signed does."""
    index = Path(index)
    rows = _read_rows(index)
    _require_columns(index, rows, ["path", "signed_language", "words"])
    items = []
    for number, row in enumerate(rows, start=2 if index.suffix == ".csv" else 1):
        start_ms, end_ms = (_milliseconds(index, number, row, column) for column in ("start", "end"))
        if end_ms and end_ms <= start_ms:
            raise ValueError(f"{index}:{number}: end {end_ms} ms is not after start {start_ms} ms (0 = to the end)")
        items.append(SourceItem(index.parent / row["path"], row["words"], "text", row["signed_language"] or None,
                                f"{row['signed_language']}:{row['words']}", row.get("glosses") or row["words"],
                                signer=_signer(row), start_ms=start_ms, end_ms=end_ms))
    return items


def _signer(row: dict) -> str | None:
    value = row.get("signer")
    return None if value is None or str(value).strip() == "" else str(value).strip()


def _milliseconds(index: Path, number: int, row: dict, column: str) -> int:
    value = row.get(column)
    if value in (None, ""):
        return 0
    try:
        milliseconds = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{index}:{number}: {column} must be whole milliseconds, got {value!r}") from None
    if milliseconds < 0:
        raise ValueError(f"{index}:{number}: {column} must be >= 0 milliseconds, got {milliseconds}")
    return milliseconds


def index_items(index: str | Path) -> list[SourceItem]:
    """A generic index (.csv or .jsonl): path, text, notation, language[, split, signer]; paths relative to it."""
    index = Path(index)
    rows = _read_rows(index)
    _require_columns(index, rows, ["path", "text", "notation", "language"])
    items = []
    for number, row in enumerate(rows, start=2 if index.suffix == ".csv" else 1):
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise ValueError(f"{index}:{number}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        language = row.get("language") or None
        items.append(SourceItem(index.parent / row["path"], row["text"], row["notation"] or "text", language,
                                f"{language}:{row['text']}", row["text"], split, signer=_signer(row)))
    return items


def _read_rows(index: Path) -> list[dict]:
    """The rows of a .csv (a UTF-8 byte-order mark, as spreadsheets save one, is allowed) or .jsonl
    index, each a dict; a line that is not a JSON object is an error naming it."""
    import csv
    import json
    if not index.is_file():
        raise FileNotFoundError(f"index {index} not found")
    if index.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(index.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{index}:{number}: not valid JSON ({error.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{index}:{number}: expected a JSON object like {{\"path\": ..., \"text\": ...}}, "
                                     f"got {type(row).__name__}")
                rows.append(row)
        return rows
    try:
        with open(index, encoding="utf-8-sig", newline="") as handle:
            return list(csv.DictReader(handle))
    except UnicodeDecodeError as error:
        raise ValueError(f"{index}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _require_columns(index: Path, rows: list[dict], columns: list[str]) -> None:
    """Every row has every column, as text (a JSONL row may lack one, or hold a number or a list)."""
    if not rows:
        raise ValueError(f"{index} has no rows")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(f"{index} lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, rows[0]))}")
    first_line = 2 if index.suffix == ".csv" else 1
    for number, row in enumerate(rows, start=first_line):
        for column in columns:
            value = row.get(column)
            if value is None and column not in ("path", "text", "words"):
                continue  # an empty language or notation: none, or the default
            if not isinstance(value, str):
                got = "nothing" if value is None else type(value).__name__
                raise ValueError(f"{index}:{number}: {column} must be text, got {got}")
