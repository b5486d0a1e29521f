"""Bit-exact functional execution (Numba integer engine) vs PyTorch FP32 inference, same model, same threads.

    python benchmarks/functional_vs_torch.py [--models digits resnet18 resnet50] [--repeats 5] [--threads 2]

Prints median wall times (the two interleaved call by call) and the ratio torch_fp32 / tersim (>= 1.0 means tersim is at least as fast).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
import torch

from tersim.config import Accelerator
from tersim.engine.execute import execute
from tersim.frontend import lower_module
from tersim.models.digits import digits_resnet
from tersim.models.zoo import ZOO, build
from tersim.quantize.graph import quantize_graph


def _median_seconds(fns: list, repeats: int) -> list[float]:
    """Median wall time of each function, calls interleaved so that load on a shared machine hits all alike."""
    for fn in fns:
        fn()  # warm-up (Numba compilation, torch allocator)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def bench(name: str, repeats: int, batch: int) -> dict:
    if name == "digits":
        model, shape = digits_resnet().eval(), (1, 8, 8)
    else:
        model, shape = build(name), ZOO[name].input_shape
    x = torch.randn(batch, *shape)
    graph = lower_module(model, torch.randn(2, *shape), name)
    qgraph = quantize_graph(graph, [x.numpy()], Accelerator().with_overrides({"group_scaling.group_size": 4, "pe.act_bits": 8}))
    xn = x.numpy()
    with torch.no_grad():
        t_torch, t_tersim = _median_seconds([lambda: model(x), lambda: execute(qgraph, xn, keep_all=False)], repeats)
    return {"model": name, "batch": batch, "torch_fp32_ms": 1e3 * t_torch, "tersim_int_ms": 1e3 * t_tersim,
            "ratio_torch_over_tersim": t_torch / t_tersim}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits", "resnet18", "resnet50"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    print(f"threads: torch {torch.get_num_threads()}, numba {numba.get_num_threads()}; "
          f"median of {args.repeats} runs, FGQ N=4, 8-bit activations")
    print(f"{'model':<10} {'batch':>5} {'torch FP32 ms':>14} {'tersim int ms':>14} {'torch/tersim':>13}")
    for name in args.models:
        r = bench(name, args.repeats, args.batch)
        print(f"{r['model']:<10} {r['batch']:>5} {r['torch_fp32_ms']:>14.2f} {r['tersim_int_ms']:>14.2f} "
              f"{r['ratio_torch_over_tersim']:>12.2f}x")


if __name__ == "__main__":
    np.random.seed(0)
    main()
