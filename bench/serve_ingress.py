"""Each ingress against Serve's own floor, in one run each: what Ray Serve costs, what t2p adds.

For every `--ingress` mode (Serve's Python proxy, HAProxy direct ingress, HAProxy plus Ray's
throughput-optimised mode), a fresh local Ray serves two apps side by side, with the environment
`t2p serve` sets for that ingress (`t2p.serving.ingress`):
- `t2p` at `/`: the model folder `--model` with the served defaults of serve_configs/local.yaml;
- `floor` at `/floor`: a no-op deployment of the same shape (a FastAPI ingress, POST /v1/generate
  answering a small fixed JSON body, GET /healthz, GET /v1/stats with its process CPU), so that
  what remains is what Ray Serve itself costs per request.
Then, through the ingress: the floor at each `--concurrency`, t2p at each `--steps` x concurrency
(`--requests` each, `--length` frames), one streamed request alone and one among `--concurrency`'s
largest (time to its first step and to its end), and `generate` in this process at batch 32
for the engine's limit.

CPU ms per request is counted per process: the ingress (HAProxy, or Serve's Python proxy: the
process listening on the port) and the replica (its GET /v1/stats); the load generator is left out.
t2p's overhead above the floor = t2p's (ingress + replica) - the floor's (ingress + replica) - the
engine's CPU per item at the replica's mean batch (measured in this process).

    python bench/serve_ingress.py --model runs/default/best

Each mode runs in a child process of its own (the ingress is chosen by environment variables read
when Ray starts). Loopback only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serve_load import (DEFAULT_TEXTS, Endpoint, engine_throughput, percentile,  # noqa: E402
                              process_cpu_s, run_level)

MODES = {  # mode -> (t2p ingress, extra environment)
    "python": ("python", {}),
    "haproxy": ("haproxy", {}),
    "haproxy+throughput": ("haproxy", {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}),
}
SERVED = {"max_batch_size": 32, "batch_wait_timeout_s": 0.0, "max_steps": 100, "max_frames": 256}  # the defaults


def floor_app():
    """The no-op deployment: the same FastAPI shape as t2p's, a small fixed body, nothing else."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()
    body = {"frames": [[0.0, 0.0, 0.0]], "fps": 25.0}
    counted = {"requests": 0}

    @serve.deployment(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Floor:
        @api.post("/v1/generate")
        async def generate(self, payload: dict) -> dict:
            counted["requests"] += 1
            return body

        @api.get("/healthz")
        async def healthz(self) -> dict:
            return {"status": "ok"}

        @api.get("/v1/stats")
        async def stats(self) -> dict:
            return {"requests": counted["requests"], "batches": counted["requests"], "cpu_s": time.process_time()}

    return Floor.bind()


def wait_until_answering(endpoint: Endpoint, path: str, body: dict | None, timeout_s: float = 120) -> float:
    """Seconds until `path` answers 200 through the ingress (HAProxy gets its backends a little
    after Serve reports the app running)."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout_s:
        try:
            status, _ = endpoint.request("POST" if body is not None else "GET", path, body)
            if status == 200:
                return time.perf_counter() - began
        except OSError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"serve_ingress: {path} did not answer 200 within {timeout_s:.0f} s")


def streamed(host: str, port: int, body: dict, timeout_s: float = 120) -> tuple[float, float, int]:
    """One streamed request: (seconds to its first step, seconds to its end, steps received)."""
    import http.client
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    began = time.perf_counter()
    connection.request("POST", "/v1/generate", body=json.dumps({**body, "stream": True}).encode(),
                       headers={"content-type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"serve_ingress: a streamed request answered {response.status}: {response.read()[:200]!r}")
    first, lines = None, 0
    for line in response:  # NDJSON: one line per refinement step
        if line.strip():
            lines += 1
            first = first if first is not None else time.perf_counter() - began
    connection.close()
    return first or float("nan"), time.perf_counter() - began, lines


def measure(endpoint: Endpoint, stats_path: str, path: str, bodies: list[dict], concurrency: int,
            budget_s: float) -> dict:
    """One level through the ingress: rates, latencies, and CPU ms per request of ingress and replica."""
    def replica_cpu() -> tuple[float, int, int, list]:
        _, content = endpoint.request("GET", stats_path)
        stats = json.loads(content)
        return stats["cpu_s"], stats["requests"], stats["batches"], stats.get("recent_step_rows", [])

    ingress_before = sum(process_cpu_s(pid) for pid in endpoint.proxy_pids)
    replica_before, requests_before, batches_before, _ = replica_cpu()
    client_before, machine_before = time.process_time(), machine_cpu()
    level = run_level(RoutedEndpoint(endpoint, path), bodies, concurrency, budget_s, stats=False)
    # the load generator (this process's threads) and the whole machine, over the same level
    client, machine = time.process_time() - client_before, [b - a for a, b in zip(machine_before, machine_cpu())]
    ingress = sum(process_cpu_s(pid) for pid in endpoint.proxy_pids) - ingress_before
    replica_after, requests_after, batches_after, step_rows = replica_cpu()
    served = max(1, requests_after - requests_before)
    done = len(level.latencies)
    return {"ok": done, "errors": len(level.errors), "first_error": level.errors[0] if level.errors else "",
            "req_s": done / level.wall, "p50_ms": percentile(level.latencies, 50) * 1e3,
            "p99_ms": percentile(level.latencies, 99) * 1e3,
            "mean_batch": served / max(1, batches_after - batches_before),
            "ingress_ms": ingress * 1e3 / served, "replica_ms": (replica_after - replica_before) * 1e3 / served,
            "client_ms": client * 1e3 / served, "machine_busy": machine[0] / max(machine[1], 1e-9),
            "step_rows": sum(step_rows) / len(step_rows) if step_rows else float("nan")}


def rows_per_step(record: dict) -> int:
    """The batch the refiner ran at: requests per refinement step (joins per step before the
    replica reported them)."""
    rows = record.get("step_rows", float("nan"))
    return max(1, round(record["mean_batch"] if math.isnan(rows) else rows))


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole machine so far, from /proc/stat."""
    fields = [float(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class RoutedEndpoint:
    """An `Endpoint` whose POST /v1/generate goes to another route prefix (the floor's)."""

    def __init__(self, endpoint: Endpoint, path: str):
        self.endpoint, self.path = endpoint, path
        self.proxy_pids = endpoint.proxy_pids

    def request(self, method: str, path: str, body=None):
        return self.endpoint.request(method, self.path if path == "/v1/generate" else path, body)


def run_mode(args: argparse.Namespace) -> None:
    """In a child process: start Ray and Serve with the mode's ingress, measure, print JSON lines."""
    from t2p.serving import ServeConfig
    from t2p.serving.ingress import environment

    ingress, extra = MODES[args.child]
    os.environ.update(environment(ingress, ServeConfig(**SERVED), "127.0.0.1", args.port))
    os.environ.update(extra)
    import ray
    from ray import serve

    from t2p.serving.app import build_app
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(floor_app(), name="floor", route_prefix="/floor")
        serve.run(build_app({"model": str(Path(args.model).resolve()), "device": "cpu", **SERVED}),
                  name="t2p", route_prefix="/")
        endpoint = Endpoint("127.0.0.1", args.port, timeout=args.timeout)
        texts = DEFAULT_TEXTS
        bodies = {steps: [{"text": texts[i % len(texts)], "steps": steps, "length": args.length, "format": args.format}
                          for i in range(args.requests)] for steps in args.steps}
        waited = wait_until_answering(endpoint, "/floor/v1/generate", {"text": "a"})
        waited += wait_until_answering(endpoint, "/v1/generate", bodies[args.steps[0]][0])
        endpoint.proxy_pids = Endpoint("127.0.0.1", args.port, timeout=args.timeout).proxy_pids  # now listening
        emit({"kind": "ready", "seconds": waited, "ingress_pids": endpoint.proxy_pids})
        for concurrency in args.concurrency:  # warm-up: the ingress's connections and both replicas
            run_level(RoutedEndpoint(endpoint, "/floor/v1/generate"), [{"text": "a"}] * concurrency, concurrency, 60,
                      stats=False)
            run_level(endpoint, bodies[args.steps[0]][:concurrency], concurrency, 60, stats=False)
        for concurrency in args.concurrency:
            floor = measure(endpoint, "/floor/v1/stats", "/floor/v1/generate", [{"text": "a"}] * args.requests,
                            concurrency, args.max_seconds)
            emit({"kind": "floor", "concurrency": concurrency, **floor})
            for steps in args.steps:
                level = measure(endpoint, "/v1/stats", "/v1/generate", bodies[steps], concurrency, args.max_seconds)
                emit({"kind": "t2p", "concurrency": concurrency, "steps": steps, **level})
        stream_body = bodies[max(args.steps)][0]
        first, total, lines = streamed("127.0.0.1", args.port, stream_body)
        emit({"kind": "stream", "among": 0, "first_s": first, "total_s": total, "steps": lines})
        among = max(args.concurrency)  # the streamed request is one of them: `among - 1` others
        load = threading.Thread(target=run_level, args=(endpoint, bodies[max(args.steps)][:(among - 1) * 4], among - 1,
                                                        args.max_seconds), kwargs={"stats": False}, daemon=True)
        load.start()
        time.sleep(0.5)  # the others are in their batches
        first, total, lines = streamed("127.0.0.1", args.port, stream_body)
        load.join()
        emit({"kind": "stream", "among": among, "first_s": first, "total_s": total, "steps": lines})
    finally:
        serve.shutdown()
        ray.shutdown()


def emit(record: dict) -> None:
    print("RESULT " + json.dumps(record), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/default/best", help="the model folder to serve")
    parser.add_argument("--ingress", nargs="+", default=list(MODES), choices=list(MODES), help="modes to measure")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=500, help="requests per level (at most 2000)")
    parser.add_argument("--max-seconds", type=float, default=120, help="time budget per level")
    parser.add_argument("--timeout", type=float, default=120, help="seconds one request may take")
    parser.add_argument("--format", choices=("pose", "json"), default="pose",
                        help="what t2p answers: a .pose file (the API's default) or JSON frames")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not Path(args.model, "model.safetensors").is_file():
        parser.error(f"--model {args.model}: no model.safetensors there (train one: t2p quickstart)")
    if not 1 <= args.requests <= 2000 or not all(1 <= c <= 64 for c in args.concurrency):
        parser.error("--requests must be in 1..2000 and each --concurrency in 1..64")
    if args.child:
        run_mode(args)
        return 0

    from bench.peak import describe
    print(f"machine: {describe()}")
    results = {}
    for mode in args.ingress:
        command = [sys.executable, __file__, "--child", mode, *sys.argv[1:]] if argv is None else \
            [sys.executable, __file__, "--child", mode, *argv]
        began = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        records = [json.loads(line[len("RESULT "):]) for line in finished.stdout.splitlines()
                   if line.startswith("RESULT ")]
        if finished.returncode != 0:
            print(f"{mode}: failed (exit {finished.returncode}):\n{finished.stderr[-3000:]}")
        results[mode] = records
        print(f"{mode}: measured in {time.perf_counter() - began:.0f} s")

    import torch
    engine = {}
    for steps in args.steps:
        bodies = [{"text": text, "steps": steps, "length": args.length} for text in DEFAULT_TEXTS]
        engine[steps] = {batch: engine_throughput(args.model, bodies, SERVED, batch) for batch in sorted(
            {1, 32, *(rows_per_step(record) for records in results.values() for record in records
                     if record.get("kind") == "t2p" and record["steps"] == steps)})}
    print(f"engine: generate in this process, {torch.get_num_threads()} threads, {args.length} frames; "
          "items/s (CPU ms per item) by batch:")
    for steps, batches in engine.items():
        print(f"  {steps:>2} steps: " + ", ".join(f"batch {batch}: {value['items_per_s']:.1f} ({value['cpu_ms']:.2f})"
                                                 for batch, value in batches.items()))
    print()
    print(f"{'ingress':<19} {'app':<6} {'steps':>5} {'conc':>4} {'ok':>4} {'err':>3} {'req/s':>7} {'p50_ms':>7} "
          f"{'p99_ms':>7} {'p99/p50':>7} {'batch':>5} | CPU ms/req: {'ingress':>7} {'replica':>7} | "
          f"{'engine':>6} {'t2p-floor-engine':>16} | {'vs engine@32':>12} | rows/step client_ms machine_busy")
    for mode, records in results.items():
        ready = next((record for record in records if record["kind"] == "ready"), None)
        floors = {record["concurrency"]: record for record in records if record["kind"] == "floor"}
        for record in records:
            if record["kind"] not in ("floor", "t2p"):
                continue
            steps = record.get("steps")
            line = (f"{mode:<19} {record['kind']:<6} {steps or '-':>5} {record['concurrency']:>4} {record['ok']:>4} "
                    f"{record['errors']:>3} {record['req_s']:>7.1f} {record['p50_ms']:>7.1f} {record['p99_ms']:>7.1f} "
                    f"{record['p99_ms'] / record['p50_ms']:>7.2f} {record['mean_batch']:>5.1f} | {'':>11} "
                    f"{record['ingress_ms']:>7.2f} {record['replica_ms']:>7.2f} | ")
            if record["kind"] == "t2p":
                floor = floors[record["concurrency"]]
                item_cpu = engine[steps][rows_per_step(record)]["cpu_ms"]
                overhead = (record["ingress_ms"] + record["replica_ms"] - floor["ingress_ms"] - floor["replica_ms"]
                            - item_cpu)
                share = record["req_s"] / engine[steps][32]["items_per_s"]
                line += (f"{item_cpu:>6.2f} {overhead:>16.2f} | {100 * share:>11.0f}% | {record['step_rows']:>9.1f} "
                         f"{record['client_ms']:>9.2f} {100 * record['machine_busy']:>8.0f}%")
            print(line)
            if record["errors"]:
                print(f"{'':<19} first error: {record['first_error']}")
        for record in records:
            if record["kind"] == "stream":
                where = "alone" if not record["among"] else f"among {record['among']}"
                print(f"{mode:<19} a streamed request of {max(args.steps)} steps {where}: first step after "
                      f"{record['first_s'] * 1e3:.0f} ms of {record['total_s'] * 1e3:.0f} ms "
                      f"({record['first_s'] / record['total_s']:.2f} of its time; 1/steps = {1 / max(args.steps):.2f}), "
                      f"{record['steps']} lines")
        if ready:
            print(f"{mode:<19} answered through the ingress {ready['seconds']:.1f} s after the apps were deployed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
