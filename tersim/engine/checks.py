"""Every check of the cycle-stepped array against its references, in one place.

`run` (timing="engine") calls `simulate_checked`; `verify` calls `stepped_matches`. The references: the
integer kernels (tersim.kernels, outputs and overflow events) and the analytic model (tersim.timing.analytic,
every cycle count). The simulator (tersim.engine.cycle_engine) only simulates.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from numba import get_num_threads, set_num_threads, threading_layer

from tersim.config import Accelerator
from tersim.engine.cycle_engine import SCHEDULE_LOCK, step_layer
from tersim.errors import EngineError
from tersim.quantize.graph import QuantizedGraph
from tersim.timing.analytic import LayerTiming, baseline_layer_timing, skip_plan, ternary_timing
from tersim.timing.shapes import LayerShape


@dataclass(frozen=True)
class LayerSimulation:
    """One weighted layer's report timings and where they came from."""

    ternary: LayerTiming
    baseline: LayerTiming
    source: str              # 'engine' or 'analytic'


def _stepped_layers(qgraph: QuantizedGraph):
    """The layers the array runs: weighted, not fused into another."""
    return [(name, layer) for name, layer in qgraph.layers.items()
            if layer.weight_kind is not None and not layer.is_fused_away]


def _concurrent_launches_safe() -> bool:
    """May two Python threads launch Numba parallel kernels at once (the argument checks and requantization do,
    at one thread each)? Not on the workqueue layer (it aborts), nor before a layer is chosen (no parallel kernel
    ran yet)."""
    try:
        return threading_layer() != "workqueue"
    except ValueError:
        return False


@contextmanager
def _one_numba_thread_here():
    """This thread's Numba kernels on one thread for the block (the count is per thread: others keep theirs)."""
    threads = get_num_threads()
    set_num_threads(1)
    try:
        yield
    finally:
        set_num_threads(threads)


def _map_layers(step: Callable, items: Sequence, costs: Sequence[float]) -> list:
    """[step(item) for item in items], the items spread over Numba's thread count (the caller's) of Python
    threads, each stepping whole layers on one Numba thread (the count is per thread: at 1 the stepping kernels
    run serially without the GIL, tersim.kernels.systolic.run_stream_gemm, and no parallel kernel
    oversubscribes the cores).

    Layers are independent given the sample's activations, so this keeps both cores busy with no per-layer
    parallel launch or barrier (which a busy machine makes wait for a descheduled thread). The largest `costs`
    start first (longest processing time first: no big layer is left for the end). Results are gathered in
    `items` order, so the exception raised is the first item's in that order, as in the serial loop; the
    items not yet started then are dropped."""
    workers = min(get_num_threads(), len(items)) if _concurrent_launches_safe() else 1
    if workers <= 1:
        return [step(item) for item in items]
    with ThreadPoolExecutor(workers, thread_name_prefix="tersim-step", initializer=set_num_threads,
                            initargs=(1,)) as pool:
        order = sorted(range(len(items)), key=lambda i: -costs[i])
        futures = dict(zip(order, (pool.submit(step, items[i]) for i in order)))
        try:
            return [futures[i].result() for i in range(len(items))]
        finally:
            for future in futures.values():
                future.cancel()


def stepped_matches(qgraph: QuantizedGraph, hw: Accelerator, outputs: dict[str, np.ndarray],
                    overflow: dict[str, int] | None = None) -> dict[str, bool]:
    """Per weighted layer: does the array, fed the first sample's input from `outputs` (an execution's
    integer tensors), reproduce that sample's output (and overflow count, when `overflow` is per sample)?"""
    def same(item) -> bool:
        name, layer = item
        r = step_layer(layer, outputs[layer.node.inputs[0]][:1], qgraph, hw)
        return bool(np.array_equal(r.y, outputs[name][:1])) and (
            overflow is None or r.overflow_events == overflow[name])

    return _each_stepped_layer(same, qgraph)


def _cost(layer) -> float:
    """A layer's stepping work, for ordering only: its codes times its output pixels (the MACs)."""
    shape = layer.node.shape
    return float(layer.codes.size) * float(np.prod(shape[1:]) if len(shape) > 1 else 1)


def _each_stepped_layer(step: Callable, qgraph: QuantizedGraph) -> dict:
    """{name: step((name, layer))} for every layer the array runs, stepped side by side (`_map_layers`, the
    biggest first by `_cost`), in graph order."""
    layers = _stepped_layers(qgraph)
    results = _map_layers(step, layers, [_cost(layer) for _, layer in layers])
    return dict(zip((name for name, _ in layers), results))


def simulate_checked(qgraph: QuantizedGraph, hw: Accelerator, x: np.ndarray,
                     shapes: dict[str, LayerShape]) -> dict[str, LayerSimulation]:
    """Step every weighted layer of one input sample (x[:1]) through the ternary array and check it: each
    layer's integer output and overflow count must equal tersim.kernels' for that sample, the stepped cycles
    the analytic model's for `shapes[name]`. Any difference raises EngineError (the first layer in graph
    order that differs, though the layers are stepped concurrently: `_map_layers`).

    The FP32 baseline is not stepped again here: it is dense, has no groups, FIFOs or clamping, so its cycles
    are a function of the layer geometry alone, and stepping it gives exactly `baseline_layer_timing`'s
    (tests/test_cycle_engine.py::test_fp32_baseline_on_the_same_stepping checks outputs and cycles over layer
    shapes, array sizes and dataflows, against a float64 conv and the closed form). Its row is the closed form.
    """
    from tersim.engine.execute import execute

    with _one_numba_thread_here():    # one sample is little work: a parallel launch per node costs more when
        sample = execute(qgraph, x[:1], keep_all=True)    # the other core is busy (reports/cycle_engine.txt)

    def step(item) -> LayerSimulation:
        name, layer = item
        r = step_layer(layer, sample.outputs[layer.node.inputs[0]], qgraph, hw)
        if not np.array_equal(r.y, sample.outputs[name]) or r.overflow_events != sample.overflow_events[name]:
            raise EngineError(f"layer '{name}': the cycle-stepped array's output differs from the integer kernel's")
        shape = shapes[name]
        with SCHEDULE_LOCK:
            plan = skip_plan(shape, hw)
            tern = ternary_timing(shape, hw, r.cycles, plan=plan)
            if tern.as_dict() != ternary_timing(shape, hw, plan=plan).as_dict():
                raise EngineError(f"layer '{name}': stepped cycles {r.cycles} differ from the analytic model's")
            return LayerSimulation(tern, baseline_layer_timing(shape, hw), "engine")

    return _each_stepped_layer(step, qgraph)
