"""The cycle-stepped simulate phase of `tersim run ... resnet50`, this tree vs a git ref, side by side in one run.

    /work/venv/bin/python benchmarks/simulate_phase.py [--against main] [--repeats 5] [--out reports/cycle_engine.txt]

Two child processes, one importing this tree's tersim and one a `git archive` of --against (unpacked once per
commit under the temp dir, Numba cache included), each prepare ResNet-50 on hw_configs/default.yaml (one
synthetic sample) and step it once per thread count to warm up. Then the parent asks them in turn (interleaved,
--repeats rounds) to time `tersim.engine.checks.simulate_checked` -- what `pipeline._simulate` runs: the integer
execution of the sample and every weighted layer stepped on the array and checked -- at 1 and 2 Numba threads,
wall time and process CPU time. Prints medians and ratios, the load average before and after; writes them as the
last section of --out (replacing an earlier one).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tersim.files import write_text_atomic  # noqa: E402

SECTION = "simulate phase of `tersim run hw_configs/default.yaml resnet50`"
THREADS = (1, 2)

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from numba import set_num_threads
from tersim.config import load_accelerator
from tersim.engine.checks import simulate_checked
from tersim.pipeline import layer_shape, prepare
hw = load_accelerator(sys.argv[1] + "/hw_configs/default.yaml")
p = prepare(hw, "resnet50", limit=1)
shapes = {n: layer_shape(p.graph, l) for n, l in p.qgraph.layers.items() if l.weight_kind}
for threads in (1, 2):
    set_num_threads(threads)
    simulate_checked(p.qgraph, hw, p.x, shapes)
print("ready", flush=True)
for line in sys.stdin:
    set_num_threads(int(line))
    wall, cpu = time.perf_counter(), time.process_time()
    simulate_checked(p.qgraph, hw, p.x, shapes)
    print(json.dumps([time.perf_counter() - wall, time.process_time() - cpu]), flush=True)
"""


def _tree_of(ref: str) -> Path:
    """An unpacked copy of `ref` (kept under the temp dir, keyed by commit, so its Numba cache is reused)."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], check=True, capture_output=True,
                         text=True).stdout.strip()
    tree = Path(tempfile.gettempdir()) / f"tersim-bench-{sha[:12]}"
    if not (tree / "tersim").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "tersim", "hw_configs"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _child(tree: Path) -> subprocess.Popen:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(max(THREADS)))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tree)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, cwd=str(tree))
    return proc


def _ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise SystemExit(f"benchmark child failed to start (got {line!r})")


def _time(proc: subprocess.Popen, threads: int) -> tuple[float, float]:
    proc.stdin.write(f"{threads}\n")
    proc.stdin.flush()
    wall, cpu = json.loads(proc.stdout.readline())
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="main", help="git ref to compare with (default main)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "reports" / "cycle_engine.txt"), help="'-' = print only")
    args = parser.parse_args(argv)
    trees = {"this tree": ROOT, args.against: _tree_of(args.against)}
    load_before = os.getloadavg()
    procs = {name: _child(tree) for name, tree in trees.items()}
    for proc in procs.values():
        _ready(proc)
    times = {(name, t): [] for name in procs for t in THREADS}
    for _ in range(args.repeats):
        for t in THREADS:
            for name, proc in procs.items():
                times[name, t].append(_time(proc, t))
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    load_after = os.getloadavg()
    base, head = args.against, "this tree"
    lines = [f"{SECTION}: this tree vs {base}", f"(benchmarks/simulate_phase.py, {os.cpu_count()} cores, median of "
             f"{args.repeats} interleaved runs, load average {load_before[0]:.2f} before / {load_after[0]:.2f} after)"]
    for t in THREADS:
        med = {name: [statistics.median(x[i] for x in times[name, t]) for i in (0, 1)] for name in procs}
        lines.append(f"  {t} thread{'s' if t > 1 else ' '}  wall {base} {med[base][0]:6.2f} s  this tree "
                     f"{med[head][0]:6.2f} s  ({med[base][0] / med[head][0]:.2f}x)   CPU {base} {med[base][1]:6.2f} s  "
                     f"this tree {med[head][1]:6.2f} s  ({med[base][1] / med[head][1]:.2f}x)")
    text = "\n".join(lines)
    print(text)
    if args.out == "-":
        return 0
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    keep = old.split(f"\n{SECTION}")[0].rstrip("\n") if old else ""
    write_text_atomic(out, (keep + "\n\n" if keep else "") + text + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
