"""Shared fixtures. Real data lives in tests/data (copied from shared/data, provenance in SOURCES.md)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"
POSES = DATA / "poses"
ALL_POSE_FILES = sorted(POSES.glob("*/*.pose"))

os.environ.setdefault("RAY_ACCEPT_CALLABLE_NONE", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (startup costs ~10 s)."""
    import ray
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


def tiny_model_config(vocabulary, skeleton, **overrides):
    from t2p.model import ModelConfig
    settings = dict(vocabulary=list(vocabulary.tokens), skeleton=skeleton.to_dict(), d_model=32, heads=2,
                    text_layers=1, refiner_layers=2, dropout=0.0, max_frames=128)
    settings.update(overrides)
    return ModelConfig(**settings)
