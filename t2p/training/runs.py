"""What a training run and a sweep write, written the same way: a folder replaced whole (best/),
tables as CSV, and every file written whole (`t2p.config.written_whole`), so that a reader never
sees half of one."""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Callable

from t2p.config import write_text


def replace_folder(destination: Path, fill: Callable[[Path], None]) -> Path:
    """`destination` replaced by a folder that `fill(staging)` writes (e.g. copies a model into):
    written under `<destination>.partial` first, so that a failure leaves the old folder as it was."""
    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    fill(staging)
    shutil.rmtree(destination, ignore_errors=True)
    staging.replace(destination)
    return destination


def copy_folder(source: Path, destination: Path) -> Path:
    """A copy of `source` as `destination`, replacing it whole (`replace_folder`)."""
    return replace_folder(destination, lambda staging: shutil.copytree(source, staging))


def write_csv(path: Path, rows: list[dict]) -> Path:
    """`rows` as a CSV table with every key any row has (in order of first appearance), written whole."""
    columns = list(dict.fromkeys(name for row in rows for name in row))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, table.getvalue())
