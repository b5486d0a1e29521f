"""Evaluating sweep points: `evaluate_task` (runs on a worker) and the executors that spread tasks over
the current process, a local process pool or a dask.distributed cluster; each yields finished task results
as they come."""
from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence

import numpy as np

from tersim.errors import TersimError, one_line
from tersim.frontend import Graph
from tersim.report.optional import require
from tersim.sweeps.cache import PointResult, native
from tersim.sweeps.plan import Point, Task, quantization_key


def evaluate_task(graph: Graph, data: tuple[np.ndarray, np.ndarray | None] | None,
                  task: Task) -> list[tuple[str, PointResult]]:
    """Compute the points of `task` (they share their quantization, `plan.quantization_key`): each result
    equals `pipeline.run` of the point alone."""
    results = _timing_only(graph, task.points) if task.timing_only else _executed(graph, data, task.points)
    return [(p.key, PointResult(_plain(r.summary.iloc[0].to_dict()), r.layers))
            for p, r in zip(task.points, results)]


def _layer_shapes(graph: Graph, qgraph) -> dict:
    from tersim.pipeline import layer_shape

    return {name: layer_shape(graph, layer) for name, layer in qgraph.layers.items() if layer.weight_kind}


def _executed(graph: Graph, data, points: Sequence[Point]) -> list:
    """`pipeline.run` of every point: quantization and execution once per quantization key, the analytic
    timing and report rows per point (sweeps never step the cycle engine per point: the engine's timing
    rows need the point's own run)."""
    from tersim.pipeline import evaluate, run, tabulate

    shared: dict[str, tuple] = {}
    results = []
    for p in points:
        options = p.options.replace(data=data)
        if options.timing != "analytic":
            results.append(run(p.hw, graph, options))
            continue
        key = quantization_key(options.apply(p.hw))
        if key not in shared:
            e = evaluate(p.hw, graph, options)
            shared[key] = (e, _layer_shapes(graph, e.qgraph))
        e, shapes = shared[key]
        hw = options.apply(p.hw)
        results.append(tabulate(graph, e.qgraph, hw, samples=len(e.x), labelled=e.y is not None,
                                overflow=e.overflow, metrics=e.metrics, shapes=shapes))
    return results


def _timing_only(graph: Graph, points: Sequence[Point]) -> list:
    """Quantization stats and analytic timing without executing the network: weights are ternarized once per
    N (and alpha width, quantization options), the quantized graph built once per quantization key;
    activation formats come from one synthetic sample (timing does not depend on them)."""
    from tersim.data import synthetic_inputs
    from tersim.pipeline import calibration_inputs, tabulate
    from tersim.quantize.graph import quantize_graph, quantize_weights

    calibration = [synthetic_inputs(graph.input_shape, 1)]
    weights: dict[str, dict] = {}
    quantized: dict[str, tuple] = {}
    results = []
    for p in points:
        hw = p.options.apply(p.hw)
        wkey, qkey = quantization_key(hw, with_act_bits=False), quantization_key(hw)
        if wkey not in weights:
            calib = calibration_inputs(hw, graph, p.options.calib, np.zeros((0,)), None)[0]  # bn_reestimate only
            weights[wkey] = quantize_weights(graph, hw, calib)
        if qkey not in quantized:
            qgraph = quantize_graph(graph, calibration, hw, weights=weights[wkey])
            quantized[qkey] = (qgraph, _layer_shapes(graph, qgraph))
        qgraph, shapes = quantized[qkey]
        results.append(tabulate(graph, qgraph, hw, samples=0, labelled=False, shapes=shapes))
    return results


def _plain(row: dict) -> dict:
    return {k: native(v) if isinstance(v, np.generic) else v for k, v in row.items()}


Results = Iterator[list[tuple[str, PointResult]]]


def serial_results(tasks: list[Task], graph: Graph, data) -> Results:
    for task in tasks:
        yield evaluate_task(graph, data, task)


_WORKER: dict = {}


def _init_worker(graph: Graph, data) -> None:
    """Process-pool initializer: the graph and data arrive once per process; Ctrl-C is the parent's job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.update(graph=graph, data=data)


def _pool_task(task: Task) -> list[tuple[str, PointResult]]:
    return evaluate_task(_WORKER["graph"], _WORKER["data"], task)


def process_results(tasks: list[Task], graph: Graph, data, jobs: int) -> Results:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: a forked child inherits torch's/numba's thread pools mid-state and can deadlock
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(graph, data))
    try:
        for future in as_completed([pool.submit(_pool_task, t) for t in tasks]):
            yield future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def dask_results(tasks: list[Task], graph: Graph, data, dask: object, workers: int | None) -> Results:
    """On a dask.distributed cluster: `dask` is a Client or a scheduler address; else a LocalCluster of `workers`."""
    distributed = require("distributed", extra="dask")
    Client, LocalCluster, as_completed = distributed.Client, distributed.LocalCluster, distributed.as_completed
    owned = []
    if isinstance(dask, Client):
        client = dask
    else:
        if dask is None:
            owned.append(LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None))
        try:
            client = Client(dask if dask is not None else owned[0], timeout="20s")
        except (OSError, ValueError, TypeError) as exc:
            raise TersimError(f"dask={dask!r} (--dask): cannot reach the scheduler: {one_line(exc)}") from None
        owned.insert(0, client)
    futures = []
    try:
        graph_f = client.scatter(graph, broadcast=True)
        data_f = client.scatter(data, broadcast=True) if data is not None else None
        futures = [client.submit(evaluate_task, graph_f, data_f, t, pure=False) for t in tasks]
        for future in as_completed(futures):
            yield future.result()
    finally:
        if futures:
            client.cancel(futures)
        for obj in owned:
            obj.close()
