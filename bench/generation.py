"""Generation efficiency: seconds per `generate` call and achieved FLOP/s against this machine's
fp32 GEMM peak, measured in the same process.

    python bench/generation.py                       # default config and hidden 512, 32 texts x 10 steps x 77 frames
    python bench/generation.py --device cuda --repeats 20

FLOPs are counted analytically (2 per multiply-add of every matrix product: projections,
attention scores and values, feed-forward, input and output layers, the text encoder once per
call), because `FlopCounterMode` does not see inside PyTorch's fused transformer encoder path.
Random weights: speed does not depend on what was learned.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.peak import gemm_peak  # noqa: E402
from bench.peak import synchronize as _sync  # noqa: E402
from t2p.data.sources import fingerspelling_items  # noqa: E402
from t2p.generation import SignRequest, generate  # noqa: E402
from t2p.model import ModelConfig, ScheduleConfig, T2PModel  # noqa: E402
from t2p.notation import SignText, Vocabulary  # noqa: E402
from t2p.pose import Skeleton, read_pose  # noqa: E402

CONFIGS = {
    "default": {},
    "hidden-512": {"d_model": 512, "heads": 8},
}


def _encoder_flops(tokens: int, d: int, ff: int, layers: int, keys: int | None = None) -> float:
    keys = tokens if keys is None else keys
    projections = 2 * tokens * d * (4 * d)        # q, k, v and the output projection
    attention = 2 * 2 * tokens * keys * d          # scores and weighted values, all heads together
    feed_forward = 2 * 2 * tokens * d * ff
    return layers * (projections + attention + feed_forward)


def generation_flops(config: ModelConfig, batch: int, text_tokens: int, frames: int, steps: int) -> float:
    """Matrix-product FLOPs of one `generate` call."""
    d, ff, size, joints = config.d_model, config.d_model * config.ff_mult, config.num_joints * config.dims, \
        config.num_joints
    text = _encoder_flops(text_tokens, d, ff, config.text_layers)
    sequence = 1 + text_tokens + frames
    refiner = (_encoder_flops(sequence, d, ff, config.refiner_layers)
               + 2 * frames * (3 * size + joints) * d   # frames in: x_t, the start pose, known values and mask
               + 2 * frames * d * (size + joints)       # frames and presence out
               + 2 * text_tokens * d * d + 2 * 2 * d * d)  # text projection, step embedding
    return batch * (text + steps * refiner)


def build_model(overrides: dict, device: str) -> tuple[T2PModel, list[SignText]]:
    skeleton = Skeleton.from_pose(read_pose(fingerspelling_items()[0].path))  # the default data's skeleton
    signs = [SignText(f"{chr(65 + i % 26)}{chr(65 + i * 7 % 26)}", "text", "ase") for i in range(32)]
    vocabulary = Vocabulary.build(signs)
    config = ModelConfig(vocabulary=list(vocabulary.tokens), skeleton=skeleton.to_dict(), dropout=0.0, **overrides)
    torch.manual_seed(0)
    return T2PModel(config, ScheduleConfig(steps=10)).to(device).eval(), signs


def measure(name: str, overrides: dict, args, peak: float) -> dict:
    model, signs = build_model(overrides, args.device)
    signs = signs[:args.batch]
    requests = [SignRequest(sign, steps=args.steps, length=args.frames) for sign in signs]
    call = lambda: generate(model, requests)  # noqa: E731
    for _ in range(2):
        call()
    times = []
    for _ in range(args.repeats):
        _sync(args.device)
        began = time.perf_counter()
        call()
        _sync(args.device)
        times.append(time.perf_counter() - began)
    text_tokens = max(len(model.vocabulary.encode(sign)) for sign in signs)
    flops = generation_flops(model.config, len(signs), text_tokens, args.frames, args.steps)
    seconds = statistics.median(times)
    return {"config": name, "d_model": model.config.d_model, "seconds": seconds, "best": min(times),
            "gflop": flops / 1e9, "gflops": flops / seconds / 1e9, "share": flops / seconds / peak}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32, help="texts per call")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--frames", type=int, default=77)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"from {', '.join(CONFIGS)}")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    peak = gemm_peak(args.device)
    print(f"device {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
          f"fp32 GEMM peak (2048^2) {peak / 1e9:.1f} GFLOP/s")
    print(f"{args.batch} texts x {args.steps} steps x {args.frames} frames per call\n")
    print("| config | d_model | s/call (median) | best | GFLOP/call | GFLOP/s | share of peak |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        row = measure(name, CONFIGS[name], args, peak)
        print(f"| {row['config']} | {row['d_model']} | {row['seconds']:.3f} | {row['best']:.3f} | "
              f"{row['gflop']:.1f} | {row['gflops']:.1f} | {row['share']:.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
