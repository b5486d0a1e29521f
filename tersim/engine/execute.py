"""Run a QuantizedGraph node by node on an integer backend.

A backend is a module with the kernel functions of tersim.kernels (conv2d_int, linear_int, pools, add_int,
requantize_int). The Numba kernels are the simulator; tersim.kernels.reference_torch implements the same
arithmetic in torch ops, and `verify` runs both and compares every tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from tersim.quantize.activations import quantize_act
from tersim.quantize.graph import QuantizedGraph, QuantizedLayer


@dataclass
class ExecutionResult:
    outputs: dict[str, np.ndarray]   # integer output of every node (int32), by node name
    overflow_events: dict[str, int]  # accumulator overflow events per weighted node

    def output(self, qgraph: QuantizedGraph) -> np.ndarray:
        return self.outputs[qgraph.graph.output]


def numba_backend() -> ModuleType:
    import tersim.kernels as kernels

    return kernels


def torch_reference_backend() -> ModuleType:
    import tersim.kernels.reference_torch as reference

    return reference


def quantize_input(qgraph: QuantizedGraph, x: np.ndarray) -> np.ndarray:
    f = qgraph.input_format
    return quantize_act(np.asarray(x, dtype=np.float64), f.frac, f.bits, f.signed).astype(np.int32)


def _value_bound(layer: QuantizedLayer, in_bounds: list[int]) -> int:
    """A bound on |value| of the node's integer output, known without looking at it: ops that pass values
    through (a fused-away activation, max pool, flatten) keep their input's bound; every other op clamps its
    output to the layer's range or its format's (the input node: quantize_input clamps to its format)."""
    if layer.is_fused_away or layer.node.op in ("max_pool2d", "flatten"):
        return in_bounds[0]
    return max(abs(layer.out_lo), abs(layer.out_hi), abs(layer.out.lo), abs(layer.out.hi))


def _run_weighted(k: ModuleType, layer: QuantizedLayer, x: np.ndarray, qgraph: QuantizedGraph,
                  x_bound: int) -> tuple[np.ndarray, int]:
    common = dict(group_size=layer.group_size, acc_bits=qgraph.acc_bits, saturate=qgraph.saturate,
                  shift=layer.shift, out_lo=layer.out_lo, out_hi=layer.out_hi)
    if layer.group_layout != "channel" or layer.scales != 1:   # the paper's recipe keeps the plain call
        common.update(group_layout=layer.group_layout, scales=layer.scales)
    node = layer.node
    if node.op == "linear":
        return k.linear_int(x, layer.codes, layer.alpha_q, layer.bias_q, **common)
    a = node.attrs
    return k.conv2d_int(x, layer.codes, layer.alpha_q, layer.bias_q, stride=tuple(a["stride"]),
                        padding=tuple(a["padding"]), dilation=tuple(a["dilation"]), groups=a["groups"],
                        x_max=x_bound, **common)


def _run_node(k: ModuleType, layer: QuantizedLayer, ins: list[np.ndarray], in_layers: list[QuantizedLayer]) -> np.ndarray:
    node, out, a = layer.node, layer.out, layer.node.attrs
    if node.op in ("relu", "clamp"):
        return k.requantize_int(ins[0], shift=0, out_lo=layer.out_lo, out_hi=layer.out_hi)
    if node.op == "max_pool2d":
        return k.max_pool2d_int(ins[0], kernel=tuple(a["kernel"]), stride=tuple(a["stride"]), padding=tuple(a["padding"]),
                                dilation=tuple(a["dilation"]), ceil_mode=bool(a["ceil_mode"]))
    if node.op == "avg_pool2d":
        return k.avg_pool2d_int(ins[0], kernel=tuple(a["kernel"]), stride=tuple(a["stride"]), padding=tuple(a["padding"]),
                                ceil_mode=bool(a["ceil_mode"]), count_include_pad=bool(a["count_include_pad"]),
                                divisor_override=a["divisor_override"], out_lo=out.lo, out_hi=out.hi)
    if node.op == "adaptive_avg_pool2d":
        return k.adaptive_avg_pool2d_int(ins[0], output_size=tuple(a["output_size"]), out_lo=out.lo, out_hi=out.hi)
    if node.op == "flatten":
        return ins[0].reshape(ins[0].shape[0], -1)
    if node.op == "add":
        fa, fb = in_layers[0].out.frac, in_layers[1].out.frac
        return k.add_int(ins[0], fa, ins[1], fb, out_frac=out.frac, out_lo=layer.out_lo, out_hi=layer.out_hi)
    if node.op == "concat":
        parts = [k.requantize_int(x, shift=il.out.frac - out.frac, out_lo=out.lo, out_hi=out.hi)
                 for x, il in zip(ins, in_layers)]
        return np.concatenate(parts, axis=a["dim"])
    raise ValueError(f"node '{node.name}': op '{node.op}' has no integer kernel")


def execute(qgraph: QuantizedGraph, x: np.ndarray, backend: ModuleType | None = None,
            keep_all: bool = True) -> ExecutionResult:
    """Quantize the float input x (N, C, H, W) and run every node; returns integer tensors and overflow counts."""
    k = backend or numba_backend()
    graph = qgraph.graph
    values: dict[str, np.ndarray] = {graph.input.name: quantize_input(qgraph, x)}
    bounds = {graph.input.name: _value_bound(qgraph.layers[graph.input.name], [])}  # spares each conv a scan of x
    overflow: dict[str, int] = {}
    remaining_uses = graph.consumer_counts()
    for node in graph.nodes[1:]:
        layer = qgraph.layers[node.name]
        ins = [values[i] for i in node.inputs]
        if layer.is_fused_away:
            y = ins[0]
        elif node.op in ("conv2d", "linear"):
            y, overflow[node.name] = _run_weighted(k, layer, ins[0], qgraph, bounds[node.inputs[0]])
            overflow[node.name] = int(overflow[node.name])
        else:
            y = _run_node(k, layer, ins, [qgraph.layers[i] for i in node.inputs])
        values[node.name] = np.asarray(y, dtype=np.int32)
        bounds[node.name] = _value_bound(layer, [bounds[i] for i in node.inputs])
        if not keep_all:  # free tensors nobody needs any more
            for i in set(node.inputs):  # add(x, x) uses x once
                remaining_uses[i] -= 1
                if remaining_uses[i] == 0 and i != graph.output:
                    del values[i]
    return ExecutionResult(values, overflow)


def dequantize_output(qgraph: QuantizedGraph, y: np.ndarray) -> np.ndarray:
    return y.astype(np.float64) * 2.0 ** -qgraph.output_format.frac
