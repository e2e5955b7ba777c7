"""Serving: the HTTP API (`http`, `schemas`, `requests`) on Ray Serve (`app`: one replica per
`T2PServer`, `build_app` for `serve run`), requests batched into shared refinement steps (`batches`),
and what a replica accepts (`config`)."""
from t2p.serving.config import ServeConfig

__all__ = ["ServeConfig"]
