"""Where Ray runs: the cluster in RAY_ADDRESS, or a local instance of this process's own."""
from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None, quiet: bool = False) -> None:
    """Connect to the cluster in RAY_ADDRESS, or start local single-node Ray (saying so once)."""
    import ray
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
        return
    if not quiet:
        print("t2p: no Ray cluster given (RAY_ADDRESS unset): starting a local Ray instance on this machine",
              flush=True)
    # address="local": a new instance of this process's own, never one that another program started
    # on this machine (which the run would share, and whose leftovers it would wait behind)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_TRAIN_V2_ENABLED": "1"}})
