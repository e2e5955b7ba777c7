"""W&B tracking of a training run, offline: what `t2p train --wandb` writes, read back from disk.

No Ray and no network: the logger is called as rank 0 of the Train loop calls it.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from t2p.model import ScheduleConfig
from t2p.training import TrainConfig, TrainingJob
from t2p.training.progress import wandb_logger

wandb = pytest.importorskip("wandb")


def wandb_records(path: Path):
    """The records of a `.wandb` file: a 7-byte W&B header, then LevelDB-log framing (32 KiB
    blocks, each chunk with a 7-byte header) of wandb's own protobuf `Record`s. wandb >= 0.19 has
    no Python reader of its own (wandb-core reads these files)."""
    from wandb.proto.wandb_internal_pb2 import Record
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending = 32 * 1024, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        position += 7
        if kind == 0:
            break
        pending += data[position:position + length]
        position += length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            yield Record.FromString(pending)
            pending = b""


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def test_an_offline_wandb_run_holds_the_config_and_every_epochs_metrics(tmp_path, monkeypatch):
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                        "WANDB_CONFIG_DIR": str(tmp_path / "config"), "WANDB_CACHE_DIR": str(tmp_path / "cache"),
                        "WANDB_DATA_DIR": str(tmp_path / "data"), "WANDB_START_METHOD": "thread"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "run"
    out.mkdir()
    job = TrainingJob(data=str(tmp_path / "unused"), out=str(out), wandb=True)
    config = {"train_config": TrainConfig(epochs=2).to_dict(), "schedule_config": ScheduleConfig(steps=3).to_dict(),
              "model_config": {"d_model": 64, "heads": 4, "vocabulary": ["<pad>", "a"], "pose_mean": [0.0],
                               "known_texts": {"": ["a"]}}}
    epochs = [{"epoch": 0, "train_loss": 2.5, "learning_rate": 1e-3, "val_dtw_mje": 0.42},
              {"epoch": 1, "train_loss": 1.25, "learning_rate": 5e-5, "val_dtw_mje": 0.31}]

    run = wandb_logger(job, config)
    try:
        assert run.offline
        for metrics in epochs:
            run.log(metrics, step=metrics["epoch"])
        run.finish()
    finally:
        wandb.teardown()

    (folder,) = (out / "wandb").glob("offline-run-*")
    (file,) = folder.glob("run-*.wandb")
    records = list(wandb_records(file))
    kinds = [record.WhichOneof("record_type") for record in records]
    assert kinds[0] == "header" and "exit" in kinds

    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    assert [row["_step"] for row in history] == [0, 1]
    assert [{key: row[key] for key in epochs[0]} for row in history] == epochs
    summary = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update(_items(record.summary.update))
    assert summary["val_dtw_mje"] == 0.31 and summary["epoch"] == 1

    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    logged = _items(run_record.config.update)
    for record in records:
        if record.WhichOneof("record_type") == "config":
            logged.update(_items(record.config.update))
    assert run_record.project == "t2p"
    assert logged["train"] == TrainConfig(epochs=2).to_dict() and logged["schedule"]["steps"] == 3
    assert logged["model"] == {"d_model": 64, "heads": 4}  # no vocabulary, statistics or texts
