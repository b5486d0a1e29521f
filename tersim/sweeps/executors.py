"""Evaluating sweep points: `evaluate_task` runs on a worker (the current process, a local process pool or a
dask.distributed cluster: `tersim.parallel.spread`, the executor `run`'s dataset shards use too)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tersim.frontend import Graph
from tersim.sweeps.cache import PointResult, native
from tersim.sweeps.plan import Point, Task, quantization_key


@dataclass
class Evaluation:
    """What every point of a sweep evaluates on: the data, the calibration data, the FP32 outputs (once).
    Timing-only sweeps carry only `calib` (bn_reestimate points need it) and, once a task made them, the
    graph's weight norms, which every N's quantization shares (a task per N: they share this object in one
    process; a copy sent to another process starts empty)."""

    source: object = None     # tersim.data.DataSource (None: timing-only)
    calib: object = None      # a DataSource, or None = the first batches of `source`
    reference: object = None  # tersim.pipeline.Fp32Reference
    norms: object = None      # tersim.quantize.fgq.WeightNorms of the sweep's graph


def evaluate_task(graph: Graph, data: Evaluation | None, task: Task) -> list[tuple[str, PointResult]]:
    """Compute the points of `task` (they share their quantization, `plan.quantization_key`): each result
    equals `pipeline.run` of the point alone, on the sweep's data source with the FP32 outputs computed once
    for all points."""
    data = data or Evaluation()
    results = _timing_only(graph, data, task.points) if task.timing_only else _executed(graph, data, task.points)
    return [(p.key, r) for p, r in zip(task.points, results)]


@dataclass
class _Shared:
    """The points of a task that share one quantized graph (and, executed, its evaluation): their positions
    in the task and their hardware (options folded in), tabulated together by `pipeline.tabulate_points`."""

    qgraph: object
    evaluated: object = None   # tersim.pipeline.Evaluated (executed points), None (timing-only)
    at: list[int] = field(default_factory=list)
    hws: list = field(default_factory=list)


def _tabulated(graph: Graph, shared: Sequence[_Shared], results: list) -> list[PointResult]:
    """Fill `results` (one slot per point of the task) with the tabulated points of every `_Shared`."""
    from tersim.pipeline import tabulate_points

    for s in shared:
        e = s.evaluated
        tables = tabulate_points(graph, s.qgraph, s.hws, samples=0 if e is None else e.source.length,
                                 labelled=False if e is None else e.source.labelled,
                                 overflow=None if e is None else e.overflow, metrics=None if e is None else e.metrics)
        for at, table in zip(s.at, tables):
            results[at] = PointResult(_plain(table.summary), table.columns)
    return results


def _executed(graph: Graph, data: Evaluation, points: Sequence[Point]) -> list[PointResult]:
    """`pipeline.run` of every point: quantization and execution once per quantization key (the FP32 outputs
    once per sweep: `data.reference`), the analytic timing and report rows per point (sweeps never step the
    cycle engine per point: the engine's timing rows need the point's own run)."""
    from tersim.pipeline import evaluate, run

    shared: dict[str, _Shared] = {}
    results: list = [None] * len(points)
    for at, p in enumerate(points):
        options = p.options.replace(data=data.source, calib=data.calib)
        if options.timing != "analytic":
            r = run(p.hw, graph, options, reference=data.reference)
            results[at] = PointResult(_plain(r.summary.iloc[0].to_dict()), r.layers)
            continue
        hw = options.apply(p.hw)
        key = quantization_key(hw)
        if key not in shared:
            e = evaluate(p.hw, graph, options, reference=data.reference)
            shared[key] = _Shared(e.qgraph, e)
        shared[key].at.append(at)
        shared[key].hws.append(hw)
    return _tabulated(graph, list(shared.values()), results)


def _timing_only(graph: Graph, data: Evaluation, points: Sequence[Point]) -> list[PointResult]:
    """Quantization stats and analytic timing without executing the network: weights are ternarized once per
    N (and alpha width, quantization options), the quantized graph built once per quantization key. Nothing is
    executed, so no activation is calibrated either (no batches: every format has frac 0); no reported figure
    depends on the activation formats."""
    from tersim.pipeline import calibration_inputs
    from tersim.quantize.fgq import WeightNorms
    from tersim.quantize.graph import quantize_graph, quantize_weights

    calibration: list[np.ndarray] = []
    if data.norms is None:
        data.norms = WeightNorms()   # the weight stats' reference norms, the same for every N
    weights: dict[str, dict] = {}
    shared: dict[str, _Shared] = {}
    for at, p in enumerate(points):
        hw = p.options.apply(p.hw)
        wkey, qkey = quantization_key(hw, with_act_bits=False), quantization_key(hw)
        if wkey not in weights:
            calib = calibration_inputs(hw, data.calib, None)[0]  # bn_reestimate only
            weights[wkey] = quantize_weights(graph, hw, calib, norms=data.norms)
        if qkey not in shared:
            shared[qkey] = _Shared(quantize_graph(graph, calibration, hw, weights=weights[wkey]))
        shared[qkey].at.append(at)
        shared[qkey].hws.append(hw)
    return _tabulated(graph, list(shared.values()), [None] * len(points))


def _plain(row: dict) -> dict:
    return {k: native(v) if isinstance(v, np.generic) else v for k, v in row.items()}
