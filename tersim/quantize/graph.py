"""Graph -> QuantizedGraph: integer weights, fixed-point alphas and a DFP format for every tensor.

The rules are those of docs/ARCHITECTURE.md ("Numerics contract"); this module only decides, per node,
which format each tensor gets and packs the integer parameters the engine consumes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from tersim.config import Accelerator
from tersim.frontend.float_exec import FloatOutputs, execute_float
from tersim.frontend.ir import Graph, Node
from tersim.quantize.activations import act_frac, act_range
from tersim.quantize.fgq import (WeightNorms, dequantize_variant, fixed_point_alpha, int8_with_stats,
                                 quantize_int8_weights, ternarize_with_stats, weight_stats_variant)
from tersim.quantize.layout import scale_count
from tersim.quantize.schemes import scheme_layer_names, scheme_weights

INPUT_BITS = 8  # the network input and output are always 8-bit (policy, see README)
FUSABLE_INTO = ("conv2d", "linear", "add")
SCALE_PRESERVING = ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "flatten")


@dataclass(frozen=True)
class ActFormat:
    """Dynamic fixed point: real = code * 2**-frac, code in [lo, hi]."""

    bits: int
    signed: bool
    frac: int

    @property
    def lo(self) -> int:
        return act_range(self.bits, self.signed)[0]

    @property
    def hi(self) -> int:
        return act_range(self.bits, self.signed)[1]


@dataclass
class QuantizedLayer:
    """One IR node with everything the integer datapath needs. Weighted fields are None elsewhere.

    `out_lo`/`out_hi` are the integer bounds the output is clamped to: the format's range, narrowed by a
    relu/clamp fused into this node.
    """

    node: Node
    out: ActFormat
    out_lo: int = 0
    out_hi: int = 0
    fused_activation: str | None = None  # name of the relu/clamp node merged into this one
    is_fused_away: bool = False          # a relu/clamp merged into its producer: identity at run time
    weight_kind: str | None = None     # 'ternary' | 'int8'
    group_size: int | None = None      # effective N (min(N, Cin per group) for ternary, Cin for int8)
    codes: np.ndarray | None = None    # int8, weight shape
    alpha_q: np.ndarray | None = None  # int32 fixed point (the float alphas stay in quantize_weights' entries)
    alpha_frac: int | None = None
    bias_q: np.ndarray | None = None   # int64 (Cout,)
    shift: int | None = None           # in_frac + alpha_frac - out_frac
    group_layout: str = "channel"      # tersim.quantize.layout (int8 layers: always channel, one scale)
    scales: int = 1                    # multiplies per group (alpha_q gets a trailing axis of 2 with two)
    stats: dict[str, float] = field(default_factory=dict)
    scheme: str | None = None          # tersim.quantize.schemes: fgq_ternary, or the k-bit scheme (int8 layers: uniform)
    weight_bits: int | None = None     # stored bits per weight code (ternary: 2)
    segments: int = 1                  # k-bit schemes: row sets with their own scale/codebook (tensor 1, channel Cout)


@dataclass
class QuantizedGraph:
    graph: Graph
    layers: dict[str, QuantizedLayer]  # every node incl. 'input', in graph order
    group_size: int
    act_bits: int
    scale_bits: int
    acc_bits: int
    saturate: bool
    method: str
    group_layout: str = "channel"
    scales: str = "one"
    correction: str = "none"
    calibration_split: str | None = None   # where bn_reestimate's statistics came from (None: not used)
    act_range_source: str = "calibration"   # where activation ranges came from (data-free: BN statistics)

    @property
    def input_format(self) -> ActFormat:
        return self.layers[self.graph.input.name].out

    @property
    def output_format(self) -> ActFormat:
        return self.layers[self.graph.output].out


def calibrate_max_abs(graph: Graph, batches: list[np.ndarray], outputs: FloatOutputs | None = None) -> dict[str, float]:
    """Largest |value| of every node's float output over the calibration batches; `outputs` keeps each batch's
    network output (for an FP32 reference over the same inputs)."""
    max_abs: dict[str, float] = {n.name: 0.0 for n in graph.nodes}

    def track(name: str, value: np.ndarray) -> None:  # max|v| without an |v| temporary
        if value.size:
            max_abs[name] = max(max_abs[name], abs(float(value.min())), abs(float(value.max())))

    for batch in batches:
        out = execute_float(graph, batch, dtype=np.float32, each=track)  # tensors freed as soon as they are used
        if outputs is not None:
            outputs.put(batch, out)
    return max_abs


ACTIVATIONS = ("relu", "clamp")


def _activation_fusions(graph: Graph) -> dict[str, str]:
    """producer name -> relu/clamp name, for activations whose producer feeds nothing else."""
    fused = {}
    for node in graph.nodes:
        if node.op not in ACTIVATIONS:
            continue
        producer = graph.node(node.inputs[0])
        if producer.op in FUSABLE_INTO and len(graph.consumers(producer.name)) == 1 and producer.name != graph.output:
            fused[producer.name] = node.name
    return fused


def _int8_layer_names(graph: Graph, first_last: str) -> set[str]:
    weighted = graph.weighted()
    if first_last != "int8" or not weighted:
        return set()
    return {weighted[0].name, weighted[-1].name}


def _quantize_weights(node: Node, group_size: int, method: str, scale_bits: int, int8: bool,
                      group_layout: str = "channel", scales: str = "one", weight: np.ndarray | None = None,
                      norms: WeightNorms | None = None) -> dict:
    """Codes, float and fixed-point alphas of one layer; `weight` (default node.weight) is what gets quantized
    (a correction may have equalized it), stats always compare with node.weight's own quantization. `norms`:
    the weights' norms (fgq.WeightNorms), shared by the N of a sweep."""
    weight = node.weight if weight is None else weight
    cin_per_group = weight.shape[1]
    if int8:
        kind, n_eff, group_layout, scales = "int8", cin_per_group, "channel", "one"
        if isinstance(weight, np.ndarray) and weight.size:
            codes, alpha, stats = int8_with_stats(weight, norms)
        else:
            codes, alpha = quantize_int8_weights(weight)
            stats = weight_stats_variant(weight, codes, alpha, n_eff, group_layout, scales)
    else:
        kind = "ternary"
        k_per_filter = cin_per_group * (int(np.prod(weight.shape[2:])) if group_layout == "kernel" else 1)
        n_eff = min(group_size, k_per_filter)
        codes, alpha, stats = ternarize_with_stats(weight, n_eff, method, group_layout, scales, norms)
    alpha_q, alpha_frac = fixed_point_alpha(alpha, scale_bits)
    n_scales = scale_count(scales)
    if node.op == "linear":
        alpha_q = alpha_q.reshape(alpha_q.shape[0], -1, *((2,) if n_scales == 2 else ()))  # (out, G[, 2])
    return dict(weight_kind=kind, group_size=n_eff, codes=codes, alpha=alpha, alpha_q=alpha_q,
                alpha_frac=alpha_frac, group_layout=group_layout if node.op == "conv2d" else "channel",
                scales=n_scales, stats={k: float(v) for k, v in stats.items()})


CALIBRATION_BATCH = 32   # samples per calibration batch (run, sweep and finetune calibrate alike)


def calibration_batches(x: np.ndarray, hw: Accelerator) -> list[np.ndarray]:
    """The first `hw.quantization.calibration_batches` batches of CALIBRATION_BATCH samples of `x`: the data
    activation formats are calibrated on."""
    count = hw.quantization.calibration_batches
    return [x[i:i + CALIBRATION_BATCH] for i in range(0, min(len(x), count * CALIBRATION_BATCH), CALIBRATION_BATCH)]


def quantize_weights(graph: Graph, hw: Accelerator, calib: np.ndarray | None = None, *,
                     norms: WeightNorms | None = None) -> dict[str, dict]:
    """Integer weights and fixed-point alphas of every conv/linear node, by node name.

    They depend on N, the method, first_last, scale_bits and hw.quantization (group_layout, scales,
    correction), all read from `hw`, but not on act_bits, so a sweep computes them once per N and hands them
    to `quantize_graph(weights=...)` for every act_bits. A correction (tersim.quantize.correction) may add a
    corrected float 'bias' to a layer's entry; `calib` holds the unlabelled inputs bn_reestimate needs.
    `norms` (fgq.WeightNorms, kept by a sweep for its N): the graph's weight norms the stats compare with,
    computed once (equalized weights, new arrays per call, are not kept in it).
    """
    from tersim.quantize.correction import apply_correction, equalized_weights

    q = hw.quantization
    int8_layers = _int8_layer_names(graph, q.first_last)
    scheme_layers = scheme_layer_names(graph, hw, int8_layers)   # empty for fgq_ternary
    equalized = equalized_weights(graph) if q.correction == "equalize_bias_correction" else {}
    weighted = graph.weighted()
    weights = {}
    for node in weighted:
        weight = equalized.get(node.name, (None, None))[0]
        if node.name in scheme_layers:
            weights[node.name] = scheme_weights(node, node.weight if weight is None else weight, hw,
                                                last=node is weighted[-1])
            continue
        w = _quantize_weights(node, hw.group_scaling.group_size, q.method, hw.group_scaling.scale_bits,
                              node.name in int8_layers, q.group_layout, q.scales, weight,
                              norms if weight is None else None)
        # which scheme the codes follow: FGQ ternary (2-bit codes) or the int8 first/last layers (8-bit uniform)
        ternary = w["weight_kind"] == "ternary"
        weights[node.name] = {**w, "scheme": "fgq_ternary" if ternary else "uniform", "weight_bits": 2 if ternary else 8}
    return apply_correction(graph, weights, q.correction, equalized, calib, hw.group_scaling.scale_bits)


def quantize_graph(
    graph: Graph,
    calibration: list[np.ndarray],
    hw: Accelerator,
    weights: dict[str, dict] | None = None,
    *,
    act_bits: int | None = None,
    calib: np.ndarray | None = None,
    calibration_split: str | None = None,
    float_outputs: FloatOutputs | None = None,
    max_abs: dict[str, float] | None = None,
    act_range_source: str = "calibration",
) -> QuantizedGraph:
    """Ternarize every weighted layer with FGQ and give every tensor a DFP format.

    Everything comes from the hardware config (group_scaling.group_size, pe.act_bits, quantization.method,
    quantization.first_last, group_layout, scales, correction, ...): fold run options into it first
    (`RunOptions.apply`). `weights`, from `quantize_weights` with the same graph and quantization settings,
    skips re-ternarizing. `act_bits` is only for fine-tuning stages that calibrate formats at widths the
    hardware does not have (default: hw.pe.act_bits). `calib`: the unlabelled inputs bn_reestimate needs.
    `max_abs` (every node's max |value|, e.g. tersim.quantize.data_free.bn_max_abs) replaces calibration;
    `act_range_source` says where it came from (reported).
    With a correction the activation formats are calibrated on the corrected network (dequantized weights,
    corrected biases), which is what the integer datapath approximates; without one on the FP32 network, whose
    outputs on the calibration batches then go to `float_outputs` (the FP32 reference reuses them).
    """
    group_size, act_bits = hw.group_scaling.group_size, act_bits or hw.pe.act_bits
    method = hw.quantization.method
    scale_bits = hw.group_scaling.scale_bits
    if weights is None:
        weights = quantize_weights(graph, hw, calib)

    corrected = hw.quantization.correction != "none"
    if max_abs is None:
        max_abs = calibrate_max_abs(corrected_graph(graph, weights) if corrected else graph, calibration,
                                    None if corrected else float_outputs)
    fusions = _activation_fusions(graph)
    fused_activations = set(fusions.values())
    layers: dict[str, QuantizedLayer] = {}

    def fmt_for(name: str, signed: bool, bits: int) -> ActFormat:
        return ActFormat(bits, signed, act_frac(max_abs[name], bits, signed))

    for node in graph.nodes:
        bits = INPUT_BITS if node.name in (graph.input.name, graph.output) else act_bits
        ins = [layers[i].out for i in node.inputs]
        activation = graph.node(fusions[node.name]) if node.name in fusions else None
        if node.op == "input":
            out = fmt_for(node.name, True, bits)
        elif node.name in fused_activations:
            layers[node.name] = QuantizedLayer(node, ins[0], layers[node.inputs[0]].out_lo,
                                               layers[node.inputs[0]].out_hi, is_fused_away=True)
            continue
        elif node.op in ACTIVATIONS:
            out = ActFormat(ins[0].bits, ins[0].signed and not _non_negative(node), ins[0].frac)
            activation = node
        elif node.op in SCALE_PRESERVING:
            out = ins[0]
        elif node.op == "concat":
            out = ActFormat(bits, any(f.signed for f in ins), min(f.frac for f in ins))
        elif node.op in FUSABLE_INTO:
            out_node = activation or node
            out = fmt_for(out_node.name, not (activation and _non_negative(activation)), bits)
        else:  # the frontend only emits the ops above
            raise ValueError(f"node '{node.name}': op '{node.op}' has no quantization rule")
        lo, hi = _clamp_bounds(out, activation)
        layer = QuantizedLayer(node, out, lo, hi, fused_activation=activation.name if activation and activation is not node else None)
        if node.op in ("conv2d", "linear"):
            q = weights[node.name]
            in_frac = ins[0].frac
            bias = q.get("bias", node.bias)
            bias = bias if bias is not None else np.zeros(node.weight.shape[0])
            layer.bias_q = np.rint(bias.astype(np.float64) * 2.0 ** (in_frac + q["alpha_frac"])).astype(np.int64)
            layer.shift = in_frac + q["alpha_frac"] - out.frac
            for key, value in q.items():
                if key not in ("bias", "alpha"):  # float64 alphas: the datapath and reports use alpha_q
                    setattr(layer, key, value)
            freeze_weights(layer)
        layers[node.name] = layer
    return QuantizedGraph(
        graph=graph, layers=layers, group_size=group_size, act_bits=act_bits, scale_bits=scale_bits,
        acc_bits=hw.accumulator.bits, saturate=hw.accumulator.overflow == "saturate", method=method,
        group_layout=hw.quantization.group_layout, scales=hw.quantization.scales,
        correction=hw.quantization.correction,
        calibration_split=calibration_split if hw.quantization.correction == "bn_reestimate" else None,
        act_range_source=act_range_source,
    )


def freeze_weights(layer: QuantizedLayer) -> None:
    """Make the layer's integer weights read-only: the conv kernels then key their packed weights by the
    arrays' identity instead of re-hashing them on every call (tersim.kernels.conv._content_key), and an
    in-place edit raises instead of running on a stale pack. Edit a copy (`layer.codes = new`) instead."""
    for name in ("codes", "alpha_q", "bias_q"):
        value = getattr(layer, name)
        while isinstance(value, np.ndarray):  # and the arrays it views: writes through them would change it too
            value.flags.writeable = False
            value = value.base


def corrected_graph(graph: Graph, weights: dict[str, dict]) -> Graph:
    """The float network the integer datapath approximates: every weighted node's weight dequantized from its
    codes and alphas, its bias the corrected one when a correction set it."""
    nodes = []
    for node in graph.nodes:
        q = weights.get(node.name)
        if q is not None:
            w = dequantize_variant(q["codes"], q["alpha"], q["group_size"], q["group_layout"],
                                   "two" if q["scales"] == 2 else "one")
            node = replace(node, weight=np.asarray(w, np.float32).reshape(node.weight.shape),
                           bias=q.get("bias", node.bias))
        nodes.append(node)
    return Graph(graph.name, nodes, graph.output)


def _non_negative(activation: Node) -> bool:
    if activation.op == "relu":
        return True
    low = activation.attrs.get("min")
    return low is not None and low >= 0


def _clamp_bounds(fmt: ActFormat, activation: Node | None) -> tuple[int, int]:
    """The format's integer range narrowed by a relu/clamp: bounds become round-inward integers."""
    lo, hi = fmt.lo, fmt.hi
    if activation is None:
        return lo, hi
    if activation.op == "relu":
        return max(lo, 0), hi
    scale = 2.0 ** fmt.frac
    if activation.attrs.get("min") is not None:
        lo = max(lo, math.ceil(activation.attrs["min"] * scale))
    if activation.attrs.get("max") is not None:
        hi = min(hi, math.floor(activation.attrs["max"] * scale))
    return lo, max(lo, hi)


def num_groups(cin_per_group: int, group_size: int) -> int:
    return math.ceil(cin_per_group / group_size) if cin_per_group else 0
