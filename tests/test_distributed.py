"""Data-parallel training: two gloo processes, the objective wrapped by DistributedDataParallel as
Ray Train's `prepare_model` wraps it. No Ray here: the gradient path itself is under test."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import tiny_model_config
from ports import free_port
from t2p.data import Example, collate
from t2p.model import T2PModel
from t2p.notation import SignText, Vocabulary
from t2p.pose import Skeleton, SkeletonComponent
from t2p.objective import TrainingObjective, unwrap
from t2p.train import TrainConfig, make_optimizer, train_step

SKELETON = Skeleton("toy", (SkeletonComponent("BODY", ("P", "Q"), (), ((255, 0, 0), (0, 255, 0)), "XYC"),), 2)
STEPS = 5


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        signs = [SignText(text, "text") for text in ("ab", "cd")]
        vocabulary = Vocabulary.build(signs)
        torch.manual_seed(0)  # the same initial weights on both ranks, as DDP requires
        model = T2PModel(tiny_model_config(vocabulary, SKELETON, max_frames=16))
        config = TrainConfig(batch_size=2, learning_rate=3e-3, warmup_steps=1)
        objective = torch.nn.parallel.DistributedDataParallel(TrainingObjective(model, config))
        optimizer, scheduler = make_optimizer(objective, config, STEPS)
        # each rank trains on different data and draws different noise, as real workers do
        data = np.random.default_rng(rank).normal(size=(2, 6, 2, 2)).astype(np.float32)
        batch = collate([Example(vocabulary.encode(signs[rank]), poses, np.ones((6, 2), np.float32))
                         for poses in data])
        generator = torch.Generator().manual_seed(rank)
        for _ in range(STEPS):
            train_step(objective, batch, optimizer, scheduler, config.grad_clip, generator)
        results[rank] = {name: value.detach().clone() for name, value in unwrap(objective).state_dict().items()}
    finally:
        dist.destroy_process_group()


def test_data_parallel_workers_keep_identical_weights():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(free_port(), results), nprocs=2, join=True)
        first, second = results[0], results[1]
    assert first.keys() == second.keys()
    trained = [name for name in first if "refiner" in name and name.endswith("weight")]
    assert trained
    for name in first:
        torch.testing.assert_close(first[name], second[name], msg=f"{name} differs between ranks")
    # and the weights did move: identical because the gradients were averaged, not because nothing trained
    torch.manual_seed(0)
    initial = T2PModel(tiny_model_config(Vocabulary.build([SignText(t, "text") for t in ("ab", "cd")]),
                                         SKELETON, max_frames=16)).state_dict()
    assert any(not torch.allclose(initial[name], first[name]) for name in trained)
