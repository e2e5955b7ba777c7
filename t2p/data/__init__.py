"""Data: real corpora as `SourceItem`s (`sources`, `ham2pose`), prepared on Ray Data into Parquet
shards + manifest.json (`prepare`, with the normaliser `statistics`), and read back (`shards`)."""
from t2p.data.prepare import PreparationError, prepare
from t2p.data.shards import PreparedItem, load_manifest, read_items, shard_paths
from t2p.data.sources import SPLITS, SourceItem

__all__ = ["SPLITS", "PreparationError", "PreparedItem", "SourceItem", "load_manifest", "prepare", "read_items",
           "shard_paths"]
