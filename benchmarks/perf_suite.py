"""The performance table of tersim in one run: integer execution vs torch FP32, FGQ speed, `run` wall time and
peak memory, sweep throughput. Every row is measured in this process (or a child it waits for) at the same time.

    python benchmarks/perf_suite.py [--repeats 7] [--threads 2] [--out reports/perf.txt] [--skip ROW ...]

* exec rows: torch FP32 inference and tersim's bit-exact integer execution of the same model on the same
  input, the two calls interleaved, median of --repeats; the ratio torch / tersim (> 1: tersim faster).
* fgq row: `quantize_weights` (exact FGQ of every conv/linear weight of ResNet-50, with the fixed-point
  alphas and per-layer statistics), median of --repeats, for N = 4.
* run rows: `python -m tersim run hw_configs/default.yaml resnet50` as a child process (wall time from
  start to exit, peak RSS of that child alone: its VmHWM at exit; os.wait4's ru_maxrss would also count
  this process, whose memory the child's fork carried before exec), on a fresh temporary graph cache
  ($TERSIM_CACHE_DIR): once cold (the child lowers ResNet-50 with torch.export and caches it), then WARM_RUNS
  times warm (the lowered graph read from the cache, as every later run of the model). The target applies to
  the warm runs' median (one run moves by seconds on a shared VM; their range is printed too).
* sweep row: ResNet-50 timing-only sweep, 3 group sizes x 27 hardware points (array rows x cols x
  dataflow), serial, no point cache; the model is loaded before the clock starts.

On a shared machine absolute times move with the load: read the ratios, and the load average printed with
the table.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tersim.config import Accelerator, load_accelerator  # noqa: E402
from tersim.files import write_text_atomic  # noqa: E402
from tersim.frontend.graph_cache import ENV_VAR as GRAPH_CACHE_ENV  # noqa: E402
from tersim.quantize.graph import quantize_weights  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from functional_vs_torch import _median_seconds as interleaved_medians  # noqa: E402  (calls interleaved, medians)
from functional_vs_torch import bench as exec_bench  # noqa: E402

SWEEP_N = [1, 4, 16]
SWEEP_HW = {"array.rows": [8, 16, 32], "array.cols": [8, 16, 32],
            "array.dataflow": ["weight_stationary", "output_stationary", "input_stationary"]}
ROWS = ("exec", "fgq", "run", "sweep")


def exec_row(name: str, batch: int, repeats: int) -> tuple:
    r = exec_bench(name, repeats, batch)
    ratio = r["ratio_torch_over_tersim"]
    return (f"{name} integer exec vs torch FP32, batch {batch}",
            f"{ratio:.2f}x (torch {r['torch_fp32_ms']:.1f} ms, tersim {r['tersim_int_ms']:.1f} ms)", ">= 1.5x",
            ratio >= 1.5)


def fgq_row(repeats: int) -> tuple:
    from tersim.frontend import import_model

    graph = import_model("resnet50")
    hw = Accelerator().with_overrides({"group_scaling.group_size": 4})
    n_weights = sum(n.weight.size for n in graph.weighted())
    (t,) = interleaved_medians([lambda: quantize_weights(graph, hw)], repeats)
    return (f"FGQ exact ternarization of ResNet-50 ({n_weights / 1e6:.1f} M weights), N=4", f"{t:.3f} s",
            "<= 0.3 s", t <= 0.3)


# Runs `python -m tersim ARGS` and, at exit, writes the process's VmHWM (peak resident set, KiB) to argv[1].
_PEAK_RSS_WRAPPER = """
import atexit, runpy, sys
def _write_peak(path=sys.argv[1]):
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(path, "w") as out:
        out.write(peak)
atexit.register(_write_peak)
sys.argv = ["tersim", *sys.argv[2:]]
runpy.run_module("tersim", run_name="__main__", alter_sys=True)
"""


def _run_child(cache_dir: str) -> tuple[float, float]:
    """(wall s, peak RSS GB) of one `tersim run ... resnet50` child using the graph cache in cache_dir."""
    with tempfile.TemporaryDirectory() as out:
        peak_file = os.path.join(out, "peak_kib")
        cmd = [sys.executable, "-c", _PEAK_RSS_WRAPPER, peak_file, "run", "hw_configs/default.yaml", "resnet50",
               "--out", os.path.join(out, "run")]
        env = {**os.environ, GRAPH_CACHE_ENV: cache_dir}
        start = time.perf_counter()
        child = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - start
        if child.returncode != 0:
            raise SystemExit(f"perf_suite: `tersim {' '.join(cmd[4:])}` failed:\n{child.stderr.decode()}")
        with open(peak_file) as f:
            peak_kib = int(f.read())
    return wall, peak_kib * 1024 / 1e9


WARM_RUNS = 3


def run_rows() -> list[tuple]:
    """Children on one fresh graph cache: the first lowers ResNet-50 (torch.export) and fills the cache (cold),
    the next WARM_RUNS read it (warm: what every later run of the model pays). The target is the warm median's
    (wall; peak RSS: the largest of the warm runs)."""
    label = "`tersim run hw_configs/default.yaml resnet50` (16 samples, engine timing)"
    with tempfile.TemporaryDirectory() as cache_dir:
        cold = _run_child(cache_dir)
        warms = [_run_child(cache_dir) for _ in range(WARM_RUNS)]
    walls = sorted(w[0] for w in warms)
    wall, peak = statistics.median(walls), max(w[1] for w in warms)
    return [(f"{label}, warm graph cache, median of {WARM_RUNS}",
             f"{wall:.1f} s wall ({walls[0]:.1f}-{walls[-1]:.1f}), {peak:.2f} GB peak RSS", "<= 8 s, <= 1 GB",
             wall <= 8 and peak <= 1),
            (f"{label}, cold graph cache (first run: torch.export)", f"{cold[0]:.1f} s wall, {cold[1]:.2f} GB peak RSS",
             "(no target)", None)]


def sweep_row(repeats: int) -> tuple:
    from tersim.frontend import import_model
    from tersim.sweeps import run_sweep

    graph = import_model("resnet50")
    hw = load_accelerator(ROOT / "hw_configs/default.yaml")
    points = len(SWEEP_N) * int(np.prod([len(v) for v in SWEEP_HW.values()]))

    def sweep():
        run_sweep(hw, graph, SWEEP_N, [8], overrides=SWEEP_HW, timing_only=True, progress=False)

    (t,) = interleaved_medians([sweep], max(1, repeats // 3))
    return (f"ResNet-50 timing-only sweep, {len(SWEEP_N)} N x {points // len(SWEEP_N)} hardware points",
            f"{points / t:.1f} points/s ({points} points in {t:.2f} s)", ">= 50 points/s", points / t >= 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "reports/perf.txt"), help="'-' = print only")
    parser.add_argument("--skip", nargs="*", default=[], choices=ROWS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    if "exec" not in args.skip:
        for name, batch in (("resnet50", 1), ("resnet50", 8), ("resnet18", 1)):
            rows.append(exec_row(name, batch, args.repeats))
            print(*rows[-1][:2], sep=": ", flush=True)
    if "fgq" not in args.skip:
        rows.append(fgq_row(args.repeats))
        print(*rows[-1][:2], sep=": ", flush=True)
    if "run" not in args.skip:
        for row in run_rows():
            rows.append(row)
            print(*rows[-1][:2], sep=": ", flush=True)
    if "sweep" not in args.skip:
        rows.append(sweep_row(args.repeats))
        print(*rows[-1][:2], sep=": ", flush=True)
    load_after = os.getloadavg()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    from tersim.kernels.simd import HAVE_VNNI

    lines = [f"$ python benchmarks/perf_suite.py --repeats {args.repeats} --threads {args.threads}",
             f"# {cpu}, {os.cpu_count()} cores, AVX-512 VNNI {'yes' if HAVE_VNNI else 'no'}; torch {torch.__version__}, "
             f"numba {numba.__version__}; threads: torch {torch.get_num_threads()}, numba {numba.get_num_threads()}",
             f"# load average (1/5/15 min) before {'/'.join(f'{v:.1f}' for v in load_before)}, "
             f"after {'/'.join(f'{v:.1f}' for v in load_after)} (shared machine: other jobs ran alongside)",
             f"# exec and fgq rows: medians of {args.repeats} interleaved repeats; sweep row: median of "
             f"{max(1, args.repeats // 3)}; run rows: child processes on a fresh graph cache (1 cold, then {WARM_RUNS} warm)",
             ""]
    width = max(len(r[0]) for r in rows) if rows else 10
    vwidth = max(len(r[1]) for r in rows) if rows else 10
    lines.append(f"{'figure':<{width}}  {'measured':<{vwidth}}  {'target':<16} met")
    for label, value, target, met in rows:
        lines.append(f"{label:<{width}}  {value:<{vwidth}}  {target:<16} {'-' if met is None else 'yes' if met else 'NO'}")
    text = "\n".join(lines) + "\n"
    print()
    print(text, end="")
    if args.out != "-":
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
