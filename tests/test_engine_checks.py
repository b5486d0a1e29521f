"""tersim.engine.checks: layers stepped on several threads give the serial loop's timings, and a bad layer is
reported as the serial loop would (the first in graph order)."""
import dataclasses
import threading
import time

import numpy as np
import pytest
from numba import config as numba_config
from numba import get_num_threads, set_num_threads

import tersim.engine.checks as checks
from tersim.config import load_accelerator
from tersim.engine.cycle_engine import step_layer
from tersim.errors import EngineError
from tersim.pipeline import layer_shape, prepare

from conftest import DATA, HW, MODEL

TWO = min(2, numba_config.NUMBA_NUM_THREADS)


@pytest.fixture(scope="module")
def digits():
    hw = load_accelerator(HW)
    p = prepare(hw, MODEL, data=str(DATA), limit=2)
    shapes = {n: layer_shape(p.graph, layer) for n, layer in p.qgraph.layers.items() if layer.weight_kind}
    return hw, p, shapes


def _at(threads, fn, *args):
    before = get_num_threads()
    set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        set_num_threads(before)


def test_threaded_layers_equal_the_serial_loop(digits):
    hw, p, shapes = digits
    serial = _at(1, checks.simulate_checked, p.qgraph, hw, p.x, shapes)
    threaded = _at(TWO, checks.simulate_checked, p.qgraph, hw, p.x, shapes)
    assert len(serial) >= 4 and list(threaded) == list(serial)
    assert {n: (s.ternary.as_dict(), s.baseline.as_dict(), s.source) for n, s in threaded.items()} == \
        {n: (s.ternary.as_dict(), s.baseline.as_dict(), s.source) for n, s in serial.items()}


@pytest.mark.parametrize("threads", sorted({1, TWO}))
def test_the_first_bad_layer_in_graph_order_is_named(digits, monkeypatch, threads):
    """Two layers' outputs are corrupted; the later one (in graph order) is stepped first and finishes first,
    the earlier one slowly: the error still names the earlier one, as the serial loop did."""
    hw, p, shapes = digits
    names = [n for n, layer in p.qgraph.layers.items() if layer.weight_kind and not layer.is_fused_away]
    early, late = names[1], names[-2]
    seen = []

    def corrupting(layer, x, qgraph, hw_):
        seen.append(layer.node.name)
        r = step_layer(layer, x, qgraph, hw_)
        if layer.node.name == early:
            time.sleep(0.3)
        if layer.node.name in (early, late):
            r.y.flat[0] += 1
        return r

    monkeypatch.setattr(checks, "step_layer", corrupting)
    with pytest.raises(EngineError, match=f"layer '{early}': the cycle-stepped array's output differs"):
        _at(threads, checks.simulate_checked, p.qgraph, hw, p.x, shapes)


@pytest.mark.parametrize("threads", sorted({1, TWO}))
def test_a_step_error_and_a_cycle_error_keep_graph_order(digits, monkeypatch, threads):
    """A later layer raising inside the stepping does not hide an earlier layer's cycle mismatch."""
    hw, p, shapes = digits
    names = [n for n, layer in p.qgraph.layers.items() if layer.weight_kind and not layer.is_fused_away]
    early, late = names[0], names[-1]

    def wrong(layer, x, qgraph, hw_):
        if layer.node.name == late:
            raise EngineError(f"layer '{late}': broken")
        r = step_layer(layer, x, qgraph, hw_)
        if layer.node.name == early:
            time.sleep(0.3)
            r = type(r)(r.y, r.overflow_events, dataclasses.replace(r.cycles, compute=r.cycles.compute + 1), r.counters,
                        r.stepped_cycles, r.pe_cycles, r.shape)
        return r

    monkeypatch.setattr(checks, "step_layer", wrong)
    with pytest.raises(EngineError, match=f"layer '{early}': stepped cycles"):
        _at(threads, checks.simulate_checked, p.qgraph, hw, p.x, shapes)


def test_map_layers_order_threads_and_costs():
    """Results in item order; the costliest items start first; every worker steps at one Numba thread; the
    first item (in order) that raised is the exception, not the first in time."""
    started, counts = [], set()
    lock = threading.Lock()

    def step(i):
        with lock:
            started.append(i)
            counts.add(get_num_threads())
        if i == 1:
            time.sleep(0.2)
            raise ValueError("one")
        if i == 3:
            time.sleep(0.05)
            raise ValueError("three")
        return i * i

    costs = [1.0, 5.0, 2.0, 9.0, 3.0]
    with pytest.raises(ValueError, match="one"):
        _at(TWO, checks._map_layers, step, list(range(5)), costs)
    if TWO > 1:
        assert started[:2] in ([3, 1], [1, 3]) and counts == {1}
    ok = [c if i not in (1, 3) else 0 for i, c in enumerate(costs)]
    assert _at(TWO, checks._map_layers, lambda i: -i, list(range(5)), ok) == [0, -1, -2, -3, -4]
    assert _at(1, checks._map_layers, lambda i: -i, list(range(5)), ok) == [0, -1, -2, -3, -4]


def test_workqueue_layer_steps_in_the_calling_thread(monkeypatch):
    """The workqueue threading layer aborts on concurrent parallel launches: the layers then step serially."""
    where = []
    monkeypatch.setattr(checks, "threading_layer", lambda: "workqueue")
    assert _at(TWO, checks._map_layers, lambda i: where.append(threading.current_thread()) or i, [0, 1, 2],
               [1, 2, 3]) == [0, 1, 2]
    assert set(where) == {threading.current_thread()}
