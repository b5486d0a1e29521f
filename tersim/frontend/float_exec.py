"""Run a tersim Graph in floating point with torch.nn.functional.

This is the reference for "the IR computes what the PyTorch model computes" (float64 by default)
and the float model that calibration and the FP32 deviation report use (float32).
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tersim.frontend.ir import Graph, Node


def _conv2d(node: Node, xs: list[torch.Tensor], p: dict) -> torch.Tensor:
    a = node.attrs
    return F.conv2d(xs[0], p["weight"], p.get("bias"), a["stride"], a["padding"], a["dilation"], a["groups"])


def _conv2d_channels_last(node: Node, xs: list[torch.Tensor], p: dict) -> torch.Tensor:
    """execute_float's float32 convolution: its input channels_last, oneDNN's native CPU layout. An NCHW input
    is reordered to it and back on every call, which cost a third of ResNet-50's FP32 pass
    (benchmarks/fp32_layout.py). The output is channels_last too, so the next convolutions (and the elementwise
    ops between them) convert nothing. The same float32 arithmetic summed in another order: ResNet-50's logits
    are within float32 rounding of NCHW's (reports/run_phases.txt)."""
    x = xs[0]
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return _conv2d(node, [x], p)


def _linear(node: Node, xs: list[torch.Tensor], p: dict) -> torch.Tensor:
    return F.linear(xs[0], p["weight"], p.get("bias"))


def _relu(node: Node, xs: list[torch.Tensor], p: dict) -> torch.Tensor:
    return F.relu(xs[0])


def _clamp(node: Node, xs: list[torch.Tensor], p: dict) -> torch.Tensor:
    return torch.clamp(xs[0], node.attrs["min"], node.attrs["max"])


def _max_pool2d(node: Node, xs: list[torch.Tensor], p: dict) -> torch.Tensor:
    a = node.attrs
    return F.max_pool2d(xs[0], a["kernel"], a["stride"], a["padding"], a["dilation"], ceil_mode=a["ceil_mode"])


def _avg_pool2d(node: Node, xs: list[torch.Tensor], p: dict) -> torch.Tensor:
    a = node.attrs
    return F.avg_pool2d(xs[0], a["kernel"], a["stride"], a["padding"], ceil_mode=a["ceil_mode"],
                        count_include_pad=a["count_include_pad"], divisor_override=a["divisor_override"])


def _adaptive_avg_pool2d(node: Node, xs: list[torch.Tensor], p: dict) -> torch.Tensor:
    return F.adaptive_avg_pool2d(xs[0], node.attrs["output_size"])


def _add(node: Node, xs: list[torch.Tensor], p: dict) -> torch.Tensor:
    return xs[0] + xs[1]


def _flatten(node: Node, xs: list[torch.Tensor], p: dict) -> torch.Tensor:
    return xs[0].reshape(xs[0].shape[0], -1)


def _concat(node: Node, xs: list[torch.Tensor], p: dict) -> torch.Tensor:
    return torch.cat(xs, dim=node.attrs["dim"])


def _relu_(node: Node, xs: list[torch.Tensor], p: dict) -> torch.Tensor:
    return xs[0].relu_()


def _clamp_(node: Node, xs: list[torch.Tensor], p: dict) -> torch.Tensor:
    return xs[0].clamp_(node.attrs["min"], node.attrs["max"])


def _add_(node: Node, xs: list[torch.Tensor], p: dict) -> torch.Tensor:
    return xs[0].add_(xs[1])


OPS: dict[str, Callable[[Node, list[torch.Tensor], dict], torch.Tensor]] = {
    "conv2d": _conv2d,
    "linear": _linear,
    "relu": _relu,
    "clamp": _clamp,
    "max_pool2d": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "adaptive_avg_pool2d": _adaptive_avg_pool2d,
    "add": _add,
    "flatten": _flatten,
    "concat": _concat,
}
# execute_float's ops in float32 (float64, verify's reference, has no oneDNN path; fine-tuning and export use OPS)
FLOAT32_OPS = {**OPS, "conv2d": _conv2d_channels_last}

# Elementwise ops that may write into their first input when nothing else reads it: the same float
# operation on the same operands (same bits), without a fresh activation-sized buffer (whose page faults
# cost more than the op on large batches).
IN_PLACE = {"relu": _relu_, "clamp": _clamp_, "add": _add_}
# Ops whose output is a tensor this execution allocated (flatten: owned when its input is).
_ALLOCATING = {"conv2d", "linear", "relu", "clamp", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "add",
               "concat"}


def _last_reader_of_owned(node: Node, remaining_uses: dict[str, int], owned: set[str], output: str) -> bool:
    """Is `node` the last reader of its first input, an activation this execution allocated (not the output)?
    A flatten (a view of its input) is then as writable as its input."""
    first = node.inputs[0]
    return first in owned and first != output and remaining_uses[first] == 1


def _reusable_input(node: Node, values: dict[str, torch.Tensor], remaining_uses: dict[str, int],
                    owned: set[str], output: str) -> bool:
    """Can `node` write into its first input: an activation this execution allocated, of the output's shape
    and dtype, that no later node (nor the caller) reads?"""
    if node.op not in IN_PLACE or not node.inputs:
        return False
    first = node.inputs[0]
    if not _last_reader_of_owned(node, remaining_uses, owned, output) or node.inputs.count(first) != 1:
        return False
    if node.op == "add":
        a, b = values[first], values[node.inputs[1]]
        return a.shape == b.shape and a.dtype == b.dtype
    return True


def execute_float(graph: Graph, x: np.ndarray, dtype=np.float64, return_all: bool = False,
                  each: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """Run `graph` on the batch `x` (N, *input_shape) in `dtype`.

    Returns the output array, or with `return_all` a dict node name -> output for every node
    (the 'input' node included), in graph order. `each(name, value)` sees every node's output as it is
    computed (valid during the call: copy it to keep it); without `return_all` a tensor is freed as soon as
    its last consumer has run, and relu/clamp/add write into an input that nothing else reads, so memory holds
    a few activations, not the whole network's, and few fresh buffers are faulted in.
    """
    tdtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
    x = np.asarray(x)
    if tuple(x.shape[1:]) != tuple(graph.input_shape):
        raise ValueError(f"{graph.name}: input batch shape {x.shape} does not match (N, *{graph.input_shape})")
    ops = FLOAT32_OPS if tdtype == torch.float32 else OPS
    values: dict[str, torch.Tensor] = {}
    remaining_uses = graph.consumer_counts()
    owned: set[str] = set()   # activations this call allocated (never the caller's input or a weight)
    with torch.no_grad():
        for node in graph.nodes:
            if node.op == "input":
                values[node.name] = torch.from_numpy(np.ascontiguousarray(x)).to(tdtype)
            else:
                params = {}
                if node.weight is not None:
                    params["weight"] = torch.from_numpy(node.weight).to(tdtype)
                if node.bias is not None:
                    params["bias"] = torch.from_numpy(node.bias).to(tdtype)
                in_place = not return_all and _reusable_input(node, values, remaining_uses, owned, graph.output)
                op = IN_PLACE[node.op] if in_place else ops[node.op]
                values[node.name] = op(node, [values[i] for i in node.inputs], params)
                if node.op in _ALLOCATING or (node.op == "flatten" and _last_reader_of_owned(node, remaining_uses,
                                                                                              owned, graph.output)):
                    owned.add(node.name)
            if each is not None:
                each(node.name, values[node.name].numpy())
            if not return_all:
                for i in set(node.inputs):  # add(x, x) uses x once
                    remaining_uses[i] -= 1
                    if remaining_uses[i] == 0 and i != graph.output:
                        del values[i]
    if return_all:   # in C order, whatever layout a node computed in (_conv2d_channels_last)
        return {name: np.ascontiguousarray(t.numpy()) for name, t in values.items()}
    return np.ascontiguousarray(values[graph.output].numpy())


class FloatOutputs:
    """The float32 graph outputs of input batches, by the batch's content: a batch that calibration already ran
    through the FP32 network gives its output to the FP32 reference without a second pass (the same bytes
    through the same float32 ops give the same output)."""

    def __init__(self) -> None:
        self._by_key: dict[str, np.ndarray] = {}
        self._layouts: set[tuple] = set()   # (dtype, shape) of the batches held: other batches are not hashed

    @staticmethod
    def _key(x: np.ndarray) -> str:
        x = np.ascontiguousarray(x)
        h = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
        h.update(memoryview(x).cast("B") if x.size else b"")
        return h.hexdigest()

    def put(self, x: np.ndarray, output: np.ndarray) -> None:
        self._layouts.add((np.asarray(x).dtype.str, np.shape(x)))
        self._by_key[self._key(x)] = np.array(output, copy=True)

    def get(self, x: np.ndarray) -> np.ndarray | None:
        if (np.asarray(x).dtype.str, np.shape(x)) not in self._layouts:
            return None
        out = self._by_key.get(self._key(x))
        return None if out is None else out.copy()
