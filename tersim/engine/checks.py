"""Every check of the cycle-stepped array against its references, in one place.

`run` (timing="engine") calls `simulate_checked`; `verify` calls `stepped_matches`. The references: the
integer kernels (tersim.kernels, outputs and overflow events) and the analytic model (tersim.timing.analytic,
every cycle count). The simulator (tersim.engine.cycle_engine) only simulates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tersim.config import Accelerator
from tersim.engine.cycle_engine import step_layer
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


def stepped_matches(qgraph: QuantizedGraph, hw: Accelerator, outputs: dict[str, np.ndarray],
                    overflow: dict[str, int] | None = None) -> dict[str, bool]:
    """Per weighted layer: does the array, fed the first sample's input from `outputs` (an execution's
    integer tensors), reproduce that sample's output (and overflow count, when `overflow` is per sample)?"""
    same = {}
    for name, layer in _stepped_layers(qgraph):
        r = step_layer(layer, outputs[layer.node.inputs[0]][:1], qgraph, hw)
        same[name] = bool(np.array_equal(r.y, outputs[name][:1])) and (
            overflow is None or r.overflow_events == overflow[name])
    return same


def simulate_checked(qgraph: QuantizedGraph, hw: Accelerator, x: np.ndarray,
                     shapes: dict[str, LayerShape]) -> dict[str, LayerSimulation]:
    """Step every weighted layer of one input sample (x[:1]) through the ternary array and check it: each
    layer's integer output and overflow count must equal tersim.kernels' for that sample, the stepped cycles
    the analytic model's for `shapes[name]`. Any difference raises EngineError.

    The FP32 baseline is not stepped again here: it is dense, has no groups, FIFOs or clamping, so its cycles
    are a function of the layer geometry alone, and stepping it gives exactly `baseline_layer_timing`'s
    (tests/test_cycle_engine.py::test_fp32_baseline_on_the_same_stepping checks outputs and cycles over layer
    shapes, array sizes and dataflows, against a float64 conv and the closed form). Its row is the closed form.
    """
    from tersim.engine.execute import execute

    sample = execute(qgraph, x[:1], keep_all=True)
    out: dict[str, LayerSimulation] = {}
    for name, layer in _stepped_layers(qgraph):
        node, shape = layer.node, shapes[name]
        x_in = sample.outputs[node.inputs[0]]
        r = step_layer(layer, x_in, qgraph, hw)
        if not np.array_equal(r.y, sample.outputs[name]) or r.overflow_events != sample.overflow_events[name]:
            raise EngineError(f"layer '{name}': the cycle-stepped array's output differs from the integer kernel's")
        plan = skip_plan(shape, hw)
        tern = ternary_timing(shape, hw, r.cycles, plan=plan)
        if tern.as_dict() != ternary_timing(shape, hw, plan=plan).as_dict():
            raise EngineError(f"layer '{name}': stepped cycles {r.cycles} differ from the analytic model's")
        out[name] = LayerSimulation(tern, baseline_layer_timing(shape, hw), "engine")
    return out
