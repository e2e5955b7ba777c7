"""Preparation throughput and memory: `t2p.data.prepare` on Ray Data with 1 and 2 CPUs, on the
fingerspelling lexicon shipped in spoken-to-signed (600 files) and on a 10x copy of it (6,000 files,
copied file by file to --workdir).

    python bench/prepare.py                      # both corpora, 1 and 2 CPUs
    python bench/prepare.py --cpus 2 --copies 1

Each measurement runs in a fresh process with its own local Ray of that many CPUs (started before
the clock). Files per second count every file given to prepare (the two it skips as badly trimmed
included). Memory is sampled every 0.1 s from /proc: the driver's own peak RSS, the largest Ray
worker's, and the whole process tree's (driver, Ray's own processes and workers) above what it
was with Ray idle. With preparation on Ray Data the driver holds metadata only and a worker one
shard (--shard-rows), so none of them should grow with the corpus.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIB = 1 << 20


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree(root: int) -> dict[int, str]:
    """pid -> command line of `root` and all its descendants (local Ray's processes are)."""
    parents, names = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    names[int(entry)] = cmdline.read().split(b"\0")[0].decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return {pid: names.get(pid, "") for pid in found}


class MemorySampler(threading.Thread):
    """Peaks of this process, its largest Ray worker and its whole tree, every `interval` s."""

    def __init__(self, interval: float = 0.1):
        super().__init__(daemon=True)
        self.interval, self.running = interval, True
        self.driver = self.worker = self.tree = 0

    def sample(self) -> int:
        tree = _tree(os.getpid())
        sizes = {pid: _rss(pid) for pid in tree}
        self.driver = max(self.driver, sizes[os.getpid()])
        self.worker = max([self.worker] + [size for pid, size in sizes.items() if tree[pid].startswith("ray::")])
        total = sum(sizes.values())
        self.tree = max(self.tree, total)
        return total

    def run(self) -> None:
        while self.running:
            self.sample()
            time.sleep(self.interval)


def measure(cpus: int, copies: int, workdir: Path, shard_rows: int) -> dict:
    """One measurement, in this process: Ray with `cpus` CPUs, then prepare timed and sampled."""
    import ray

    from t2p.cluster import ensure_ray
    from t2p.data import prepare
    from t2p.data.sources import FINGERSPELLING_LENGTH_RATIO, fingerspelling_items, fingerspelling_lexicon_dir

    items = fingerspelling_items()
    if copies > 1:
        root = fingerspelling_lexicon_dir()
        items = [replace(item, path=workdir / f"copy-{k}" / item.path.relative_to(root)) for k in range(copies)
                 for item in items]
    ensure_ray(num_cpus=cpus, quiet=True)
    sampler = MemorySampler()
    time.sleep(2)  # Ray's own processes settled
    idle = sampler.sample()
    sampler.driver = sampler.worker = sampler.tree = 0
    sampler.start()
    began = time.perf_counter()
    manifest = prepare(items, workdir / f"out-{cpus}cpu-{copies}x", source="fingerspelling", progress=False,
                       max_length_ratio=FINGERSPELLING_LENGTH_RATIO, shard_rows=shard_rows)
    seconds = time.perf_counter() - began
    sampler.running = False
    sampler.join()
    ray.shutdown()
    return {"cpus": cpus, "files": len(items), "rows": sum(manifest["counts"].values()),
            "shards": len(manifest["shards"]), "seconds": seconds, "files_per_s": len(items) / seconds,
            "driver_mib": sampler.driver / MIB, "worker_mib": sampler.worker / MIB,
            "tree_above_idle_mib": (sampler.tree - idle) / MIB}


def copy_corpus(workdir: Path, copies: int) -> None:
    """The lexicon's files copied `copies` times under workdir/copy-K (kept between runs)."""
    from t2p.data.sources import fingerspelling_lexicon_dir
    root = fingerspelling_lexicon_dir()
    for k in range(copies):
        target = workdir / f"copy-{k}"
        if not (target / "index.csv").is_file():
            shutil.copytree(root, target, dirs_exist_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 10], help="1: the shipped lexicon itself")
    parser.add_argument("--shard-rows", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/t2p-bench-prepare"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # "CPUS,COPIES": measure in this process, print JSON
    args = parser.parse_args()
    if args.one:
        cpus, copies = (int(part) for part in args.one.split(","))
        print(json.dumps(measure(cpus, copies, args.workdir, args.shard_rows)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    copy_corpus(args.workdir, max(c for c in args.copies if c > 1) if any(c > 1 for c in args.copies) else 0)
    print(f"t2p prepare on Ray Data, shard_rows {args.shard_rows}; machine: {os.cpu_count()} CPUs")
    print(f"{'corpus':>16} {'CPUs':>4} {'rows':>6} {'shards':>6} {'seconds':>8} {'files/s':>8} "
          f"{'driver MiB':>10} {'worker MiB':>10} {'tree+ MiB':>9}")
    for copies in args.copies:
        for cpus in args.cpus:
            done = subprocess.run([sys.executable, __file__, "--one", f"{cpus},{copies}", "--workdir",
                                   str(args.workdir), "--shard-rows", str(args.shard_rows)],
                                  capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{cpus} CPU(s), {copies}x failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            corpus = "lexicon" if copies == 1 else f"lexicon x{copies}"
            print(f"{corpus:>16} {cpus:>4} {result['rows']:>6} {result['shards']:>6} {result['seconds']:>8.1f} "
                  f"{result['files_per_s']:>8.0f} {result['driver_mib']:>10.0f} {result['worker_mib']:>10.0f} "
                  f"{result['tree_above_idle_mib']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
