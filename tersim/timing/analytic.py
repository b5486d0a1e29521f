"""Fast analytic timing model: cycles, stalls, bytes and energy of one layer, in closed form.

One layer = `groups` GEMMs (K, N, P) (see shapes.py), run back to back on a rows x cols array.
Per layer:

    total_cycles = compute_cycles            SCALE-Sim's stall-free count (folds * per_fold - 1)
                 + stall_group_scale_cycles  FGQ alpha multiplies the multipliers cannot keep up with
                 + tile_reload_cycles        extra folds when partial sums overflow the output buffer
                 + stall_memory_cycles       DRAM time not hidden behind the above (roofline)

Every formula, assumption and approximation is written out in docs/TIMING.md; the docstrings here say
why each piece exists. The FP32 baseline goes through the same functions with a dense, multiplier-free,
4-byte configuration, so the speedup is a ratio of two designs timed the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
import numpy as np

from tersim.config import Accelerator
from tersim.config.hardware import EnergyTable, MemoryConfig
from tersim.timing.pe_kinds import mac_extra_pj
from tersim.timing.schedule import (ArrayCycles, Dataflow, OsFormula, SkipPlan, array_cycles, compute_cycles,
                                    fold_classes, gemm_dims, num_folds, reload_cycles, skip_candidate)
from tersim.timing.shapes import LayerShape

FP32_BITS = 32


# --- memory: a roofline per layer --------------------------------------------------------------------
@dataclass(frozen=True)
class _Traffic:
    dram_bytes: int
    sram_bytes: int
    t_tiles: int
    t_tile: int     # T elements per tile (the whole T when it fits)


def _dram_reads(outer_bytes: float, outer_pieces: int, outer_cap: float,
                inner_bytes: float, inner_pieces: int, inner_cap: float) -> float:
    """DRAM reads of two operands in a two-level loop nest (per GEMM).

    The outer operand's current piece is reused by every inner iteration: read once if the piece fits
    its buffer, else once per inner iteration. The inner operand is swept once per outer iteration:
    read once if it fits whole, else once per outer iteration.
    """
    outer = outer_bytes * (1 if outer_bytes / outer_pieces <= outer_cap else inner_pieces)
    inner = inner_bytes * (1 if inner_bytes <= inner_cap else outer_pieces)
    return outer + inner


def memory_traffic(shape: LayerShape, k_eff: int, rows: int, cols: int, dataflow: str, mem: MemoryConfig,
                   weight_bytes: int, act_bits: int, out_bits: int, acc_bits: int) -> _Traffic:
    """DRAM and SRAM bytes of one layer, and how many T tiles the output buffer forces.

    Weights split into pieces along N, activations along P:
      ws: N pieces = column folds, P pieces = T tiles      (K on rows, P streams)
      is: N pieces = T tiles,      P pieces = column folds (K on rows, N streams)
      os: N pieces = column folds, P pieces = row folds    (K streams; outputs finish in the PEs)
    ws/is keep partial sums (acc_bits each) on chip, so a T tile is as long as the output buffer allows
    for the columns in use. Of the two loop orders (weights outer or activations outer) the one with
    less DRAM traffic is taken, as a compiler would. Buffers hold half their size when double
    buffering. Outputs (out_bits) go to DRAM once. SRAM bytes = what the array reads and writes
    (stationary tiles, streamed operands im2col'ed, partial sums) + every DRAM byte passing through.
    """
    k, n, p, g = shape.gemm_k, shape.gemm_n, shape.gemm_p, shape.groups
    df = Dataflow.of(dataflow)
    sr, sc, t = gemm_dims(k_eff, n, p, df)
    r_folds, c_folds = math.ceil(sr / rows), math.ceil(sc / cols)
    share = 2 if mem.double_buffering else 1
    cap_w, cap_a, cap_o = (kib * 1024 / share for kib in
                           (mem.weight_buffer_kib, mem.activation_buffer_kib, mem.output_buffer_kib))
    im2col_bytes = g * k * p * act_bits / 8                     # activations as the array consumes them
    # From DRAM: the input once, or less when the stride skips pixels (1x1 stride-2: a quarter).
    in_bytes = math.ceil(min(shape.input_elements * act_bits / 8, im2col_bytes))
    out_bytes = math.ceil(shape.output_elements * out_bits / 8)
    acc_bytes = math.ceil(acc_bits / 8)

    if df is Dataflow.OS:
        t_tile, t_tiles = t, 1
        n_pieces, p_pieces = c_folds, r_folds
        array_side = r_folds * weight_bytes + c_folds * im2col_bytes + out_bytes
    else:
        t_tile = max(1, int(cap_o // (min(cols, sc) * acc_bytes)))
        t_tiles = math.ceil(t / t_tile)
        psum = (2 * r_folds - 1) * g * p * n * acc_bytes       # written every row fold, read back but the first
        if df is Dataflow.WS:
            n_pieces, p_pieces = c_folds, t_tiles
            array_side = t_tiles * weight_bytes + c_folds * im2col_bytes + psum + out_bytes
        else:
            n_pieces, p_pieces = t_tiles, c_folds
            array_side = c_folds * weight_bytes + t_tiles * im2col_bytes + psum + out_bytes
    w, a = weight_bytes / g, in_bytes / g                       # one GEMM's share
    reads = g * min(_dram_reads(w, n_pieces, cap_w, a, p_pieces, cap_a),
                    _dram_reads(a, p_pieces, cap_a, w, n_pieces, cap_w))
    dram = int(math.ceil(reads)) + out_bytes
    return _Traffic(dram_bytes=dram, sram_bytes=int(math.ceil(array_side)) + dram, t_tiles=t_tiles,
                    t_tile=min(t_tile, t))


# --- energy helpers ----------------------------------------------------------------------------------
def add_pj(energy: EnergyTable, acc_bits: int) -> float:
    """Accumulator add: the int32 adder above 16 bits, else the int16 one."""
    return energy.int32_add_pj if acc_bits > 16 else energy.int16_add_pj


def mult_pj(energy: EnergyTable, a_bits: int, b_bits: int) -> float:
    """An a x b integer multiply, scaled from the 8x8 one by operand width product (array multiplier)."""
    return energy.int8_mult_pj * a_bits * b_bits / 64


def psum_bits(act_bits: int, group_size: int, acc_bits: int) -> int:
    """Width of one group's partial sum: |sum of N +-activations| < N * 2**act_bits, plus sign."""
    return min(acc_bits, act_bits + math.ceil(math.log2(group_size)) + 1)


# --- results -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerTiming:
    """Cycles, bytes and energy of one layer on one design. `as_dict()` is a flat report row."""

    name: str
    design: str                        # 'ternary' | 'fp32'
    rows: int
    cols: int
    dataflow: str
    active_macs: int                   # MAC slots the array steps through (K compressed in skip mode)
    group_multiplies: int              # FGQ alpha multiplies done by the group-scaling multipliers
    compute_cycles: int                # SCALE-Sim stall-free cycles
    stall_group_scale_cycles: int
    tile_reload_cycles: int
    stall_memory_cycles: int
    dram_cycles: int
    total_cycles: int
    pe_utilization: float              # active MACs / (rows * cols * total_cycles)
    multiplier_utilization: float      # group multiplies / (multipliers * total_cycles); fp32: = pe_utilization
    sram_bytes: int
    dram_bytes: int
    energy_pj_compute: float
    energy_pj_sram: float
    energy_pj_dram: float
    energy_pj_total: float
    shape: LayerShape = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, float | int | str]:
        """Numbers only (no name/shape/design), ready to merge into a per-layer report row."""
        return {name: getattr(self, name) for name in TIMING_ROW_FIELDS}


TIMING_ROW_FIELDS = tuple(f.name for f in fields(LayerTiming)
                          if f.name not in {"name", "shape", "design", "rows", "cols", "dataflow"})


def _finish(shape: LayerShape, design: str, rows: int, cols: int, dataflow: str, mem: MemoryConfig,
            compute: int, group_stall: int, reload: int, traffic: _Traffic, active_macs: int,
            group_mults: int, multipliers: int, energy: EnergyTable, compute_pj: float) -> LayerTiming:
    """Memory roofline, totals, utilisations and energy sums shared by both designs."""
    busy = compute + group_stall + reload
    dram_cycles = math.ceil(traffic.dram_bytes / mem.dram_bytes_per_cycle)
    mem_stall = max(0, dram_cycles - busy) if mem.double_buffering else dram_cycles
    total = busy + mem_stall
    pe_util = min(1.0, active_macs / (rows * cols * total)) if total else 0.0
    mult_util = min(1.0, group_mults / (multipliers * total)) if (total and multipliers) else pe_util
    sram_pj = traffic.sram_bytes * energy.sram_pj_per_byte
    dram_pj = traffic.dram_bytes * energy.dram_pj_per_byte
    return LayerTiming(
        name=shape.name, design=design, rows=rows, cols=cols, dataflow=Dataflow.of(dataflow).short,
        active_macs=active_macs, group_multiplies=group_mults, compute_cycles=compute,
        stall_group_scale_cycles=group_stall, tile_reload_cycles=reload, stall_memory_cycles=mem_stall,
        dram_cycles=dram_cycles, total_cycles=total, pe_utilization=pe_util, multiplier_utilization=mult_util,
        sram_bytes=traffic.sram_bytes, dram_bytes=traffic.dram_bytes, energy_pj_compute=compute_pj,
        energy_pj_sram=sram_pj, energy_pj_dram=dram_pj, energy_pj_total=compute_pj + sram_pj + dram_pj,
        shape=shape,
    )


def _skip_choice(shape: LayerShape, hw: Accelerator, os_formula: OsFormula,
                 memo: dict | None = None) -> tuple[SkipPlan | None, LayerTiming]:
    """The (offline) weight compressor's choice with `zero_weights: skip` and the layer's timing under it.
    It keeps the layer dense unless compressing is strictly faster: dropping K indices can move group ends
    across fold boundaries and crowd the multipliers. So skip is never slower than gate."""
    dense = ternary_timing(shape, hw, os_formula=os_formula, memo=memo)
    plan = skip_candidate(shape, hw)
    if plan is not None:
        compressed = ternary_timing(shape, hw, plan=plan, os_formula=os_formula)
        if compressed.total_cycles < dense.total_cycles:
            return plan, compressed
    return None, dense


def skip_plan(shape: LayerShape, hw: Accelerator, os_formula: OsFormula = "scalesim") -> SkipPlan | None:
    """The compressed schedule `zero_weights: skip` steps for this layer, or None to keep it dense."""
    return _skip_choice(shape, hw, os_formula)[0]


def layer_timing(shape: LayerShape, hw: Accelerator, *, os_formula: OsFormula = "scalesim",
                 memo: dict | None = None) -> LayerTiming:
    """One conv/linear layer on the ternary design `hw` (FGQ group size from `shape.group_size`).

    Ternary layers: a PE adds/subtracts/skips an act_bits activation per cycle; 2-bit codes plus an
    alpha table of scale_bits. int8-weight layers run on the same array, every MAC an 8-bit multiply at
    one per PE per cycle, their per-channel scale applied per kernel position as the numerics contract
    writes it (one group per kernel position). `zero_weights: skip`: see `_skip_choice`. `memo`: a dict the
    caller keeps for the layers of one model on this one `hw` (see `ternary_timing`).
    """
    return _skip_choice(shape, hw, os_formula, memo)[1]


def ternary_traffic(shape: LayerShape, hw: Accelerator, k_eff: int | None = None) -> _Traffic:
    """Bytes and T tiling of the layer on the ternary design (2-bit codes or int8 weights + scales);
    `k_eff`: the K the array steps (skip: the mean over column folds)."""
    k_eff = shape.gemm_k if k_eff is None else k_eff
    w_bits = shape.weight_bits if shape.weight_kind == "int8" else hw.pe.weight_bits
    weight_bytes = math.ceil(shape.num_weights * w_bits / 8) + math.ceil(shape.num_alphas * hw.group_scaling.scale_bits / 8)
    return memory_traffic(shape, k_eff, hw.array.rows, hw.array.cols, hw.array.dataflow, hw.memory, weight_bytes,
                          hw.pe.act_bits, hw.pe.act_bits, hw.accumulator.bits)


def ternary_timing(shape: LayerShape, hw: Accelerator, cycles: ArrayCycles | None = None, *,
                   plan: SkipPlan | None = None, os_formula: OsFormula = "scalesim",
                   memo: dict | None = None) -> LayerTiming:
    """The layer on the ternary design, dense or compressed by `plan` (skip); `cycles` from the
    cycle-stepped engine, else from the closed forms. Bytes, memory stalls and energy follow from them.
    `memo`: a dict the caller keeps while it holds `hw` (a model's layers on one hardware point): the dense
    closed forms are then computed once per layer geometry (a network repeats its block shapes); they do not
    read the layer's name, zero fraction or non-zero mask, only the energy does."""
    if cycles is None and plan is None and memo is not None:
        key = (id(hw), os_formula, shape.geometry)
        array = memo.get(key)
        if array is None:
            array = memo[key] = _ternary_array(shape, hw, None, None, os_formula)
    else:
        array = _ternary_array(shape, hw, cycles, plan, os_formula)
    active, traffic, cycles = array
    rows, cols, df = hw.array.rows, hw.array.cols, hw.array.dataflow
    act_bits, acc_bits = hw.pe.act_bits, hw.accumulator.bits
    scale_bits, energy = hw.group_scaling.scale_bits, hw.energy

    # Zero weights are gated (no add energy) in both modes; only `skip` also saves their cycles.
    nonzero_macs = round(shape.macs * (1.0 - shape.zero_fraction))
    per_mac = add_pj(energy, acc_bits) + mac_extra_pj(hw, shape.weight_kind, shape.weight_scheme, shape.weight_bits)
    # The scaled operand is one group's partial sum (ternary) or one kernel position's int8 sum.
    scaled_bits = acc_bits if shape.weight_kind == "int8" else psum_bits(act_bits, shape.group_size, acc_bits)
    per_scale = mult_pj(energy, scale_bits, scaled_bits) + add_pj(energy, acc_bits)
    compute_pj = nonzero_macs * per_mac + cycles.group_mults * per_scale

    multipliers = rows * cols * shape.scales if hw.group_scaling.placement == "per_pe" else hw.group_scaling.multipliers
    return _finish(shape, "ternary", rows, cols, df, hw.memory, cycles.compute, cycles.group_stall,
                   cycles.tile_reload, traffic, active, cycles.group_mults, multipliers, energy, compute_pj)


def _ternary_array(shape: LayerShape, hw: Accelerator, cycles: ArrayCycles | None, plan: SkipPlan | None,
                   os_formula: OsFormula) -> tuple[int, _Traffic, ArrayCycles]:
    """What the array does with the layer on the ternary design: MAC slots stepped, bytes, cycles."""
    df = hw.array.dataflow
    classes = fold_classes(shape, hw, plan)
    sr, _, t = gemm_dims(shape.gemm_k, shape.gemm_n, shape.gemm_p, df)
    # MAC slots stepped: K of each column fold * its columns * what streams past them
    active = sum(fc.k * fc.cols_used * fc.count for fc in classes) * (sr if Dataflow.of(df) is Dataflow.OS else t)
    traffic = ternary_traffic(shape, hw, math.ceil(active / (shape.groups * shape.gemm_n * shape.gemm_p)))
    if cycles is None:
        cycles = array_cycles(shape, hw, classes, os_formula, traffic.t_tile, traffic.t_tiles)
    return active, traffic, cycles


def baseline_traffic(shape: LayerShape, hw: Accelerator) -> _Traffic:
    """Bytes and T tiling on the FP32 baseline: 4-byte weights, activations and partial sums."""
    base = hw.baseline
    weight_bytes = shape.num_weights * FP32_BITS // 8
    return memory_traffic(shape, shape.gemm_k, base.array.rows, base.array.cols, base.array.dataflow, base.memory,
                          weight_bytes, FP32_BITS, FP32_BITS, FP32_BITS)


def baseline_layer_timing(shape: LayerShape, hw: Accelerator, cycles: ArrayCycles | None = None, *,
                          os_formula: OsFormula = "scalesim") -> LayerTiming:
    """The same layer on the FP32 baseline (hw.baseline): FP32 MAC PEs, 4-byte weights, activations and
    partial sums, dense (no zero skipping), no group scaling. `cycles` from the engine, else closed forms."""
    if cycles is None:  # the closed forms see only these: a sweep over the ternary design reuses them per point
        memo = _baseline_memo(hw, os_formula)
        if shape not in memo:
            if len(memo) >= BASELINE_MEMO_SIZE:
                memo.clear()
            memo[shape] = _baseline_layer_timing(shape, hw, None, os_formula)
        return memo[shape]
    return _baseline_layer_timing(shape, hw, cycles, os_formula)


BASELINE_MEMO_SIZE = 4096   # layer timings per baseline table
BASELINE_TABLES_SIZE = 64   # (baseline, energy, os_formula) tables
_BASELINE_MEMO: dict[tuple, dict[LayerShape, LayerTiming]] = {}   # (baseline, energy, os_formula) -> by shape
_LAST_BASELINE: tuple | None = None


def _baseline_memo(hw: Accelerator, os_formula: OsFormula) -> dict[LayerShape, LayerTiming]:
    """The baseline timings memoised for hw's baseline and energy tables (frozen models). The layers of one
    model are timed on one `hw` in a row: the same objects as last time skip hashing the two models."""
    global _LAST_BASELINE
    last = _LAST_BASELINE
    if last is not None and last[0] is hw.baseline and last[1] is hw.energy and last[2] == os_formula:
        return last[3]
    key = (hw.baseline, hw.energy, os_formula)
    if key not in _BASELINE_MEMO and len(_BASELINE_MEMO) >= BASELINE_TABLES_SIZE:
        _BASELINE_MEMO.clear()
    memo = _BASELINE_MEMO.setdefault(key, {})
    _LAST_BASELINE = (hw.baseline, hw.energy, os_formula, memo)
    return memo


def _baseline_layer_timing(shape: LayerShape, hw: Accelerator, cycles: ArrayCycles | None,
                           os_formula: OsFormula) -> LayerTiming:
    base = hw.baseline
    rows, cols, df = base.array.rows, base.array.cols, base.array.dataflow
    k, n, p = shape.gemm_k, shape.gemm_n, shape.gemm_p
    traffic = baseline_traffic(shape, hw)
    if cycles is None:
        folds = shape.groups * num_folds(*gemm_dims(k, n, p, df)[:2], rows, cols)
        cycles = ArrayCycles(compute_cycles(k, n, p, rows, cols, df, os_formula, gemms=shape.groups), 0,
                             reload_cycles(traffic.t_tiles, folds, rows, cols, df), 0)
    compute_pj = shape.macs * (hw.energy.fp32_mult_pj + hw.energy.fp32_add_pj)
    return _finish(shape, "fp32", rows, cols, df, base.memory, cycles.compute, 0, cycles.tile_reload, traffic,
                   shape.macs, 0, 0, hw.energy, compute_pj)
