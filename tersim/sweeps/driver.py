"""The sweep driver: plan the points, serve cached ones, compute the rest with an executor, assemble the tables."""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tersim.config import Accelerator, load_accelerator
from tersim.frontend import Graph
from tersim.options import RunOptions
from tersim.sweeps.executors import Results, dask_results, process_results, serial_results
from tersim.sweeps.cache import PointCache
from tersim.sweeps.plan import Task, data_digest, graph_digest, hardware_points, plan_tasks
from tersim.sweeps.report import frames


@dataclass


class SweepResult:
    """`points`: one row per point; `layers`: per-layer rows of every point with the point's key columns."""

    points: pd.DataFrame
    layers: pd.DataFrame
    interrupted: bool = False
    computed: int = 0
    cached: int = 0
    key_columns: list[str] = field(default_factory=list)


def is_zoo_name(model: object) -> bool:
    """A zoo name given instead of a file: random weights, so accuracy means nothing."""
    from tersim.models.zoo import ZOO

    return isinstance(model, (str, Path)) and str(model) in ZOO and not Path(model).is_file()


def run_sweep(
    hw: Accelerator | str | Path,
    model: Graph | str | Path,
    group_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    act_bits: Sequence[int] = (8, 4),
    options: RunOptions | None = None,
    *,
    overrides: Mapping[str, Sequence] | None = None,
    timing_only: bool | None = None,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
    jobs: int | None = None,
    workers: int | None = None,
    dask: object = None,
    **changes,
) -> SweepResult:
    """Evaluate every (overrides, N, act_bits) point; Ctrl-C returns the finished points with interrupted=True.

    Each point is `pipeline.run(hw + overrides, model, options + (N, act_bits))`: `options` (a RunOptions)
    and/or its fields as keywords (data, limit, method, first_last, input_shape, trust_pickle, ...);
    timing is analytic unless `timing` is given.
    overrides: field path -> values, e.g. {"array.rows": [8, 16, 32]}; every combination is a hardware point.
    timing_only: skip execution and accuracy (quantization stats + analytic timing); None = only for a zoo
      name without data (random weights). cache_dir: None = no cache. progress: None = when stderr is a tty.
    jobs: local worker processes; workers: a dask LocalCluster of that many; dask: a Client or scheduler address.
    """
    from tersim.data import load_inputs, model_classes
    from tersim.frontend import import_model

    options = RunOptions.of(options, **changes)
    if "timing" not in options.model_fields_set:
        options = options.replace(timing="analytic")
    hw = hw if isinstance(hw, Accelerator) else load_accelerator(hw)
    hw_points = hardware_points(hw, overrides or {}, options)
    if timing_only is None:
        timing_only = options.data is None and is_zoo_name(model)
    graph = model if isinstance(model, Graph) else import_model(model, input_shape=options.input_shape,
                                                                trust_pickle=options.trust_pickle)
    dataset = None if timing_only or options.data is None else load_inputs(options.data, graph.input_shape, model_classes(graph))
    if timing_only:
        options = options.replace(limit=None)

    calib = None if options.calib is None else load_inputs(options.calib, graph.input_shape)
    tasks = plan_tasks(hw_points, group_sizes, act_bits, options, graph_digest(graph), data_digest(dataset),
                       timing_only, data_digest(calib))
    return _collect(tasks, graph, dataset, PointCache(cache_dir), progress, jobs, workers, dask,
                    [path for path in (overrides or {})])


def _collect(tasks: list[Task], graph: Graph, data, cache: PointCache, progress: bool | None,
             jobs: int | None, workers: int | None, dask: object, paths: list[str]) -> SweepResult:
    """Serve cached points, compute the rest with the chosen executor, cache each as it finishes."""
    from tqdm import tqdm

    all_points = sorted((p for t in tasks for p in t.points), key=lambda p: p.order)
    done = {p.key: r for p in all_points if (r := cache.get(p.key)) is not None}
    cached = len(done)
    todo = [Task(rest, t.timing_only) for t in tasks if (rest := tuple(p for p in t.points if p.key not in done))]
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=len(all_points), initial=cached, desc="sweep", unit="point", disable=not progress)
    if not todo:
        results: Results = iter(())
    elif dask is not None or workers:
        results = dask_results(todo, graph, data, dask, workers)
    elif jobs and jobs > 1:
        results = process_results(todo, graph, data, jobs)
    else:
        results = serial_results(todo, graph, data)
    interrupted = False
    try:
        for finished in results:
            for key, result in finished:
                cache.put(key, result)
                done[key] = result
                bar.update()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if hasattr(results, "close"):
            results.close()
    finished_points = [p for p in all_points if p.key in done]
    return SweepResult(*frames(finished_points, done, paths), interrupted=interrupted,
                       computed=len(done) - cached, cached=cached,
                       key_columns=["model", "hw", *paths, "group_size", "act_bits"])


def sweep(hw: Accelerator | str | Path, model: Graph | str | Path, group_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
          act_bits: Sequence[int] = (8, 4), options: RunOptions | None = None, **kwargs) -> pd.DataFrame:
    """One DataFrame row per point (arguments as for `run_sweep`); Ctrl-C raises KeyboardInterrupt, the finished
    points stay in the cache."""
    result = run_sweep(hw, model, group_sizes, act_bits, options, **kwargs)
    if result.interrupted:
        raise KeyboardInterrupt
    return result.points
