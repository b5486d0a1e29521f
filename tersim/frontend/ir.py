"""The tersim IR: a small, typed, topologically ordered graph of the ops the accelerator runs.

Everything downstream (quantize, engine, timing, report) reads this, never torch graphs.
Tensors are NCHW; shapes below exclude the batch dimension.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# op name -> attribute keys it carries (all ints/tuples of ints, see docs/ARCHITECTURE.md)
OP_ATTRS: dict[str, tuple[str, ...]] = {
    "input": (),
    "conv2d": ("stride", "padding", "dilation", "groups"),
    "linear": (),
    "relu": (),
    "clamp": ("min", "max"),
    "max_pool2d": ("kernel", "stride", "padding", "dilation", "ceil_mode"),
    "avg_pool2d": ("kernel", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    "adaptive_avg_pool2d": ("output_size",),
    "add": (),
    "flatten": (),
    "concat": ("dim",),
}

WEIGHTED_OPS = ("conv2d", "linear")


@dataclass
class Node:
    """One op. `inputs` name producer nodes; conv/linear carry float32 weight (and optional bias).

    conv2d weight: (Cout, Cin // groups, kh, kw); linear weight: (out_features, in_features).
    `shape` is the output shape without batch, filled by the frontend's shape inference.
    """

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    shape: tuple[int, ...] = ()
    # The eval-mode BatchNorm folded into this conv/linear (weight and bias above are folded): float64 arrays
    # 'mean', 'var', 'gamma', 'beta', 'bias' (the conv's own bias before folding) and float 'eps'. Kept for
    # the accuracy corrections (tersim.quantize.correction); None when no BN was folded.
    bn: dict[str, Any] | None = None


@dataclass
class Graph:
    """A lowered model: nodes in topological order, nodes[0] is the single 'input' node."""

    name: str
    nodes: list[Node]
    output: str

    @property
    def input(self) -> Node:
        return self.nodes[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[0].shape

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def consumer_counts(self) -> dict[str, int]:
        """len(consumers(name)) of every node, in one pass (a node reading a tensor twice counts once): what
        the executors count down to free a tensor after its last reader."""
        counts = dict.fromkeys((n.name for n in self.nodes), 0)
        for n in self.nodes:
            for i in set(n.inputs):
                counts[i] += 1
        return counts

    def weighted(self) -> list[Node]:
        return [n for n in self.nodes if n.op in WEIGHTED_OPS]
