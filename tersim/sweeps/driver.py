"""The sweep driver: plan the points, serve cached ones, compute the FP32 reference once, compute the rest with
an executor (`tersim.parallel.spread`), assemble the tables."""
from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tersim import __version__
from tersim.config import Accelerator, load_accelerator
from tersim.frontend import Graph
from tersim.options import RunOptions
from tersim.parallel import spread
from tersim.sweeps.cache import PointCache
from tersim.sweeps import executors
from tersim.sweeps.executors import Evaluation
from tersim.sweeps.plan import Task, graph_digest, hardware_points, plan_tasks
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
    data / calib as for `tersim.run` (files, image folders with preprocess/class_map, arrays, Datasets); the
    FP32 outputs are computed once per (model, data, preprocessing), cached beside the points (`fp32/`).
    """
    from tersim.frontend import import_model

    options = RunOptions.of(options, **changes)
    if "timing" not in options.model_fields_set:
        options = options.replace(timing="analytic")
    hw = hw if isinstance(hw, Accelerator) else load_accelerator(hw)
    hw_points = hardware_points(hw, overrides or {}, options)
    if timing_only is None:
        timing_only = options.data is None and is_zoo_name(model)
    graph = model if isinstance(model, Graph) else import_model(model, input_shape=options.input_shape,
                                                                trust_pickle=options.trust_pickle,
                                                                weights=options.weights)
    if progress is None:
        progress = sys.stderr.isatty() and not options.quiet
    # the points' keys name cache files (and the FP32 reference's): without a cache they need not hash the weights
    graph_hash = graph_digest(graph) if cache_dir is not None else "uncached"
    if timing_only:
        options = options.replace(limit=None)
    evaluation, data_hash, calib_hash = _evaluation(graph, graph_hash, options, cache_dir, progress, timing_only)
    if (data_hash is None and not timing_only) or (options.calib is not None and calib_hash is None):
        cache_dir = None  # data without an identity (a Dataset object): points cannot be cached by content

    tasks = plan_tasks(hw_points, group_sizes, act_bits, options, graph_hash, data_hash, timing_only, calib_hash)
    return _collect(tasks, graph, evaluation, PointCache(cache_dir), progress, options,
                    [path for path in (overrides or {})])


def _evaluation(graph: Graph, graph_hash: str, options: RunOptions, cache_dir: str | Path | None,
                progress: bool, timing_only: bool) -> tuple[Evaluation | None, str | None, str | None]:
    """The sweep's data and calibration sources and the FP32 model's outputs on the data, computed in one pass
    for all points (they do not depend on the point); the content hashes of the data (with the calibration
    data: executed points calibrate on it) and of the calibration data alone (timing-only points use it for
    bn_reestimate only); None: none or unknown. Timing-only: the calibration source only (and the weight norms
    its tasks share, see `Evaluation`)."""
    from tersim.pipeline import fp32_reference, open_source

    calib = None if options.calib is None else open_source(options.calib, graph, options, None)
    calib_hash = None if calib is None else calib.identity
    if timing_only:
        return Evaluation(calib=calib), None, calib_hash
    source = open_source(options.data, graph, options, options.limit)
    data_hash = source.identity
    if data_hash is not None and calib is not None:
        data_hash = None if calib_hash is None else f"{data_hash}|calib:{calib_hash}"
    ref_key = None if source.identity is None else hashlib.sha256(
        f"{graph_hash}|{source.identity}|{options.batch_size}|{__version__}".encode()).hexdigest()[:32]
    reference = fp32_reference(graph, source, options.batch_size, cache_dir, progress, ref_key)
    return Evaluation(source, calib, reference), data_hash, calib_hash


def _collect(tasks: list[Task], graph: Graph, data: Evaluation | None, cache: PointCache, progress: bool,
             options: RunOptions, paths: list[str]) -> SweepResult:
    """Serve cached points, compute the rest with the chosen executor, cache each as it finishes."""
    from tqdm import tqdm

    all_points = sorted((p for t in tasks for p in t.points), key=lambda p: p.order)
    done = {p.key: r for p in all_points if (r := cache.get(p.key)) is not None}
    cached = len(done)
    todo = [Task(rest, t.timing_only) for t in tasks if (rest := tuple(p for p in t.points if p.key not in done))]
    bar = tqdm(total=len(all_points), initial=cached, desc="sweep", unit="point", disable=not progress)
    results = spread(_evaluate, todo, (graph, data), **options.where()) if todo else iter(())
    interrupted = False
    try:
        for _, finished in results:
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


def _evaluate(graph: Graph, data: Evaluation | None, task: Task) -> list:
    """A module-level hop so the executors pickle a name and a patched `evaluate_task` (tests) is the one called."""
    return executors.evaluate_task(graph, data, task)


def sweep(hw: Accelerator | str | Path, model: Graph | str | Path, group_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
          act_bits: Sequence[int] = (8, 4), options: RunOptions | None = None, **kwargs) -> pd.DataFrame:
    """One DataFrame row per point (arguments as for `run_sweep`); Ctrl-C raises KeyboardInterrupt, the finished
    points stay in the cache."""
    result = run_sweep(hw, model, group_sizes, act_bits, options, **kwargs)
    if result.interrupted:
        raise KeyboardInterrupt
    return result.points
