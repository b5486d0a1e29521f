"""Sweep throughput with the analytic timing model: points per second, computed and from the cache.

    python benchmarks/sweep_throughput.py [--repeats 3] [--skip-resnet50]

Cases (the model is loaded once, outside the timed region; each computed sweep starts from an empty cache):
  * resnet50 (zoo, 224x224, random weights), timing-only, N in 1..64 x act_bits {8, 4}: 14 points;
  * digits (shipped model), timing-only, same 14 points;
  * digits, full (executed on the 500 test images, accuracy), same 14 points;
  * each again from the point cache (cache hits only).
Prints the median wall time over --repeats and points per second. On a shared machine read medians and ratios.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tersim.config import load_accelerator
from tersim.data import load_dataset
from tersim.frontend import import_model
from tersim.sweeps import run_sweep

ROOT = Path(__file__).resolve().parents[1]
GROUP_SIZES, ACT_BITS = [1, 2, 4, 8, 16, 32, 64], [8, 4]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(name: str, graph, data, timing_only: bool, repeats: int) -> list[tuple[str, float, int]]:
    """(label, median seconds, points) for a cold sweep and for the same sweep served from the cache."""
    hw = load_accelerator(ROOT / "hw_configs/default.yaml")
    points = len(GROUP_SIZES) * len(ACT_BITS)
    cold, warm = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            def sweep():
                return run_sweep(hw, graph, GROUP_SIZES, ACT_BITS, data=data, timing_only=timing_only,
                                 cache_dir=cache, progress=False)
            cold.append(_timed(sweep))
            warm.append(_timed(sweep))
    mode = "timing-only" if timing_only else f"full ({len(data[0])} samples)"
    return [(f"{name} {mode}", statistics.median(cold), points),
            (f"{name} {mode}, cache hits", statistics.median(warm), points)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-resnet50", action="store_true")
    args = parser.parse_args()
    digits = import_model(ROOT / "examples/digits_resnet.pt2")
    data = load_dataset(ROOT / "examples/digits_test.npz")
    run_sweep(ROOT / "hw_configs/default.yaml", digits, [4], [8], data=data, limit=8)  # warm-up: Numba, imports
    rows = []
    if not args.skip_resnet50:
        start = time.perf_counter()
        resnet50 = import_model("resnet50")
        print(f"resnet50: build + export + lower {time.perf_counter() - start:.1f} s (not in the figures below)")
        rows += bench("resnet50", resnet50, None, True, max(1, args.repeats // 3))
    rows += bench("digits", digits, None, True, args.repeats)
    rows += bench("digits", digits, data, False, args.repeats)
    print(f"{len(GROUP_SIZES)} group sizes x {len(ACT_BITS)} act_bits, serial, analytic timing; median wall time")
    print(f"{'case':<40} {'points':>6} {'seconds':>9} {'points/s':>10}")
    for label, seconds, points in rows:
        print(f"{label:<40} {points:>6} {seconds:>9.3f} {points / seconds:>10.1f}")


if __name__ == "__main__":
    main()
