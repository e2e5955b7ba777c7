"""Choose Serve's batching settings by measurement: for each `max_batch_size` x `batch_wait_timeout_s`,
start `t2p serve`, send `--requests` requests at `--concurrency`, and print throughput, p50/p99
latency, the mean batch, errors, and `time(32 concurrent) / time(1 request)`; then stop the server.

    python bench/serve_sweep.py --model runs/default/best --batch-sizes 8,16,32 --timeouts 0.002,0.01,0.05

Each setting starts its own server (its own local Ray, about 15 s). Loopback only.
"""
from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.peak import describe  # noqa: E402
from bench.serve_load import DEFAULT_TEXTS, Endpoint, percentile, run_level  # noqa: E402


def wait_until_up(endpoint: Endpoint, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"serve_sweep: t2p serve exited with {server.returncode}")
        try:
            if endpoint.request("GET", "/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"serve_sweep: no answer on port {endpoint.port} after {timeout_s:.0f} s")


def measure_setting(args, batch_size: int, timeout: float, port: int) -> dict:
    t2p = Path(sys.executable).with_name("t2p")
    command = [str(t2p), "serve", "--model", args.model, "--port", str(port), "--max-batch-size", str(batch_size),
               "--batch-wait-timeout-s", str(timeout)]
    log = open(Path(args.logs) / f"serve-{batch_size}-{timeout}.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = Endpoint("127.0.0.1", port, 120)
    try:
        wait_until_up(endpoint, server, 180)
        texts = itertools.cycle(DEFAULT_TEXTS)
        options = {"steps": args.steps} if args.steps else {}
        bodies = [{"text": next(texts), "language": args.language, **options} for _ in range(args.requests)]
        run_level(endpoint, bodies[:4], 1, 60)  # warm-up
        load = run_level(endpoint, bodies, args.concurrency, 600)
        single = run_level(endpoint, bodies[:5], 1, 60)
        wave = run_level(endpoint, bodies[:32], 32, 60)
        one = percentile(single.latencies, 50)
        return {"batch": batch_size, "timeout": timeout, "ok": len(load.latencies), "errors": len(load.errors),
                "throughput": len(load.latencies) / load.wall, "p50": percentile(load.latencies, 50),
                "p99": percentile(load.latencies, 99), "mean_batch": load.mean_batch, "one": one,
                "ratio": wave.wall / one if wave.latencies else float("nan"), "first_error": (load.errors or [""])[0]}
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/default/best")
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--timeouts", default="0.002,0.01,0.05", help="batch_wait_timeout_s values")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--language", default="ase")
    parser.add_argument("--steps", type=int, default=None, help="refinement steps per request (default: the model's)")
    parser.add_argument("--port", type=int, default=8100, help="first port; each setting takes the next")
    parser.add_argument("--logs", default="/tmp", help="folder for each server's log")
    args = parser.parse_args(argv)
    if not Path(args.model).is_dir():
        parser.error(f"--model {args.model}: no such folder (train one with `t2p quickstart`)")
    print(describe())
    print(f"{args.requests} requests at concurrency {args.concurrency} per setting, model {args.model}, "
          f"steps {args.steps or 'the model default'}\n")
    print("| max_batch_size | batch_wait_timeout_s | errors | req/s | p50 ms | p99 ms | mean batch | 1 request ms "
          "| 32 at once / 1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    settings = itertools.product([int(b) for b in args.batch_sizes.split(",")],
                                 [float(t) for t in args.timeouts.split(",")])
    for port, (batch_size, timeout) in enumerate(settings, args.port):
        row = measure_setting(args, batch_size, timeout, port)
        print(f"| {row['batch']} | {row['timeout']} | {row['errors']} | {row['throughput']:.1f} | "
              f"{row['p50'] * 1e3:.0f} | {row['p99'] * 1e3:.0f} | {row['mean_batch']:.1f} | {row['one'] * 1e3:.0f} | "
              f"{row['ratio']:.2f} |", flush=True)
        if row["first_error"]:
            print(f"  first error: {row['first_error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
