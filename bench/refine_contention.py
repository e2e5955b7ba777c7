"""How much other work on the same cores slows refinement: is Serve's gap to the engine the GIL?

`generate` of 26 items x 10 steps x 40 frames (the rows a replica refines per step at concurrency 32)
in this process, alone and beside pure-Python work busy 25% and 50% of the time, once in a thread of
this process (sharing its interpreter lock, as a replica's event loop does) and once in a process of
its own (sharing only the cores). Each setting the best of 3, the whole sweep twice.

    python bench/refine_contention.py --model runs/default/best
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def busy(stop, duty: float) -> None:
    """Pure-Python work `duty` of the time (like an event loop parsing requests and writing answers)."""
    while not stop.is_set():
        began = time.perf_counter()
        while time.perf_counter() - began < 0.002 * duty:
            sum(i * i for i in range(200))
        time.sleep(0.002 * (1 - duty))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/default/best")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    from bench.peak import describe
    from t2p.generation import SignRequest, generate
    from t2p.model import T2PModel
    torch.set_num_threads(2)
    print(f"machine: {describe()}")
    model = T2PModel.load(args.model)
    requests = [SignRequest(letter, steps=10, length=40) for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    generate(model, requests[:4])

    def best_of_3() -> float:
        times = []
        for _ in range(3):
            began = time.perf_counter()
            generate(model, requests)
            times.append(time.perf_counter() - began)
        return min(times)

    for _ in range(args.rounds):
        for where, duty in (("alone", 0.0), ("thread", 0.25), ("process", 0.25), ("thread", 0.5), ("process", 0.5)):
            if where == "thread":
                stop = threading.Event()
                other = threading.Thread(target=busy, args=(stop, duty))
            elif where == "process":
                stop = multiprocessing.Event()
                other = multiprocessing.Process(target=busy, args=(stop, duty))
            if where != "alone":
                other.start()
            took = best_of_3()
            if where != "alone":
                stop.set()
                other.join()
            label = "alone" if where == "alone" else f"beside Python work {duty:.0%} busy in a {where}"
            print(f"{label:<42} 26 items x 10 steps in {took * 1e3:4.0f} ms: {26 / took:5.1f} items/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
