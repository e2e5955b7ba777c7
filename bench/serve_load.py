"""Load benchmark for a running t2p endpoint (`t2p serve` or `serve run serve_configs/local.yaml`).

Sends N requests at each concurrency (default 1, 8, 32) and prints throughput, p50/p99 latency and
the mean batch size the replica saw (from GET /v1/stats), then `time(32 concurrent) / time(1 request)`:
near 1 when batching shares the refinement passes, near 32 when requests run one after another.

With `--model` (the folder the server serves), it first measures the engine's limit in this
process: `generate` on the same requests (validated as the server validates them: same texts,
steps, frames), `--engine-batch` (32) items per call; then each level at that concurrency is
quoted as a share of it, with its overhead per request in ms. Where the time went, per level:
CPU ms per request of this load generator, of Serve's HTTP proxy (the process listening on the
port) and of the replica (GET /v1/stats), the replica's share of the wall in refinement steps,
how long requests waited for their batch, and how busy the machine's cores were.

    python bench/serve_load.py --port 8000 --requests 500 --concurrency 32 --steps 10 --length 40 \
        --model runs/default/best

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
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MAX_REQUESTS, MAX_CONCURRENCY, MAX_SECONDS = 2000, 64, 600
DEFAULT_TEXTS = ("hallo", "essen", "kinder", "pizza", "kleine", "danke", "abc", "xyz")


@dataclass
class Level:
    """What one concurrency level measured."""
    concurrency: int
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: list[str] = field(default_factory=list)
    slowest: float = 0.0  # seconds of the slowest request, failed ones included
    wall: float = 0.0
    mean_batch: float = float("nan")
    cpu: dict = field(default_factory=dict)  # CPU seconds over the level: client, proxy, machine_busy, cores
    served: dict = field(default_factory=dict)  # the replica's stats over the level (GET /v1/stats differences)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process on this machine (/proc/PID/stat), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def machine_busy_s() -> tuple[float, int]:
    """CPU seconds all cores of this machine have been busy (/proc/stat), and the number of cores."""
    lines = Path("/proc/stat").read_text().splitlines()
    total = [int(value) for value in lines[0].split()[1:8]]  # user nice system idle iowait irq softirq
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return (sum(total) - total[3] - total[4]) / os.sysconf("SC_CLK_TCK"), cores


def listening_pids(port: int) -> list[int]:
    """The processes holding a listening TCP socket on `port` (Serve's HTTP proxy), from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            columns = row.split()
            if columns[3] == "0A" and int(columns[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{columns[9]}]")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def cpu_snapshot(proxy_pids: list[int]) -> dict:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    busy, cores = machine_busy_s()
    return {"client": usage.ru_utime + usage.ru_stime, "proxy": sum(process_cpu_s(pid) for pid in proxy_pids),
            "machine_busy": busy, "cores": cores}


class Endpoint:
    """One keep-alive HTTP connection per thread to a loopback endpoint."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self.local = threading.local()
        self.proxy_pids = listening_pids(port)  # Serve's HTTP proxy, when it runs on this machine

    def request(self, method: str, path: str, body: dict | bytes | None = None) -> tuple[int, bytes]:
        payload = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if payload is not None else {}
        if os.environ.get("T2P_API_TOKEN"):  # a server with a token (t2p.serving.http)
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


def run_level(endpoint: Endpoint, bodies: list[dict], concurrency: int, budget_s: float, stats: bool = True,
              finished: Callable[[int], None] = lambda count: None) -> Level:
    """Send every body with `concurrency` threads; no new request starts after `budget_s`. `stats`:
    read the replica's GET /v1/stats before and after (one replica: with several, each answers for
    itself); `finished(count)` is called after each request with the number finished so far."""
    level = Level(concurrency)
    queue = iter([json.dumps(body).encode() for body in bodies])  # encoded before the clock starts
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
            took = time.perf_counter() - sent
            with lock:
                level.slowest = max(level.slowest, took)
                if status == 200:
                    level.latencies.append(took)
                else:
                    level.errors.append(f"{status}: {content[:200].decode(errors='replace')}")
                count = len(level.latencies) + len(level.errors)
            finished(count)

    before = endpoint.stats() if stats else None
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    cpu_before = cpu_snapshot(endpoint.proxy_pids)
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    level.wall = time.perf_counter() - began
    cpu_after = cpu_snapshot(endpoint.proxy_pids)
    level.cpu = {key: cpu_after[key] - cpu_before[key] for key in ("client", "proxy", "machine_busy")}
    level.cpu["cores"] = cpu_after["cores"]
    if before is None:
        return level
    after = endpoint.stats()
    level.served = {key: after[key] - before[key] for key in ("batches", "requests", "refine_s", "queued_s", "cpu_s")
                    if key in after}
    batches = after["batches"] - before["batches"]
    if batches > 0:
        level.mean_batch = (after["requests"] - before["requests"]) / batches
    return level


def engine_throughput(model_dir: str, bodies: list[dict], limits: dict, batch: int,
                      min_seconds: float = 3.0) -> dict:
    """`generate` in this process on the first `batch` bodies (cycled), validated as the server
    validates them under its `limits` (GET /v1/model): items/s of the median call, and what writing
    each as `.pose` costs on top."""
    import dataclasses

    from t2p.generation import as_pose, generate
    from t2p.model import T2PModel
    from t2p.pose import write_pose
    from t2p.serving import ServeConfig
    from t2p.serving.requests import GenerateRequest, validate_request

    model = T2PModel.load(model_dir)
    known = {f.name for f in dataclasses.fields(ServeConfig)}
    config = ServeConfig(**{key: value for key, value in limits.items() if key in known}).for_model(model)
    jobs = [validate_request(GenerateRequest(**body), model, config) for body in itertools.islice(itertools.cycle(bodies), batch)]

    def call():
        return generate(model, [job.request for job in jobs])
    sequences = call()  # warm-up
    times = []
    cpu_began = time.process_time()
    while len(times) < 3 or sum(times) < min_seconds:
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    cpu = (time.process_time() - cpu_began) / (len(times) * batch)
    write_pose(as_pose(model, sequences[0], jobs[0].first_pose))  # warm-up: its first call imports
    began = time.perf_counter()
    for sequence, job in zip(sequences, jobs):
        write_pose(as_pose(model, sequence, job.first_pose))
    written = (time.perf_counter() - began) / len(jobs)
    median = percentile(times, 50)
    return {"items_per_s": batch / median, "call_s": median, "calls": len(times), "write_ms": written * 1e3,
            "cpu_ms": cpu * 1e3,
            "frames": sorted({len(sequence) for sequence in sequences})}


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
    parser.add_argument("--model", default=None,
                        help="the model folder the server serves: measure `generate` in-process on the same requests first")
    parser.add_argument("--engine-batch", type=int, default=32, help="items per in-process `generate` call (--model)")
    parser.add_argument("--no-wave", action="store_true", help="skip the 1 request / 32 at once comparison")
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
    print(f"load generator: pid {os.getpid()}; Serve's HTTP proxy: pid {', '.join(map(str, endpoint.proxy_pids)) or '(not found on this machine)'}")
    warmup = run_level(endpoint, bodies[:2], 1, args.max_seconds)
    if warmup.errors:
        raise SystemExit(f"serve_load: the warm-up request failed: {warmup.errors[0]}")
    engine = None
    if args.model:
        import torch
        engine = engine_throughput(args.model, bodies, limits, args.engine_batch)
        print(f"engine: generate in-process, {args.engine_batch} items per call, {torch.get_num_threads()} threads "
              f"({engine['calls']} calls, frames {engine['frames']}): {engine['call_s'] * 1e3:.1f} ms per call = "
              f"{engine['items_per_s']:.1f} items/s, {engine['cpu_ms']:.2f} CPU ms per item; as_pose + write_pose "
              f"{engine['write_ms']:.2f} ms per item")
        threads = torch.get_num_threads()
        if threads > 1:  # what one core gives: the share of the second
            torch.set_num_threads(1)
            one = engine_throughput(args.model, bodies, limits, args.engine_batch)
            torch.set_num_threads(threads)
            print(f"engine on 1 thread: {one['items_per_s']:.1f} items/s, {one['cpu_ms']:.2f} CPU ms per item")

    print(f"{'concurrency':>11} {'ok':>5} {'errors':>6} {'wall_s':>8} {'req/s':>8} {'p50_ms':>8} {'p99_ms':>8} "
          f"{'mean_batch':>10} | CPU ms/req: {'client':>6} {'proxy':>6} {'replica':>7} | {'refine%':>7} "
          f"{'queued_ms':>9} {'busy%':>5}")
    levels = []
    for concurrency in args.concurrency:
        level = run_level(endpoint, bodies, concurrency, args.max_seconds)
        levels.append(level)
        done = len(level.latencies)
        per_request = 1e3 / max(1, level.served.get("requests", done))
        print(f"{concurrency:>11} {done:>5} {len(level.errors):>6} {level.wall:>8.2f} {done / level.wall:>8.2f} "
              f"{percentile(level.latencies, 50) * 1e3:>8.1f} {percentile(level.latencies, 99) * 1e3:>8.1f} "
              f"{level.mean_batch:>10.2f} | {'':>11} {level.cpu['client'] * per_request:>6.2f} "
              f"{level.cpu['proxy'] * per_request:>6.2f} {level.served.get('cpu_s', float('nan')) * per_request:>7.2f} | "
              f"{100 * level.served.get('refine_s', float('nan')) / level.wall:>7.1f} "
              f"{level.served.get('queued_s', float('nan')) * per_request:>9.1f} "
              f"{100 * level.cpu['machine_busy'] / (level.cpu['cores'] * level.wall):>5.0f}")
        if level.errors:
            print(f"{'':>11} first error: {level.errors[0]}")
    if engine:
        for level in levels:
            if level.concurrency == args.engine_batch and level.latencies:
                if abs(level.mean_batch - args.engine_batch) > 0.25 * args.engine_batch:  # the replica's batches
                    batch = max(1, round(level.mean_batch))
                    alike = engine_throughput(args.model, bodies, limits, batch)
                    print(f"engine at the replica's mean batch, {batch} items per call: {alike['items_per_s']:.1f} items/s, "
                          f"{alike['cpu_ms']:.2f} CPU ms per item")
                rate = len(level.latencies) / level.wall
                print(f"share at concurrency {level.concurrency}: {rate:.1f} req/s / {engine['items_per_s']:.1f} items/s = "
                      f"{100 * rate / engine['items_per_s']:.0f}% of the engine; overhead per request "
                      f"{1e3 / rate - 1e3 / engine['items_per_s']:.2f} ms (p99/p50 "
                      f"{percentile(level.latencies, 99) / percentile(level.latencies, 50):.2f})")
    if args.no_wave:
        return 0

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
