"""Where integer execution spends its time, per layer kind, next to torch FP32 on the same model and input.

    python benchmarks/profile_layers.py [--models resnet50 resnet18] [--batch 1] [--repeats 7] [--threads 1]

CPU time (time.process_time: this process, all threads) rather than wall time, so that other jobs on a shared
machine disturb the figures less; torch and tersim calls interleaved, medians of --repeats. Each row is one
kernel entry point of tersim.kernels (convs by shape, summed over the layers of that shape), plus the parts of
the VNNI conv path (input packing, the tile kernel, the weight fingerprint and plan look-up), which are
also inside their conv rows. The MAC rate of a conv row is its multiply-accumulates over its CPU time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numba
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tersim.kernels as K  # noqa: E402
from tersim.config import Accelerator  # noqa: E402
from tersim.engine.execute import execute  # noqa: E402
from tersim.frontend import lower_module  # noqa: E402
from tersim.kernels import conv, simd  # noqa: E402
from tersim.models.zoo import ZOO, build  # noqa: E402
from tersim.quantize.graph import quantize_graph  # noqa: E402

PARTS = ((simd, "channels_last_pairs", "  vnni: input packing"), (simd, "conv2d_vnni_kernel", "  vnni: tile kernel"),
         (conv, "_weight_keys", "  conv: weight fingerprint"), (conv, "_weight_plan", "  conv: plan look-up"))
OPS = ("linear_int", "add_int", "requantize_int", "max_pool2d_int", "avg_pool2d_int", "adaptive_avg_pool2d_int")


class Timer:
    """Wraps module functions so that each call adds its CPU time (and, for convs, MACs) to a row."""

    def __init__(self):
        self.cpu: dict[str, float] = defaultdict(float)
        self.macs: dict[str, int] = defaultdict(int)
        self._undo: list = []

    def wrap(self, module, name: str, row) -> None:
        fn = getattr(module, name)

        def timed(*args, **kwargs):
            start = time.process_time()
            out = fn(*args, **kwargs)
            label = row(args, kwargs, out) if callable(row) else row
            self.cpu[label] += time.process_time() - start
            return out

        setattr(module, name, timed)
        self._undo.append((module, name, fn))

    def restore(self) -> None:
        for module, name, fn in reversed(self._undo):
            setattr(module, name, fn)


def conv_row(timer: Timer):
    def row(args, kwargs, out):
        x, codes = args[0], args[1]
        label = (f"conv {codes.shape[2]}x{codes.shape[3]}/{kwargs['stride'][0]} {codes.shape[1] * kwargs['groups']}"
                 f"->{codes.shape[0]} @{x.shape[2]}")
        timer.macs[label] += int(np.prod(codes.shape)) * int(np.prod(out[0].shape)) // codes.shape[0]
        return label
    return row


def profile(name: str, batch: int, repeats: int) -> tuple[str, list[str]]:
    model, shape = build(name), ZOO[name].input_shape
    x = torch.randn(batch, *shape)
    graph = lower_module(model, torch.randn(2, *shape), name)
    qgraph = quantize_graph(graph, [x.numpy()], Accelerator().with_overrides({"group_scaling.group_size": 4,
                                                                              "pe.act_bits": 8}))
    xn = x.numpy()
    timer = Timer()
    timer.wrap(K, "conv2d_int", conv_row(timer))
    for op in OPS:
        timer.wrap(K, op, op)
    for module, fn, label in PARTS:
        if hasattr(module, fn):  # older revisions lack some parts (before/after comparisons)
            timer.wrap(module, fn, label)
    runs, torch_cpu, total_cpu = [], [], []
    try:
        with torch.no_grad():
            for i in range(repeats + 1):  # the first round warms up (Numba compilation, caches)
                start = time.process_time()
                model(x)
                t_torch = time.process_time() - start
                timer.cpu.clear()
                timer.macs.clear()
                start = time.process_time()
                execute(qgraph, xn, keep_all=False)
                t_tersim = time.process_time() - start
                if i:
                    torch_cpu.append(t_torch)
                    total_cpu.append(t_tersim)
                    runs.append((dict(timer.cpu), dict(timer.macs)))
    finally:
        timer.restore()
    t_torch, t_tersim = statistics.median(torch_cpu), statistics.median(total_cpu)
    head = (f"{name} batch {batch}: torch FP32 {1e3 * t_torch:.1f} ms CPU, tersim {1e3 * t_tersim:.1f} ms CPU, "
            f"torch/tersim {t_torch / t_tersim:.2f}x")
    rows = {label: statistics.median(r[0].get(label, 0.0) for r in runs) for label in runs[0][0]}
    macs = runs[0][1]
    lines = []
    for label, t in sorted(rows.items(), key=lambda kv: -kv[1]):
        rate = f"  {macs[label] / t / 1e9:6.1f} GMAC/s" if label in macs and t > 0 else ""
        lines.append(f"  {label:<34} {1e3 * t:8.2f} ms  {100 * t / t_tersim:5.1f}%{rate}")
    return head, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "resnet18"], choices=sorted(ZOO))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"threads: torch {torch.get_num_threads()}, numba {numba.get_num_threads()}; CPU-time medians of "
          f"{args.repeats} interleaved runs; VNNI {'yes' if simd.HAVE_VNNI else 'no'}; "
          f"load average before {'/'.join(f'{v:.1f}' for v in load)}")
    for name in args.models:
        head, lines = profile(name, args.batch, args.repeats)
        print(head)
        print("\n".join(lines))
    print(f"load average after {'/'.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    np.random.seed(0)
    torch.manual_seed(0)
    main()
