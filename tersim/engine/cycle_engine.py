"""Run one conv/linear layer through the cycle-stepped PE array (tersim.kernels.systolic) and count cycles.

A layer is `groups` GEMMs (K = kh*kw*Cin/groups, N filters, P output pixels; docs/TIMING.md section 1),
stepped one after the other on hw.array in its dataflow:

    ws: weights (N, K) stationary, im2col activations (P, K) streamed    out (P, N)
    is: activations (P, K) stationary, weights (N, K) streamed          out (N, P)
    os: activations on rows, weights on columns, K in time              out (P, N)

This module validates, lays the operands out (im2col in the contract's (ky, kx, c) order, one alpha
column per group) and turns the kernels' counters into `ArrayCycles`, so that
tersim.timing.analytic builds the report row (bytes, memory stalls, energy) exactly as for its own
closed forms. int8-weight layers run on the same array: a PE multiplies (one MAC per cycle) instead of
adding, and their scale is a group per kernel position. `zero_weights: skip` steps the weight
compressor's schedule (tersim.timing.analytic.skip_plan): each column fold on its own kept K indices.
The FP32 baseline steps the same kernels on float32 data (`baseline_gemm`). The schedule itself (group
ends, fold geometry, skip plans, ArrayCycles) is tersim.timing.schedule's, shared with the analytic model;
checking a stepped network against the integer kernels and the closed forms is tersim.engine.checks'.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from tersim.config import Accelerator
from tersim.errors import EngineError
from tersim.kernels.common import check_conv, check_linear, linear_alpha_as_conv, max_abs
from tersim.kernels.elementwise import requantize_int
from tersim.kernels.grouped import im2col
from tersim.kernels.systolic import (N_COUNTERS, PACK_HALF, QUEUE_NONE, QUEUE_PER_COLUMN, QUEUE_SHARED, GemmCounters,
                                     narrow_scales, pack_two_scale_codes, run_os_gemm, run_stream_gemm)
from tersim.quantize.graph import QuantizedGraph, QuantizedLayer
from tersim.quantize.layout import k_order
from tersim.timing.analytic import baseline_traffic, skip_plan, ternary_traffic
from tersim.timing.schedule import ArrayCycles, Dataflow, OsFormula, SkipPlan, group_end_mask, group_index
from tersim.timing.shapes import LayerShape

FLOAT_LIMIT = 2**62  # "accumulator range" of the float baseline: never reached, no clamping
# tersim.timing memoises schedules in plain dicts (evicted by clearing): threads that step layers at once
# (tersim.engine.checks) consult it one at a time. Its calls are short; the stepping runs outside the lock.
SCHEDULE_LOCK = threading.RLock()


@dataclass(frozen=True)
class EngineResult:
    """Outputs and counters of one stepped layer."""

    y: np.ndarray            # int32 outputs, as tersim.kernels.conv2d_int / linear_int (float32 for the baseline)
    overflow_events: int
    cycles: ArrayCycles      # compute (SCALE-Sim convention), group-scale stalls, tile reloads, group multiplies
    counters: GemmCounters   # everything the kernels counted
    stepped_cycles: int      # every cycle the kernels stepped
    pe_cycles: int           # rows * cols * stepped_cycles: the throughput measure
    shape: LayerShape        # the layer as the analytic model sees it


def _queue(hw: Accelerator) -> tuple[int, int]:
    """(FIFO kind, multipliers per FIFO) of the group-scaling units; per_pe never stalls."""
    gs = hw.group_scaling
    if gs.placement == "per_column":
        return QUEUE_PER_COLUMN, gs.multipliers // hw.array.cols
    if gs.placement == "shared":
        return QUEUE_SHARED, gs.multipliers
    return QUEUE_NONE, 1


def _run_gemms(xcol: np.ndarray, wcol: np.ndarray, ends: np.ndarray, gidx: np.ndarray, alpha: np.ndarray,
               bias: np.ndarray, rows: int, cols: int, dataflow: str, os_formula: OsFormula, t_tile: int,
               lo: int, hi: int, wrap: bool, queue: tuple[int, int], acc_dtype, psum_dtype,
               plan: SkipPlan | None = None, shape: LayerShape | None = None,
               alpha_neg: np.ndarray | None = None) -> tuple[np.ndarray, GemmCounters]:
    """Every conv group's GEMM on the array; returns accumulators (groups, P, N) and the summed counters.
    alpha_neg: alpha- of two scales per group (weights packed by pack_two_scale_codes), or None.
    With a skip `plan` each column fold runs on its own kept K indices (dropped ones are zero for every
    filter of the fold, so the sums are the same). `alpha_neg`: alpha- (two scales; wcol packed by
    pack_two_scale_codes), else None. The streamed operand goes in as a transposed view (no copy): the
    kernel reads it only to fill each fold's port table."""
    groups, P, K = xcol.shape
    N = wcol.shape[0] // groups
    alpha, alpha_neg = narrow_scales(alpha), narrow_scales(alpha_neg)
    acc = np.zeros((groups, P, N), acc_dtype)
    stats = np.zeros(N_COUNTERS, np.int64)
    proto = np.zeros(1, psum_dtype)
    df = Dataflow.of(dataflow)
    if plan is not None:                      # ws / os only (is cannot skip)
        for g, f, kept in plan.folds():
            n0, n1 = f * cols, min((f + 1) * cols, N)
            w = np.ascontiguousarray(wcol[g * N + n0:g * N + n1][:, kept])
            a, b, out = alpha[g * N + n0:g * N + n1], bias[g * N + n0:g * N + n1], acc[g][:, n0:n1]
            an = None if alpha_neg is None else alpha_neg[g * N + n0:g * N + n1]
            fold_ends = group_end_mask(shape, kept)
            x = xcol[g][:, kept]
            if df is Dataflow.OS:
                stats += run_os_gemm(np.ascontiguousarray(x), w, fold_ends, gidx[kept], a, b, rows, cols,
                                     os_formula == "paper", lo, hi, wrap, *queue, out, proto, an)
            else:
                stats += run_stream_gemm(w, x.T, fold_ends, gidx[kept], a, b, False, rows, cols,
                                         t_tile, lo, hi, wrap, *queue, out, proto, an)
        return acc, GemmCounters.of(stats)
    for g in range(groups):
        w, a, b = wcol[g * N:(g + 1) * N], alpha[g * N:(g + 1) * N], bias[g * N:(g + 1) * N]
        an = None if alpha_neg is None else alpha_neg[g * N:(g + 1) * N]
        if df is Dataflow.OS:
            stats += run_os_gemm(xcol[g], w, ends, gidx, a, b, rows, cols, os_formula == "paper", lo, hi, wrap,
                                 *queue, acc[g], proto, an)
        elif df is Dataflow.WS:
            stats += run_stream_gemm(w, xcol[g].T, ends, gidx, a, b, False, rows, cols, t_tile,
                                     lo, hi, wrap, *queue, acc[g], proto, an)
        else:
            out = np.zeros((N, P), acc_dtype)
            stats += run_stream_gemm(xcol[g], w.T, ends, gidx, a, b, True, rows, cols, t_tile,
                                     lo, hi, wrap, *queue, out, proto, an)
            acc[g] = out.T
    return acc, GemmCounters.of(stats)


def _cycles(c: GemmCounters) -> ArrayCycles:
    """Counters -> ArrayCycles. SCALE-Sim reports the index of the last cycle, so compute is the stepped
    count minus one; tile reloads are the load/fill/drain cycles of every T tile after a fold's first."""
    return ArrayCycles(compute=c.stepped - c.reload_overhead - 1, group_stall=c.group_stall,
                       tile_reload=c.reload_overhead, group_mults=c.group_sums)


def _shape(spec, weight_kind: str, name: str, nonzero: np.ndarray | None = None) -> LayerShape:
    return LayerShape(name=name, batch=spec.B, in_channels=spec.Cin, in_h=spec.H, in_w=spec.W,
                      out_channels=spec.Cout, out_h=spec.OH, out_w=spec.OW, kernel_h=spec.kh, kernel_w=spec.kw,
                      stride_h=spec.stride[0], stride_w=spec.stride[1], groups=spec.groups,
                      weight_kind=weight_kind, group_size=spec.group_size, nonzero=nonzero,
                      group_layout=spec.group_layout, scales=spec.scales)


def conv2d_engine(x: np.ndarray, codes: np.ndarray, alpha_q: np.ndarray, bias_q: np.ndarray, *, group_size: int,
                  stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int,
                  acc_bits: int, saturate: bool, shift: int, out_lo: int, out_hi: int, hw: Accelerator,
                  weight_kind: str = "ternary", os_formula: OsFormula = "scalesim", name: str = "layer",
                  group_layout: str = "channel", scales: str | int = 1) -> EngineResult:
    """tersim.kernels.conv2d_int's arguments, stepped on hw.array: same outputs and overflow events,
    plus the cycles. The output buffer's T tiling comes from the analytic memory model. K streams through
    the array in the group layout's order; with two scales a PE's partial-sum register carries the +1 and the
    -1 lanes' sums packed (tersim.kernels.systolic.pack_two_scale_codes) and a group end sends two products."""
    try:
        spec, x, codes, alpha_q, bias_q = check_conv(x, codes, alpha_q, bias_q, group_size=group_size, stride=stride,
                                                     padding=padding, dilation=dilation, groups=groups,
                                                     acc_bits=acc_bits, out_lo=out_lo, out_hi=out_hi,
                                                     group_layout=group_layout, scales=scales)
    except (TypeError, ValueError) as exc:
        raise EngineError(f"layer '{name}': {exc}") from None
    if spec.B == 0 or spec.Cout == 0:
        raise EngineError(f"layer '{name}': nothing to simulate (batch or channels is 0)")
    shape = _shape(spec, weight_kind, name, LayerShape.nonzero_of(codes, spec.group_layout))
    K = shape.gemm_k
    rows, cols, df = hw.array.rows, hw.array.cols, hw.array.dataflow
    ends, gidx = group_end_mask(shape), group_index(shape)
    # Exact group sums (carried across folds too) need at most max|x| * max|code| * (weights per group).
    group_bound = spec.xmax * max(1, max_abs(codes)) * min(spec.group_size, K)   # xmax: check_conv's scan of x
    two = spec.scales == 2
    if two and group_bound >= PACK_HALF:
        raise EngineError(f"layer '{name}': two-scale partial sums need max|x| * N < 2**30 to pack")
    # The narrowest registers that hold every (partial) group sum exactly: the same sums, and int16 halves the
    # bytes each cycle's passes move (ResNet-50's 8-bit ternary layers: 1.3x faster stepping).
    dtype = np.int64 if two or group_bound >= 2**31 else np.int32 if group_bound >= 2**15 else np.int16
    xcol = im2col(x.astype(dtype, copy=False), spec.kh, spec.kw, spec.stride, spec.padding, spec.dilation,
                  spec.groups, spec.OH, spec.OW, spec.group_layout)
    wk = np.asarray(codes).reshape(spec.Cout, K)[:, k_order(spec.cin_g, spec.kh, spec.kw, spec.group_layout)]
    wcol = np.ascontiguousarray(pack_two_scale_codes(wk) if two else wk, dtype)
    alpha = np.asarray(alpha_q, np.int64).reshape(spec.Cout, -1, spec.scales)
    alpha_neg = np.ascontiguousarray(alpha[:, :, 1]) if two else None
    with SCHEDULE_LOCK:
        t_tile, plan = ternary_traffic(shape, hw).t_tile, skip_plan(shape, hw, os_formula)
    acc, counters = _run_gemms(xcol, wcol, ends, gidx, np.ascontiguousarray(alpha[:, :, 0]),
                               np.asarray(bias_q, np.int64), rows, cols, df, os_formula, t_tile, spec.acc_lo,
                               spec.acc_hi, not saturate, _queue(hw), np.int64, dtype, plan, shape, alpha_neg)
    acc = acc.reshape(spec.groups, spec.B, spec.OH, spec.OW, spec.cout_g).transpose(1, 0, 4, 2, 3)
    y = requantize_int(acc.reshape(spec.B, spec.Cout, spec.OH, spec.OW), shift=shift, out_lo=out_lo, out_hi=out_hi)
    return EngineResult(y, counters.overflow_events, _cycles(counters), counters, counters.stepped,
                        rows * cols * counters.stepped, shape)


def linear_engine(x: np.ndarray, codes: np.ndarray, alpha_q: np.ndarray, bias_q: np.ndarray, *, group_size: int,
                  acc_bits: int, saturate: bool, shift: int, out_lo: int, out_hi: int, hw: Accelerator,
                  weight_kind: str = "ternary", os_formula: OsFormula = "scalesim", name: str = "layer",
                  group_layout: str = "channel", scales: str | int = 1) -> EngineResult:
    """tersim.kernels.linear_int stepped on the array: a 1x1 conv on a 1x1 image."""
    try:
        spec, x, codes, alpha_q, bias_q = check_linear(x, codes, alpha_q, bias_q, group_size=group_size,
                                                       acc_bits=acc_bits, out_lo=out_lo, out_hi=out_hi,
                                                       group_layout=group_layout, scales=scales)
    except (TypeError, ValueError) as exc:
        raise EngineError(f"layer '{name}': {exc}") from None
    r = conv2d_engine(x[:, :, None, None], codes[:, :, None, None], linear_alpha_as_conv(alpha_q), bias_q,
                      group_size=group_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                      acc_bits=acc_bits, saturate=saturate, shift=shift, out_lo=out_lo, out_hi=out_hi, hw=hw,
                      weight_kind=weight_kind, os_formula=os_formula, name=name, scales=spec.scales)
    return EngineResult(r.y.reshape(spec.B, spec.Cout), r.overflow_events, r.cycles, r.counters, r.stepped_cycles,
                        r.pe_cycles, r.shape)


def baseline_gemm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, *, stride: tuple[int, int],
                  padding: tuple[int, int], dilation: tuple[int, int], groups: int, hw: Accelerator,
                  os_formula: OsFormula = "scalesim", name: str = "layer") -> EngineResult:
    """The FP32 baseline (hw.baseline): the same stepping on float32 data. No groups: the column's sum
    leaves the bottom PE into the output buffer once per row fold (os: once per output), no multipliers,
    no clamping. x (B, Cin, H, W) float, weight (Cout, Cin/groups, kh, kw); y float32 (B, Cout, OH, OW)."""
    x, weight = np.asarray(x, np.float32), np.asarray(weight, np.float32)
    cout, cin_g, kh, kw = weight.shape
    zero = np.zeros((cout, kh, kw, 1), np.int32)
    try:   # geometry checks and output size, on integer stand-ins of the same shapes
        spec = check_conv(np.zeros(x.shape, np.int32), np.zeros(weight.shape, np.int8), zero, np.zeros(cout, np.int64),
                          group_size=cin_g, stride=stride, padding=padding, dilation=dilation, groups=groups,
                          acc_bits=32, out_lo=0, out_hi=0)[0]
    except (TypeError, ValueError) as exc:
        raise EngineError(f"layer '{name}': {exc}") from None
    shape = _shape(spec, "ternary", name)
    base = hw.baseline.array
    K = shape.gemm_k
    ends = np.zeros(K, np.bool_)
    ends[K - 1] = True
    if Dataflow.of(base.dataflow) is not Dataflow.OS:
        ends[base.rows - 1::base.rows] = True      # every row fold's bottom PE writes its sums out
    xcol = im2col(x, kh, kw, spec.stride, spec.padding, spec.dilation, groups, spec.OH, spec.OW)
    wcol = np.ascontiguousarray(weight.transpose(0, 2, 3, 1)).reshape(cout, K)
    b = np.zeros(cout, np.float32) if bias is None else np.asarray(bias, np.float32)
    acc, counters = _run_gemms(xcol, wcol, ends, np.zeros(K, np.int64), np.ones((cout, 1), np.float32), b,
                            base.rows, base.cols, base.dataflow, os_formula, baseline_traffic(shape, hw).t_tile,
                            -FLOAT_LIMIT, FLOAT_LIMIT, False, (QUEUE_NONE, 1), np.float32, np.float32)
    y = acc.reshape(groups, spec.B, spec.OH, spec.OW, spec.cout_g).transpose(1, 0, 4, 2, 3)
    return EngineResult(np.ascontiguousarray(y.reshape(spec.B, cout, spec.OH, spec.OW)), 0, _cycles(counters),
                        counters, counters.stepped, base.rows * base.cols * counters.stepped, shape)


# --- one layer of a quantized network ----------------------------------------------------------------------
def step_layer(layer: QuantizedLayer, x: np.ndarray, qgraph: QuantizedGraph, hw: Accelerator) -> EngineResult:
    """The layer's integer datapath on the array, with the same arguments the integer kernels get."""
    node = layer.node
    common = dict(group_size=layer.group_size, acc_bits=qgraph.acc_bits, saturate=qgraph.saturate, shift=layer.shift,
                  out_lo=layer.out_lo, out_hi=layer.out_hi, hw=hw, weight_kind=layer.weight_kind, name=node.name,
                  group_layout=layer.group_layout, scales=layer.scales)
    if node.op == "linear":
        return linear_engine(x, layer.codes, layer.alpha_q, layer.bias_q, **common)
    a = node.attrs
    return conv2d_engine(x, layer.codes, layer.alpha_q, layer.bias_q, stride=tuple(a["stride"]),
                         padding=tuple(a["padding"]), dilation=tuple(a["dilation"]), groups=a["groups"], **common)
