"""Evaluating sweep points: `evaluate_task` runs on a worker (the current process, a local process pool or a
dask.distributed cluster: `tersim.parallel.spread`, the executor `run`'s dataset shards use too)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tersim.frontend import Graph
from tersim.sweeps.cache import PointResult, native
from tersim.sweeps.plan import Point, Task, quantization_key


@dataclass
class Evaluation:
    """What every point of a sweep evaluates on: the data, the calibration data, the FP32 outputs (once).
    Timing-only sweeps carry only `calib` (bn_reestimate points need it), or no Evaluation at all."""

    source: object = None     # tersim.data.DataSource (None: timing-only)
    calib: object = None      # a DataSource, or None = the first batches of `source`
    reference: object = None  # tersim.pipeline.Fp32Reference


def evaluate_task(graph: Graph, data: Evaluation | None, task: Task) -> list[tuple[str, PointResult]]:
    """Compute the points of `task` (they share their quantization, `plan.quantization_key`): each result
    equals `pipeline.run` of the point alone, on the sweep's data source with the FP32 outputs computed once
    for all points."""
    data = data or Evaluation()
    results = _timing_only(graph, data, task.points) if task.timing_only else _executed(graph, data, task.points)
    return [(p.key, PointResult(_plain(r.summary.iloc[0].to_dict()), r.layers))
            for p, r in zip(task.points, results)]


def _per_layer(graph: Graph, qgraph, skip: bool) -> dict:
    """tabulate's per-layer inputs that do not depend on the hardware point: shapes and operation counts.
    `skip`: some point of the task has `zero_weights: skip` (the only reader of the shapes' non-zero masks)."""
    from tersim.engine.counts import layer_counts
    from tersim.pipeline import layer_shape

    weighted = [(name, layer) for name, layer in qgraph.layers.items() if layer.weight_kind]
    return {"shapes": {name: layer_shape(graph, layer, nonzero=skip) for name, layer in weighted},
            "counts": {name: layer_counts(layer) for name, layer in weighted}}


def _executed(graph: Graph, data: Evaluation, points: Sequence[Point]) -> list:
    """`pipeline.run` of every point: quantization and execution once per quantization key (the FP32 outputs
    once per sweep: `data.reference`), the analytic timing and report rows per point (sweeps never step the
    cycle engine per point: the engine's timing rows need the point's own run)."""
    from tersim.pipeline import evaluate, run, tabulate

    shared: dict[str, tuple] = {}
    skip = _any_skip(points)
    results = []
    for p in points:
        options = p.options.replace(data=data.source, calib=data.calib)
        if options.timing != "analytic":
            results.append(run(p.hw, graph, options, reference=data.reference))
            continue
        hw = options.apply(p.hw)
        key = quantization_key(hw)
        if key not in shared:
            e = evaluate(p.hw, graph, options, reference=data.reference)
            shared[key] = (e, _per_layer(graph, e.qgraph, skip))
        e, per_layer = shared[key]
        results.append(tabulate(graph, e.qgraph, hw, samples=e.source.length, labelled=e.source.labelled,
                                overflow=e.overflow, metrics=e.metrics, **per_layer))
    return results


def _timing_only(graph: Graph, data: Evaluation, points: Sequence[Point]) -> list:
    """Quantization stats and analytic timing without executing the network: weights are ternarized once per
    N (and alpha width, quantization options), the quantized graph built once per quantization key. Nothing is
    executed, so no activation is calibrated either (no batches: every format has frac 0); no reported figure
    depends on the activation formats."""
    from tersim.pipeline import calibration_inputs, tabulate
    from tersim.quantize.graph import quantize_graph, quantize_weights

    calibration: list[np.ndarray] = []
    weights: dict[str, dict] = {}
    quantized: dict[str, tuple] = {}
    skip = _any_skip(points)
    results = []
    for p in points:
        hw = p.options.apply(p.hw)
        wkey, qkey = quantization_key(hw, with_act_bits=False), quantization_key(hw)
        if wkey not in weights:
            calib = calibration_inputs(hw, data.calib, None)[0]  # bn_reestimate only
            weights[wkey] = quantize_weights(graph, hw, calib)
        if qkey not in quantized:
            qgraph = quantize_graph(graph, calibration, hw, weights=weights[wkey])
            quantized[qkey] = (qgraph, _per_layer(graph, qgraph, skip))
        qgraph, per_layer = quantized[qkey]
        results.append(tabulate(graph, qgraph, hw, samples=0, labelled=False, **per_layer))
    return results


def _any_skip(points: Sequence[Point]) -> bool:
    """Some point of the task has `zero_weights: skip` (once per task, not per quantization key)."""
    return any(p.options.apply(p.hw).pe.zero_weights == "skip" for p in points)


def _plain(row: dict) -> dict:
    return {k: native(v) if isinstance(v, np.generic) else v for k, v in row.items()}
