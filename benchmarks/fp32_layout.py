"""The FP32 pass of `tersim run` (tersim.frontend.float_exec, float32) with channels_last convolutions, as it
runs, against the same pass with NCHW ones, side by side in one process.

    python benchmarks/fp32_layout.py [--model resnet50] [--samples 16] [--repeats 5] [--threads 2]

The two passes alternate call by call (one warm-up each); prints median wall and CPU times, their ratios, and
how far the two passes' outputs are apart (the same float32 arithmetic summed in another order).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from tersim.frontend import float_exec
from tersim.frontend.loader import import_model
from tersim.models.zoo import ZOO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=sorted(ZOO))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    graph = import_model(args.model)
    x = np.random.default_rng(0).standard_normal((args.samples, *graph.input_shape)).astype(np.float32)
    layouts = {"channels_last": float_exec.FLOAT32_OPS["conv2d"], "nchw": float_exec.OPS["conv2d"]}

    def run(layout: str) -> tuple[float, float, np.ndarray]:
        float_exec.FLOAT32_OPS["conv2d"] = layouts[layout]
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            y = float_exec.execute_float(graph, x, dtype=np.float32)
            return time.perf_counter() - wall, time.process_time() - cpu, y
        finally:
            float_exec.FLOAT32_OPS["conv2d"] = layouts["channels_last"]

    outputs = {layout: run(layout)[2] for layout in layouts}        # warm-up
    times = {layout: ([], []) for layout in layouts}
    for _ in range(args.repeats):
        for layout in layouts:
            wall, cpu, y = run(layout)
            assert np.array_equal(y, outputs[layout]), f"{layout}: the pass is not deterministic"
            times[layout][0].append(wall)
            times[layout][1].append(cpu)
    med = {layout: (statistics.median(w), statistics.median(c)) for layout, (w, c) in times.items()}
    diff = np.abs(outputs["channels_last"].astype(np.float64) - outputs["nchw"])
    scale = np.abs(outputs["nchw"]).max()
    print(f"# {args.model}, {args.samples} samples, torch {torch.__version__} at {args.threads} threads, "
          f"median of {args.repeats} interleaved; load average {os.getloadavg()[0]:.1f}")
    for layout, (wall, cpu) in med.items():
        print(f"  {layout:<14} {wall:6.3f} s wall  {cpu:6.3f} s CPU")
    print(f"  channels_last / nchw: {med['channels_last'][0] / med['nchw'][0]:.2f}x wall, "
          f"{med['channels_last'][1] / med['nchw'][1]:.2f}x CPU")
    print(f"  outputs: max |difference| {diff.max():.3g} (largest |output| {scale:.3g}), "
          f"identical argmax on {np.mean(outputs['channels_last'].argmax(1) == outputs['nchw'].argmax(1)):.0%}")


if __name__ == "__main__":
    main()
