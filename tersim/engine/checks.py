"""Every check of the cycle-stepped array against its references, in one place.

`run` (timing="engine") calls `simulate_checked`; `verify` calls `stepped_matches`. The references: the
integer kernels (tersim.kernels, outputs and overflow events), a float64 convolution (the FP32 baseline's
outputs) and the analytic model (tersim.timing.analytic, every cycle count). The simulator
(tersim.engine.cycle_engine) only simulates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tersim.config import Accelerator
from tersim.engine.cycle_engine import EngineResult, as_conv_input, node_geometry, step_baseline, step_layer
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


def check_baseline_output(node, x: np.ndarray, r: EngineResult) -> None:
    """The FP32 baseline's stepped output against a float64 convolution of the same input and weights."""
    import torch

    weight, geometry = node_geometry(node)
    x = as_conv_input(node, x)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(weight.astype(np.float64)),
                                     None if node.bias is None else torch.from_numpy(node.bias.astype(np.float64)),
                                     **geometry).numpy()
    scale = float(np.abs(x).max(initial=0.0)) * float(np.abs(weight).sum(axis=(1, 2, 3)).max(initial=0.0)) + 1.0
    if not np.allclose(r.y, ref, rtol=0, atol=1e-5 * scale):
        raise EngineError(f"layer '{node.name}': the FP32 baseline's stepped output differs from a float64 conv")


def simulate_checked(qgraph: QuantizedGraph, hw: Accelerator, x: np.ndarray,
                     shapes: dict[str, LayerShape]) -> dict[str, LayerSimulation]:
    """Step every weighted layer of one input sample (x[:1]) through the ternary array and the FP32 baseline,
    and check it: each layer's integer output and overflow count must equal tersim.kernels' for that sample,
    the baseline's output a float64 conv's, the stepped cycles the analytic model's for `shapes[name]`.
    Any difference raises EngineError."""
    from tersim.engine.execute import execute

    sample = execute(qgraph, x[:1], keep_all=True)
    out: dict[str, LayerSimulation] = {}
    for name, layer in _stepped_layers(qgraph):
        node, shape = layer.node, shapes[name]
        x_in = sample.outputs[node.inputs[0]]
        r = step_layer(layer, x_in, qgraph, hw)
        if not np.array_equal(r.y, sample.outputs[name]) or r.overflow_events != sample.overflow_events[name]:
            raise EngineError(f"layer '{name}': the cycle-stepped array's output differs from the integer kernel's")
        in_frac = qgraph.layers[node.inputs[0]].out.frac
        x_float = x_in.astype(np.float32) * np.float32(2.0 ** -in_frac)
        b = step_baseline(node, x_float, hw)
        check_baseline_output(node, x_float, b)
        base = baseline_layer_timing(shape, hw, b.cycles)
        if base.as_dict() != baseline_layer_timing(shape, hw).as_dict():
            raise EngineError(f"layer '{name}': stepped FP32 baseline cycles differ from the analytic model's")
        plan = skip_plan(shape, hw)
        tern = ternary_timing(shape, hw, r.cycles, plan=plan)
        if tern.as_dict() != ternary_timing(shape, hw, plan=plan).as_dict():
            raise EngineError(f"layer '{name}': stepped cycles {r.cycles} differ from the analytic model's")
        out[name] = LayerSimulation(tern, base, "engine")
    return out
