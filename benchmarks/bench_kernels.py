"""Numba conv2d_int vs PyTorch FP32 conv2d on ResNet-shaped layers (same machine, same thread count).

Runs are interleaved (torch, numba, torch, numba, ...) so background load hits both alike; prints median
times and the median of the per-pair time ratios numba/torch (< 1 means numba is faster).

    .venv/bin/python benchmarks/bench_kernels.py [--reps 30] [--acc-bits 32] [--n 4] [--threads 2] [--quick]
        [--strategy auto simd dot grid]   (one numba column per fast-path strategy, see tersim.kernels.conv)
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numba
import numpy as np
import torch
import torch.nn.functional as F

import tersim.kernels.conv as kconv
from tersim.kernels import conv2d_int

# (name, input shape, Cout, kernel, stride, padding)
LAYERS = [
    ("res2 3x3 64->64 @56", (1, 64, 56, 56), 64, 3, 1, 1),
    ("stem 7x7/2 3->64 @224", (1, 3, 224, 224), 64, 7, 2, 3),
    ("res2 1x1 64->256 @56", (1, 64, 56, 56), 256, 1, 1, 0),
    ("res3 3x3/2 128->128 @56", (1, 128, 56, 56), 128, 3, 2, 1),
    ("res4 3x3 256->256 @14", (1, 256, 14, 14), 256, 3, 1, 1),
    ("res4 1x1 1024->256 @14", (1, 1024, 14, 14), 256, 1, 1, 0),
    ("res5 3x3 512->512 @7", (1, 512, 7, 7), 512, 3, 1, 1),
]


def make_layer(shape, cout, k, n, rng):
    """Post-ReLU-like 8-bit activations (half zeros), ternary codes, 8-bit alphas."""
    cin = shape[1]
    x = rng.integers(0, 256, shape).astype(np.int32)
    x[rng.random(shape) < 0.5] = 0
    codes = rng.integers(-1, 2, (cout, cin, k, k)).astype(np.int8)
    alpha = rng.integers(1, 256, (cout, k, k, math.ceil(cin / n))).astype(np.int32)
    bias = rng.integers(-1000, 1000, cout).astype(np.int64)
    return x, codes, alpha, bias


def bench(name, shape, cout, k, stride, pad, args, rng):
    """Median over interleaved pairs of numba_time / torch_time, per strategy."""
    n = min(args.n, shape[1])
    x, codes, alpha, bias = make_layer(shape, cout, k, n, rng)
    tx, tw = torch.randn(*shape), torch.randn(cout, shape[1], k, k)

    def run_numba(strategy):
        kconv.STRATEGY = strategy
        try:
            return conv2d_int(x, codes, alpha, bias, group_size=n, stride=(stride, stride), padding=(pad, pad),
                              dilation=(1, 1), groups=1, acc_bits=args.acc_bits, saturate=True, shift=8,
                              out_lo=0, out_hi=255)
        finally:
            kconv.STRATEGY = "auto"

    def run_torch():
        with torch.no_grad():
            return F.conv2d(tx, tw, stride=stride, padding=pad)

    fns = [run_torch] + [lambda s=s: run_numba(s) for s in args.strategy]
    for _ in range(3):
        for f in fns:
            f()
    times = [[] for _ in fns]
    for _ in range(args.reps):
        for f, ts in zip(fns, times):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    tt = times[0]
    ratios = [statistics.median(a / b for a, b in zip(tn, tt)) for tn in times[1:]]
    cols = "  ".join(f"{s} {statistics.median(tn) * 1e3:6.2f} ms ({r:4.2f})"
                     for s, tn, r in zip(args.strategy, times[1:], ratios))
    print(f"{name:26s} torch {statistics.median(tt) * 1e3:6.2f} ms  numba: {cols}")
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--acc-bits", type=int, default=32)
    ap.add_argument("--n", type=int, default=4, help="FGQ group size")
    ap.add_argument("--quick", action="store_true", help="only the 56x56x64 3x3 layer")
    ap.add_argument("--strategy", nargs="+", default=["auto"], choices=["auto", "simd", "dot", "grid"],
                    help="fast-path strategies to time (tersim.kernels.conv.STRATEGY)")
    ap.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS,
                    help="threads for both (1 is steadier on a loaded machine)")
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    print(f"threads: numba {numba.get_num_threads()}, torch {torch.get_num_threads()}; "
          f"N={args.n}, acc_bits={args.acc_bits}; median ms, (median of per-pair ratios numba/torch)")
    rng = np.random.default_rng(0)
    ratios = [bench(*layer, args, rng) for layer in (LAYERS[:1] if args.quick else LAYERS)]
    for i, s in enumerate(args.strategy):
        print(f"{s}: median ratio numba/torch over layers: {statistics.median(r[i] for r in ratios):.2f}")


if __name__ == "__main__":
    main()
