"""Load benchmark for a running t2p endpoint (`t2p serve` or `serve run serve_configs/local.yaml`).

Sends N requests at each concurrency (default 1, 8, 32) and prints throughput, p50/p99 latency and
the mean batch size the replica saw (from GET /v1/stats), then `time(32 concurrent) / time(1 request)`:
near 1 when batching shares the refinement passes, near 32 when requests run one after another.

    python bench/serve_load.py --port 8000 --requests 64 --steps 10

Bounded: at most 2,000 requests and 64 threads per level, and a time budget per level after which
no new request starts. It only talks to loopback addresses (127.0.0.0/8, ::1, localhost).
"""
from __future__ import annotations

import argparse
import http.client
import ipaddress
import itertools
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MAX_REQUESTS, MAX_CONCURRENCY, MAX_SECONDS = 2000, 64, 600
DEFAULT_TEXTS = ("hallo", "essen", "kinder", "pizza", "kleine", "danke", "abc", "xyz")


@dataclass
class Level:
    """What one concurrency level measured."""
    concurrency: int
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0
    mean_batch: float = float("nan")


class Endpoint:
    """One keep-alive HTTP connection per thread to a loopback endpoint."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self.local = threading.local()

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if payload is not None else {}
        if os.environ.get("T2P_API_TOKEN"):  # a server with a token (t2p.serve_http)
            headers["authorization"] = f"Bearer {os.environ['T2P_API_TOKEN']}"
        for attempt in range(2):  # a dropped keep-alive connection is retried once on a fresh one
            connection = getattr(self.local, "connection", None)
            if connection is None:
                connection = self.local.connection = http.client.HTTPConnection(self.host, self.port,
                                                                                 timeout=self.timeout)
            try:
                connection.request(method, path, body=payload, headers=headers)
                response = connection.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                connection.close()
                self.local.connection = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def stats(self) -> dict:
        status, content = self.request("GET", "/v1/stats")
        if status != 200:
            raise SystemExit(f"serve_load: GET /v1/stats answered {status}: {content[:200]!r}")
        return json.loads(content)


def loopback_host(host: str) -> str:
    """The host as a loopback IP literal, or exit: this script never sends load anywhere else."""
    address = "127.0.0.1" if host == "localhost" else host
    try:
        if ipaddress.ip_address(address).is_loopback:
            return address
    except ValueError:
        pass
    raise SystemExit(f"serve_load: refusing host {host!r}; only loopback addresses (127.0.0.1, ::1, localhost)")


def run_level(endpoint: Endpoint, bodies: list[dict], concurrency: int, budget_s: float) -> Level:
    """Send every body with `concurrency` threads; no new request starts after `budget_s`."""
    level = Level(concurrency)
    queue = iter(bodies)
    lock = threading.Lock()
    deadline = time.perf_counter() + budget_s
    start_gate = threading.Barrier(concurrency)

    def worker():
        start_gate.wait()
        while time.perf_counter() < deadline:
            with lock:
                body = next(queue, None)
            if body is None:
                return
            sent = time.perf_counter()
            try:
                status, content = endpoint.request("POST", "/v1/generate", body)
            except OSError as error:
                status, content = -1, str(error).encode()
            with lock:
                if status == 200:
                    level.latencies.append(time.perf_counter() - sent)
                else:
                    level.errors.append(f"{status}: {content[:200].decode(errors='replace')}")

    before = endpoint.stats()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    level.wall = time.perf_counter() - began
    after = endpoint.stats()
    batches = after["batches"] - before["batches"]
    if batches > 0:
        level.mean_batch = (after["requests"] - before["requests"]) / batches
    return level


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address of the endpoint")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--requests", type=int, default=64, help=f"requests per level (at most {MAX_REQUESTS})")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32],
                        help=f"levels to measure (each at most {MAX_CONCURRENCY})")
    parser.add_argument("--steps", type=int, default=None, help="refinement steps per request (default: the model's)")
    parser.add_argument("--length", type=int, default=None, help="frames per request (default: predicted)")
    parser.add_argument("--text", nargs="+", default=list(DEFAULT_TEXTS), help="texts, cycled over the requests")
    parser.add_argument("--notation", default=None, help="notation of --text (default: the model's)")
    parser.add_argument("--max-seconds", type=float, default=120, help=f"time budget per level (at most {MAX_SECONDS})")
    parser.add_argument("--timeout", type=float, default=120, help="seconds one request may take")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS:
        parser.error(f"--requests must be in 1..{MAX_REQUESTS}")
    if not all(1 <= c <= MAX_CONCURRENCY for c in args.concurrency):
        parser.error(f"--concurrency values must be in 1..{MAX_CONCURRENCY}")
    if not 0 < args.max_seconds <= MAX_SECONDS:
        parser.error(f"--max-seconds must be in (0, {MAX_SECONDS}]")

    endpoint = Endpoint(loopback_host(args.host), args.port, args.timeout)
    from bench.peak import describe  # torch only for the peak, measured before any load
    print(f"client machine: {describe()}")
    options = {key: value for key, value in (("steps", args.steps), ("length", args.length),
                                             ("notation", args.notation)) if value is not None}
    texts = itertools.cycle(args.text)
    bodies = [{"text": next(texts), **options} for _ in range(args.requests)]

    try:
        status, content = endpoint.request("GET", "/v1/model")
    except OSError as error:
        raise SystemExit(f"serve_load: no endpoint on {endpoint.host}:{args.port} ({error})") from None
    limits = json.loads(content)["limits"] if status == 200 else {}
    print(f"endpoint http://{endpoint.host}:{args.port}  max_batch_size={limits.get('max_batch_size')} "
          f"batch_wait_timeout_s={limits.get('batch_wait_timeout_s')}  steps={args.steps or limits.get('default_steps')} "
          f"length={args.length or 'predicted'}  requests/level={args.requests}")
    warmup = run_level(endpoint, bodies[:2], 1, args.max_seconds)
    if warmup.errors:
        raise SystemExit(f"serve_load: the warm-up request failed: {warmup.errors[0]}")

    print(f"{'concurrency':>11} {'ok':>5} {'errors':>6} {'wall_s':>8} {'req/s':>8} {'p50_ms':>8} {'p99_ms':>8} "
          f"{'mean_batch':>10}")
    for concurrency in args.concurrency:
        level = run_level(endpoint, bodies, concurrency, args.max_seconds)
        done = len(level.latencies)
        print(f"{concurrency:>11} {done:>5} {len(level.errors):>6} {level.wall:>8.2f} {done / level.wall:>8.2f} "
              f"{percentile(level.latencies, 50) * 1e3:>8.1f} {percentile(level.latencies, 99) * 1e3:>8.1f} "
              f"{level.mean_batch:>10.2f}")
        if level.errors:
            print(f"{'':>11} first error: {level.errors[0]}")

    # one request alone, then one wave of 32 sent at once: how much of the wave did batching absorb?
    single = run_level(endpoint, bodies[:3], 1, args.max_seconds)
    wave = run_level(endpoint, bodies[:32] if len(bodies) >= 32 else (bodies * 32)[:32], 32, args.max_seconds)
    if single.latencies and len(wave.latencies) == 32:
        one = percentile(single.latencies, 50)
        print(f"time(32 concurrent) / time(1 request) = {wave.wall:.3f} s / {one:.3f} s = {wave.wall / one:.2f} "
              f"(mean batch {wave.mean_batch:.2f})")
    else:
        print(f"time(32 concurrent) / time(1 request): not measured ({len(single.errors) + len(wave.errors)} errors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
