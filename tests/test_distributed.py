"""Data-parallel training: two gloo processes, the objective wrapped by DistributedDataParallel as
Ray Train's `prepare_model` wraps it. No Ray here: the gradient path itself is under test."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_model_config
from ports import free_port

from t2p.model import T2PModel
from t2p.notation import SignText, Vocabulary
from t2p.pose import Keypoints, Skeleton, SkeletonComponent
from t2p.training import Learner, TrainConfig
from t2p.training.batches import Example, collate
from t2p.training.loop import make_optimizer, unwrap
from t2p.training.objective import TrainingObjective

SKELETON = Skeleton("toy", (SkeletonComponent("BODY", ("P", "Q"), (), ((255, 0, 0), (0, 255, 0)), "XYC"),), 2)
STEPS = 5


def _worker(rank: int, port: int, results: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        signs = [SignText(text, "text") for text in ("ab", "cd")]
        vocabulary = Vocabulary.build(signs)
        torch.manual_seed(0)  # the same initial weights on both ranks, as DDP requires
        model = T2PModel(tiny_model_config(vocabulary, SKELETON, max_frames=16))
        config = TrainConfig(batch_size=2, learning_rate=3e-3, warmup_steps=1)
        alone = TrainingObjective(copy.deepcopy(model), config)  # this rank's objective, not synchronised
        objective = torch.nn.parallel.DistributedDataParallel(TrainingObjective(model, config))
        optimizer, scheduler = make_optimizer(objective, config, STEPS)
        # each rank trains on different data and draws different noise, as real workers do
        data = np.random.default_rng(rank).normal(size=(2, 6, 2, 2)).astype(np.float32)
        batch = collate([Example(vocabulary.encode(signs[rank]), Keypoints(poses, np.ones((6, 2), np.float32)))
                         for poses in data])
        gap = _gradient_gap(objective, alone, batch, rank)
        generator = torch.Generator().manual_seed(rank)
        learner = Learner(objective, optimizer, scheduler, average=None, grad_clip=config.grad_clip)
        for _ in range(STEPS):
            learner.step(batch, None, generator)
        torch.save({"gradient gap": gap, "weights": unwrap(objective).state_dict()}, results / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _gradient_gap(objective, alone, batch, rank: int) -> float:
    """How far the gradient DDP leaves on this rank is from the mean of both ranks' own gradients
    (each from its own half of the global batch): 0 when the gradients are averaged, which is what
    one worker would compute from the whole batch."""
    def gradient(module) -> torch.Tensor:
        module(batch, torch.Generator().manual_seed(rank))["loss"].backward()
        flat = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
        module.zero_grad(set_to_none=True)
        return flat
    own, synchronised = gradient(alone), gradient(objective)
    mean = own.clone()
    dist.all_reduce(mean)
    mean /= dist.get_world_size()
    assert not torch.allclose(own, mean)  # the ranks' gradients differ: there is something to average
    return float((synchronised - mean).abs().max())


def test_data_parallel_workers_keep_identical_weights(tmp_path):
    # results through files: a multiprocessing Manager forks this process, and a fork of a process
    # holding Ray's gRPC connections left this test session's next call to Ray's GCS waiting forever
    mp.spawn(_worker, args=(free_port(), tmp_path), nprocs=2, join=True)
    saved = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    (first, second), gaps = [each["weights"] for each in saved], [each["gradient gap"] for each in saved]
    assert max(gaps) < 1e-6, gaps  # every rank steps with the mean gradient of both halves
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


def test_workers_that_would_take_every_cpu_of_a_local_ray_get_a_share_and_a_cluster_gets_the_request(
        monkeypatch, capsys):
    import pytest
    import ray

    from t2p.training import TrainingJob
    from t2p.training.job import fit_workers_to_cluster
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    job = TrainingJob(data="data", out="run", workers=2)
    # two 1-CPU workers on a 2-CPU laptop left no CPU for the shard reads, and the run waited forever
    assert fit_workers_to_cluster(job).cpus_per_worker == 0.875
    assert "each worker gets 0.875 CPU" in capsys.readouterr().out
    assert fit_workers_to_cluster(TrainingJob(data="data", out="run")).cpus_per_worker == 1.0  # it fits
    with pytest.raises(ValueError, match="use --workers 1 or fewer"):
        fit_workers_to_cluster(TrainingJob(data="data", out="run", workers=64))
    with pytest.raises(ValueError, match="GPU"):
        fit_workers_to_cluster(TrainingJob(data="data", out="run", gpu=True))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a cluster: an autoscaler may add nodes
    assert fit_workers_to_cluster(job).cpus_per_worker == 1.0


# --- a worker's rows, epoch after epoch ------------------------------------------------------

class _CountingShard:
    """A Ray Data shard stand-in: rows with ids, and how often it was read."""

    def __init__(self, ids):
        self.ids, self.reads = list(ids), 0

    def iter_batches(self, batch_size, **_):
        import numpy as np
        self.reads += 1
        for begin in range(0, len(self.ids), batch_size):
            yield {"id": np.asarray(self.ids[begin:begin + batch_size])}


def _examples_of(rows):
    import numpy as np
    from t2p.pose import Keypoints
    from t2p.training.batches import Example
    return [Example([(int(row_id),)], Keypoints(np.zeros((3, 2, 2), np.float32), np.ones((3, 2), np.float32)))
            for row_id in rows["id"]]


def test_a_worker_reads_its_shard_once_when_its_rows_fit_and_reshuffles_them_every_epoch():
    import torch
    from t2p.training.job import WorkerRows
    shard = _CountingShard(range(50))
    rows = WorkerRows(shard, _examples_of, limit_bytes=1 << 20)
    generator = torch.Generator().manual_seed(0)
    epochs = [[row_id for ids, _ in rows.windows(16, seed=epoch, generator=generator) for row_id in ids]
              for epoch in range(3)]
    assert shard.reads == 1
    assert all(sorted(map(int, epoch)) == list(range(50)) for epoch in epochs)
    assert epochs[1] != epochs[2]  # a new order every epoch
    windows = [len(examples) for _, examples in rows.windows(16, seed=3, generator=generator)]
    assert windows == [16, 16, 16, 2]


def test_a_worker_whose_rows_do_not_fit_streams_its_shard_every_epoch():
    import torch
    from t2p.training.job import WorkerRows
    shard = _CountingShard(range(50))
    rows = WorkerRows(shard, _examples_of, limit_bytes=1000)  # 50 rows x 72 bytes do not fit
    generator = torch.Generator().manual_seed(0)
    for epoch in range(3):
        assert sorted(int(i) for ids, _ in rows.windows(16, seed=epoch, generator=generator) for i in ids) == list(range(50))
    assert shard.reads == 3
