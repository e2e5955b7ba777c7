"""Where Ray runs (the cluster in RAY_ADDRESS, or a local instance of this process's own), and what
of Ray's own output reaches the terminal: t2p's lines and progress, not Ray's INFO chatter."""
from __future__ import annotations

import logging
import os
from pathlib import Path

# what a verb shows: Ray's own log lines too (--verbose), or t2p's alone with Ray's in its logs
VERBOSE_ENV = "T2P_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def ensure_ray(num_cpus: int | None = None, quiet: bool = False) -> None:
    """Connect to the cluster in RAY_ADDRESS, or start local single-node Ray (saying so once)."""
    import ray
    if ray.is_initialized():
        return
    quiet_ray_logs()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
        quiet_ray_logs()
        return
    if not quiet:
        print("t2p: no Ray cluster given (RAY_ADDRESS unset): starting a local Ray instance on this machine",
              flush=True)
    # a local instance's one node is never drained or preempted: Ray Train's watcher for that would
    # only cost an actor's start-up (2-3 s of a core here) beside the first epoch
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # address="local": a new instance of this process's own, never one that another program started
    # on this machine (which the run would share, and whose leftovers it would wait behind)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    quiet_ray_logs()


def quiet_ray_logs(log_file: str | Path | None = None) -> None:
    """Ray's own log lines (token authentication, Ray Data's execution plans and progress, Parquet
    sampling) off the terminal, unless --verbose (`T2P_VERBOSE`): its console handlers show errors
    only; the lines stay in Ray's session logs, and with `log_file` in that file too. Warnings t2p's
    user must act on are t2p's own lines, printed as always. Called again after each import or start
    that adds a handler (Ray Data configures its logging when first used)."""
    if verbose():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray  # noqa: F401  (sets up the "ray" logger and its console handler)
    file_handler = None
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    names = ["ray", *(name for name in logging.root.manager.loggerDict if name.startswith("ray."))]
    for name in names:
        logger = logging.getLogger(name)
        consoles = [handler for handler in logger.handlers
                    if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)]
        for handler in consoles:
            handler.setLevel(logging.ERROR)
        if file_handler is not None and consoles:
            logger.addHandler(file_handler)
    try:
        from ray.data import DataContext
        DataContext.get_current().enable_progress_bars = False
    except ImportError:  # a Ray without Ray Data
        pass
