"""Faults under load: one of several replicas killed in the middle of a run.

Starts its own local Ray (its ingress, `--ingress`, on 127.0.0.1) with `t2p.serving.app`'s app at `--replicas`
replicas, sends `--requests` requests at `--concurrency`, and once `--kill-after` of them have
finished kills one replica's actor (`ray.kill`, no restart by Ray: Serve's controller replaces it).
Then it reports: requests completed, errors by kind, the slowest request (no request hangs),
how long until Serve had every replica RUNNING again and until the new replica answered
GET /healthz, and what /healthz answered before, during and after (which replicas, by Serve's id).

    python bench/serve_faults.py --model runs/default/best

Each replica gets one torch thread (`threads`: 1), so that 2 replicas fit 2 cores.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serve_load import DEFAULT_TEXTS, Endpoint, percentile, run_level  # noqa: E402

APP, DEPLOYMENT = "t2p", "T2PServer"
REPLICA_PREFIX = f"SERVE_REPLICA::{APP}#{DEPLOYMENT}#"  # Serve's actor name for a replica (namespace "serve")


class HealthWatch:
    """GET /healthz every `period_s` on a connection of its own: (seconds since start, status, replica id)."""

    def __init__(self, endpoint: Endpoint, period_s: float = 0.1):
        self.endpoint, self.period_s = endpoint, period_s
        self.began = time.perf_counter()
        self.answers: list[tuple[float, int, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        import json
        while not self.stop.wait(self.period_s):
            try:
                status, content = self.endpoint.request("GET", "/healthz")
                replica = json.loads(content).get("replica", "?") if status == 200 else content[:80].decode(errors="replace")
            except OSError as error:
                status, replica = -1, type(error).__name__
            self.answers.append((time.perf_counter() - self.began, status, replica))

    def now(self) -> float:
        return time.perf_counter() - self.began

    def between(self, start: float, end: float) -> dict:
        """The answers in [start, end): count by status, and the replicas that answered 200."""
        window = [(status, replica) for at, status, replica in self.answers if start <= at < end]
        return {"answers": len(window), "by_status": dict(collections.Counter(status for status, _ in window)),
                "replicas": sorted({replica for status, replica in window if status == 200})}

    def first_answer_from(self, replicas: set[str], after: float) -> float | None:
        for at, status, replica in list(self.answers):
            if at >= after and status == 200 and replica not in replicas:
                return at
        return None


def replica_actors() -> dict[str, str]:
    """{replica id: actor name} of the app's live replicas, from Ray's named actors."""
    import ray
    names = [entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
             if entry["name"].startswith(REPLICA_PREFIX)]
    return {name[len(REPLICA_PREFIX):]: name for name in names}


def running_replicas() -> int:
    from ray import serve
    try:
        deployment = serve.status().applications[APP].deployments[DEPLOYMENT]
    except KeyError:
        return 0
    return deployment.replica_states.get("RUNNING", 0)


def error_kind(error: str) -> str:
    """An error line as its status and the first words of its message."""
    status, _, message = error.partition(": ")
    return f"{status}: {' '.join(message.split())[:90]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/default/best")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kill-after", type=int, default=150, help="kill a replica once this many requests finished")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--recovery-timeout", type=float, default=180, help="seconds to wait for the replica's return")
    parser.add_argument("--ingress", choices=("haproxy", "python"), default="haproxy",
                        help="how requests come in (t2p.serving.ingress; t2p serve's default: haproxy)")
    args = parser.parse_args(argv)
    if args.replicas < 2:
        parser.error("--replicas must be at least 2: one is killed, the others keep serving")
    if not Path(args.model).is_dir():
        parser.error(f"--model {args.model}: no such folder")

    import os

    from t2p.serving import ServeConfig
    from t2p.serving.ingress import environment
    os.environ.update(environment(args.ingress, ServeConfig(), "127.0.0.1", args.port))  # before Ray starts

    import ray
    from ray import serve

    from bench.peak import describe
    from t2p.serving.app import build_app
    print(f"{describe()}; ingress {args.ingress}")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        began = time.perf_counter()
        serve.run(build_app({"model": str(Path(args.model).resolve()), "num_replicas": args.replicas, "threads": 1,
                             "device": "cpu"}), name=APP, route_prefix="/")
        print(f"{args.replicas} replicas up in {time.perf_counter() - began:.1f} s: {', '.join(sorted(replica_actors()))}")
        endpoint = Endpoint("127.0.0.1", args.port, timeout=120)
        texts = itertools.cycle(DEFAULT_TEXTS)
        bodies = [{"text": next(texts), "steps": args.steps, "length": args.length} for _ in range(args.requests)]
        run_level(endpoint, bodies[:2 * args.concurrency], args.concurrency, 60, stats=False)  # warm-up, both replicas

        watch = HealthWatch(Endpoint("127.0.0.1", args.port, timeout=10))
        time.sleep(1.0)
        before = set(replica_actors())
        kill = threading.Event()
        killed: dict = {}

        running: dict = {}

        def killer():
            kill.wait()
            victim = sorted(before)[0]
            killed.update(replica=victim, at=watch.now())
            ray.kill(ray.get_actor(REPLICA_PREFIX + victim, namespace="serve"), no_restart=True)
            deadline = time.perf_counter() + args.recovery_timeout  # then: when does Serve have them all again?
            while time.perf_counter() < deadline:
                if running_replicas() >= args.replicas and set(replica_actors()) - before:
                    running["at"] = watch.now()
                    return
                time.sleep(0.2)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        load_start = watch.now()
        level = run_level(endpoint, bodies, args.concurrency, 600, stats=False,
                          finished=lambda count: kill.set() if count >= args.kill_after else None)
        load_end = watch.now()
        kill.set()
        thread.join()  # Serve has every replica again, or the recovery timeout passed
        running_at = running.get("at")
        deadline = time.perf_counter() + args.recovery_timeout
        while watch.first_answer_from(before, killed["at"]) is None and time.perf_counter() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)  # a little of /healthz after
        watch.stop.set()
        watch.thread.join()
        answered_at = watch.first_answer_from(before, killed["at"])

        done = len(level.latencies)
        print(f"\n{args.requests} requests at concurrency {args.concurrency}, {args.steps} steps x {args.length} frames, "
              f"{args.replicas} replicas; replica {killed['replica']} killed after {args.kill_after} finished "
              f"({killed['at'] - load_start:.1f} s into the run)")
        print(f"completed {done}, errors {len(level.errors)}, wall {level.wall:.1f} s, {done / level.wall:.1f} req/s, "
              f"p50 {percentile(level.latencies, 50) * 1e3:.0f} ms, p99 {percentile(level.latencies, 99) * 1e3:.0f} ms, "
              f"slowest request {level.slowest:.1f} s")
        for kind, count in collections.Counter(error_kind(error) for error in level.errors).most_common():
            print(f"  {count:>4} x {kind}")
        recovered = lambda at: "not within the timeout" if at is None else f"{at - killed['at']:.1f} s after the kill"
        print(f"Serve had {args.replicas} replicas RUNNING again {recovered(running_at)}; "
              f"the new replica first answered /healthz {recovered(answered_at)}")
        after = set(replica_actors())
        print(f"replicas before {sorted(before)}, after {sorted(after)} (new: {sorted(after - before)})")
        back = answered_at if answered_at is not None else watch.now()
        for name, (start, end) in {"before the kill": (0, killed["at"]), "after the kill, before the new replica": (killed["at"], back),
                                   "once the new replica answered": (back, watch.now() + 1)}.items():
            window = watch.between(start, end)
            print(f"/healthz {name}: {window['answers']} answers {window['by_status']}, from replicas {window['replicas']}")
        print(f"the load ran {load_start:.1f}-{load_end:.1f} s on the /healthz clock; the kill at {killed['at']:.1f} s")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
