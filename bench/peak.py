"""The machine's fp32 matrix-product peak, which every benchmark here prints next to its figures."""
from __future__ import annotations

import time

import torch


def gemm_peak(device: str = "cpu", size: int = 2048, repeats: int = 10) -> float:
    """Best fp32 FLOP/s of a size x size matrix product on this device."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        began = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - began)
    return 2 * size ** 3 / best


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def describe(device: str = "cpu") -> str:
    """One line: device, threads, torch version and the fp32 GEMM peak measured now."""
    return (f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
            f"fp32 GEMM peak (2048^2) {gemm_peak(device) / 1e9:.1f} GFLOP/s")
