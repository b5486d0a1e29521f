"""Design-space sweeps: group size N x activation bits x hardware overrides, one tidy DataFrame row per point.

    points = run_sweep(hw, model, [1, 4, 64], [8, 4], overrides={"array.rows": [8, 16]}).points

Every point is `pipeline.run` (or, in timing-only mode, quantization + analytic timing without executing the
network) on the hardware config with that point's overrides. Points that share their quantization (N, alpha
width, accumulator, quantization options, act_bits: `plan.quantization_key`) share the work too: the weights
are ternarized once per N, the quantized graph (and, with data, the execution and accuracy) built once per key,
and only the analytic timing and report rows are per point, with the same results as each point alone. Points
are cached by content hash as they finish, so a re-run (or a run after Ctrl-C) only computes what is missing. Points run serially by default,
on a local process pool (`jobs`), or on dask.distributed (`workers` for a LocalCluster, `dask` for a
scheduler address or Client); the lowered Graph is shipped to the workers once.

    plan.py       which points, their cache keys, units of work (tasks)
    cache.py      finished points on disk
    executors.py  evaluating a task (spread over processes or dask by tersim.parallel)
    report.py     the points/layers DataFrames and the report files
    driver.py     run_sweep / sweep: plan -> cache -> execute -> tables

(The package is `sweeps`, not `sweep`: `tersim.sweep` is the function, exported lazily by tersim/__init__.py.)
"""
from tersim.sweeps.cache import PointCache, PointResult
from tersim.sweeps.driver import SweepResult, is_zoo_name, run_sweep, sweep
from tersim.sweeps.executors import evaluate_task
from tersim.sweeps.plan import (AXES, KEY_COLUMNS, Point, Task, data_digest, graph_digest, hardware_points, parse_set,
                                plan_tasks, point_key)
from tersim.sweeps.report import available_formats, frames, report_stem, write_reports

__all__ = ["AXES", "KEY_COLUMNS", "Point", "PointCache", "PointResult", "SweepResult", "Task", "available_formats",
           "data_digest", "evaluate_task", "frames", "graph_digest", "hardware_points", "is_zoo_name", "parse_set",
           "plan_tasks", "point_key", "report_stem", "run_sweep", "sweep", "write_reports"]
