"""GraphNet: a tersim IR Graph as a trainable nn.Module, with optional fake quantization per layer.

Why train the IR graph and not the user's module: its conv/linear weights are the BN-folded float32
tensors that `tersim run` ternarizes. Training them directly ("shadow weights") and exporting them as
they are means `run` sees exactly the tensors training saw, with no re-folding in between.

Where to quantize, and in which format, is never decided here: `calibrate()` calls
`tersim.quantize.graph.quantize_graph` on the current weights (the same calibration and policy `run`
uses: first/last layers int8, relu fusion, signedness, 8-bit network input/output) and reads the
formats back. Every forward pass then mirrors the integer datapath:

* network input, conv/linear outputs (after a fused relu/clamp), add outputs (likewise), average
  pools and concat are requantized -> `activations.fake_quant_act` (clipped STE), then clamped to
  the layer's integer bounds when a fused relu/clamp narrows them (out_lo, out_hi);
* ternary layers: FGQ `fgq.ternarize` (groups and alphas recomputed from the shadow weights at
  every forward: the FGQ rule, nothing extra to store); int8 layers: `fgq.quantize_int8_weights`;
  alphas rounded to the datapath's fixed point (`fgq.fixed_point_alpha`, hw `scale_bits`), gradient
  straight through (identity). With `scale_bits=None` this is exactly `fgq.ste_ternarize` /
  `fgq.ste_int8_weights`; the rounding makes the fake-quant outputs match the integer engine far
  more often (digits, N=64: 93% vs 75% of output codes identical, top-1 agreement 99.8% vs 99.4%);
* max pool, flatten and unfused relu/clamp keep values on the grid: no quantizer (an unfused
  relu/clamp clamps to its integer bounds).

A `QuantPlan` says which of those quantizers are on for one forward pass; the fine-tuning methods
(`methods.py`) differ only in the plans they hand out.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from typing import Mapping, Union

import numpy as np
import torch
from torch import nn

from tersim.config import Accelerator
from tersim.frontend.float_exec import OPS
from tersim.frontend.ir import Graph
from tersim.quantize import fgq
from tersim.quantize.activations import fake_quant_act
from tersim.quantize.graph import ACTIVATIONS, ActFormat, QuantizedGraph, QuantizedLayer, quantize_graph

# How one weighted layer's weights are quantized in a forward pass:
#   None        float (shadow weights as they are)
#   "datapath"  what `run` does: FGQ ternary, or per-channel int8 for first/last layers
#   int k       k-bit symmetric quantizer on the same FGQ groups (progressive bit-width stages);
#               int8 (first/last) layers stay int8 whatever k is.
WeightMode = Union[None, str, int]
REQUANTIZED_OPS = ("input", "conv2d", "linear", "add", "avg_pool2d", "adaptive_avg_pool2d", "concat")


@dataclass(frozen=True)
class QuantPlan:
    """Which quantizers one forward pass uses. Missing weight entries and absent act points are float.

    `act_bits` picks the calibrated formats (see GraphNet.calibrate) the act quantizers use.
    """

    weights: Mapping[str, WeightMode] = field(default_factory=dict)
    acts: frozenset[str] = frozenset()
    act_bits: int = 8

    def quantized_layers(self) -> set[str]:
        return {name for name, mode in self.weights.items() if mode is not None}


FLOAT_PLAN = QuantPlan()


def ste_datapath_weight(weight: torch.Tensor, kind: str, group_size: int, method: str = "exact",
                        scale_bits: int | None = None) -> torch.Tensor:
    """The weight `run` puts on the accelerator, dequantized; straight-through (identity) gradient.

    kind 'ternary': FGQ codes * alpha_g; 'int8': per-channel int8 codes * scale. With `scale_bits`
    the alphas are first rounded to the layer's fixed point as quantize_graph does.
    """
    with torch.no_grad():
        w = weight.detach()
        if kind == "int8":
            codes, alpha = fgq.quantize_int8_weights(w)
            n = w.shape[1]
        else:
            codes, alpha = fgq.ternarize(w, group_size, method)
            n = group_size
        if scale_bits is not None:
            alpha_q, frac = fgq.fixed_point_alpha(alpha, scale_bits)
            alpha = torch.from_numpy(np.ldexp(alpha_q.astype(np.float64), -frac))
        wq = fgq.dequantize(codes, alpha, n).to(weight.dtype)
    return fgq.straight_through(weight, wq)


def ste_group_kbit(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """k-bit symmetric weights on the FGQ groups, straight-through gradient (progressive stages only).

    Each group gets scale max|w_g| / (2**(bits-1) - 1) and codes rint(w / scale). Not a datapath
    format (the accelerator runs ternary or int8): it exists for the 8 -> 4 -> ternary schedule of
    progressive quantization, and uses fgq's own group layout so "group" means the same thing.
    """
    qmax = 2 ** (bits - 1) - 1
    with torch.no_grad():
        w4 = weight.detach()[:, :, None, None] if weight.ndim == 2 else weight.detach()
        cin = w4.shape[1]
        groups = fgq.to_groups(w4, min(group_size, cin))
        scale = groups.abs().amax(-1, keepdim=True) / qmax
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        wq = fgq.from_groups(torch.round(groups / safe).clamp(-qmax, qmax) * scale, cin).reshape(weight.shape)
    return weight + (wq - weight).detach()


def _clamp_codes(v: torch.Tensor, layer: QuantizedLayer) -> torch.Tensor:
    """Clamp to the layer's integer bounds (out_lo, out_hi), when a relu/clamp narrows the format's range."""
    fmt = layer.out
    if (layer.out_lo, layer.out_hi) == (fmt.lo, fmt.hi):
        return v
    return torch.clamp(v, layer.out_lo * 2.0 ** -fmt.frac, layer.out_hi * 2.0 ** -fmt.frac)


def _param_key(name: str) -> str:
    """nn.Module attribute names cannot hold dots: keep IR node names readable but legal."""
    return re.sub(r"\W", "_", name)


class GraphNet(nn.Module):
    """Runs `graph` with torch ops; conv/linear weights and biases are trainable float32 Parameters.

    forward(x, plan, features) -> logits, or (logits, {name: tensor}) when `features` names nodes.
    """

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        for node in graph.weighted():
            key = _param_key(node.name)
            self.weights[key] = nn.Parameter(torch.from_numpy(node.weight.astype(np.float32).copy()))
            if node.bias is not None:
                self.biases[key] = nn.Parameter(torch.from_numpy(node.bias.astype(np.float32).copy()))
        self.qgraphs: dict[int, QuantizedGraph] = {}  # act_bits -> last calibration (formats + policy)
        self.group_size = 1
        self.fgq_method = "exact"
        self.scale_bits: int | None = None  # alpha fixed point of the datapath (None: float alphas)

    # ------------------------------------------------------------------ structure and calibration

    def weighted_names(self) -> list[str]:
        return [n.name for n in self.graph.weighted()]

    def act_points(self) -> list[str]:
        """Nodes whose output the integer datapath requantizes (the activation quantizers)."""
        return [n.name for n in self.graph.nodes if n.op in REQUANTIZED_OPS]

    def weight(self, name: str) -> nn.Parameter:
        return self.weights[_param_key(name)]

    def bias(self, name: str) -> nn.Parameter | None:
        key = _param_key(name)
        return self.biases[key] if key in self.biases else None

    def to_graph(self) -> Graph:
        """The IR graph with the current shadow weights (float32 numpy copies): what `run` would see."""
        nodes = []
        for node in self.graph.nodes:
            if node.op in ("conv2d", "linear"):
                b = self.bias(node.name)
                node = replace(node, weight=self.weight(node.name).detach().cpu().numpy().copy(),
                               bias=None if b is None else b.detach().cpu().numpy().copy())
            nodes.append(node)
        return Graph(self.graph.name, nodes, self.graph.output)

    @torch.no_grad()
    def calibrate(self, calibration: list[np.ndarray], hw: Accelerator, act_bits: list[int] | tuple[int, ...]) -> None:
        """Recompute every activation format with `run`'s own calibration on the current weights, for each
        width in `act_bits` (a progressive schedule's stages may use widths the hardware has not)."""
        self.group_size, self.fgq_method = hw.group_scaling.group_size, hw.quantization.method
        self.scale_bits = hw.group_scaling.scale_bits
        graph = self.to_graph()
        for bits in sorted(set(act_bits)):
            self.qgraphs[bits] = quantize_graph(graph, calibration, hw, act_bits=bits)

    def formats(self, act_bits: int) -> dict[str, ActFormat]:
        return {name: layer.out for name, layer in self._qgraph(act_bits).layers.items()}

    def weight_kind(self, name: str) -> str:
        """'ternary' or 'int8', as quantize_graph decided (policy from the hardware config)."""
        return next(iter(self.qgraphs.values())).layers[name].weight_kind

    def _qgraph(self, act_bits: int) -> QuantizedGraph:
        if act_bits not in self.qgraphs:
            raise RuntimeError(f"GraphNet.calibrate() was not run for {act_bits}-bit activations")
        return self.qgraphs[act_bits]

    def full_plan(self, act_bits: int) -> QuantPlan:
        """Everything quantized as the integer datapath does it."""
        return QuantPlan({n: "datapath" for n in self.weighted_names()}, frozenset(self.act_points()), act_bits)

    # ------------------------------------------------------------------ forward

    def quantized_weight(self, name: str, mode: WeightMode) -> torch.Tensor:
        w = self.weight(name)
        if mode is None:
            return w
        kind = self.weight_kind(name)
        if mode == "datapath" or kind == "int8":
            return ste_datapath_weight(w, kind, self.group_size, self.fgq_method, self.scale_bits)
        return ste_group_kbit(w, int(mode), self.group_size)

    def forward(self, x: torch.Tensor, plan: QuantPlan = FLOAT_PLAN,
                features: tuple[str, ...] = ()) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        quantizing = bool(plan.acts) or bool(plan.quantized_layers())
        q = self._qgraph(plan.act_bits) if quantizing else None
        values: dict[str, torch.Tensor] = {}
        for node in self.graph.nodes:
            layer = q.layers[node.name] if q is not None else None
            ins = [values[i] for i in node.inputs]
            if node.op == "input":
                v = x
            elif layer is not None and layer.is_fused_away:
                v = ins[0]  # relu already applied by its producer
            elif node.op in ("conv2d", "linear"):
                params = {"weight": self.quantized_weight(node.name, plan.weights.get(node.name)),
                          "bias": self.bias(node.name)}
                v = OPS[node.op](node, ins, params)
            else:
                v = OPS[node.op](node, ins, {})
            if layer is not None and layer.fused_activation:  # relu/clamp merged into this node
                act = self.graph.node(layer.fused_activation)
                v = OPS[act.op](act, [v], {})
            if node.name in plan.acts:
                fmt = layer.out
                v = _clamp_codes(fake_quant_act(v, fmt.frac, fmt.bits, fmt.signed), layer)
            elif node.op in ACTIVATIONS and plan.acts and layer is not None and not layer.is_fused_away:
                v = _clamp_codes(v, layer)  # an unfused relu/clamp clamps integer codes
            values[node.name] = v
        out = values[self.graph.output]
        if features:
            return out, {name: values[name] for name in features}
        return out


class FloatExport(nn.Module):
    """The plain float net `torch.export` writes: the graph, shadow weights, no quantizers, no BN."""

    def __init__(self, net: GraphNet) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).requires_grad_(False)
        self.net.qgraphs = {}  # float only: no calibration state in the export

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
