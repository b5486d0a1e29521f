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
from typing import Literal

import numpy as np

from tersim.config import Accelerator
from tersim.config.hardware import EnergyTable, MemoryConfig
from tersim.timing.shapes import LayerShape

OsFormula = Literal["scalesim", "paper"]
SHORT = {"weight_stationary": "ws", "output_stationary": "os", "input_stationary": "is"}
FP32_BITS = 32


# --- compute: SCALE-Sim's stall-free cycles ---------------------------------------------------------
def gemm_dims(k: int, n: int, p: int, dataflow: str) -> tuple[int, int, int]:
    """(Sr, Sc, T): what maps to array rows, to array columns, and what streams in time (SCALE-Sim)."""
    df = SHORT.get(dataflow, dataflow)
    if df == "ws":
        return k, n, p
    if df == "os":
        return p, n, k
    if df == "is":
        return k, p, n
    raise ValueError(f"unknown dataflow {dataflow!r}")


def num_folds(sr: int, sc: int, rows: int, cols: int) -> int:
    """How many array-sized tiles the (Sr, Sc) spatial plane is cut into."""
    return math.ceil(sr / rows) * math.ceil(sc / cols)


def fold_cycles(rows: int, cols: int, t: int, dataflow: str, os_formula: OsFormula = "scalesim") -> int:
    """Cycles of one fold. ws/is: load the stationary tile (rows), skew in (rows), drain (cols), stream T.

    os: SCALE-Sim 3.0.0 counts `rows + cols + T - 2`; its paper (and its maintainers, as a bug) say
    `2*rows + cols + T - 2`. `os_formula="scalesim"` (default) matches the tool, "paper" the paper.
    """
    df = SHORT.get(dataflow, dataflow)
    if df == "os" and os_formula == "scalesim":
        return rows + cols + t - 2
    if os_formula not in ("scalesim", "paper"):
        raise ValueError(f"os_formula must be 'scalesim' or 'paper', got {os_formula!r}")
    return 2 * rows + cols + t - 2


def compute_cycles(k: int, n: int, p: int, rows: int, cols: int, dataflow: str,
                   os_formula: OsFormula = "scalesim", gemms: int = 1) -> int:
    """Stall-free cycles of `gemms` identical (K, N, P) GEMMs run back to back: folds * per_fold - 1.

    With gemms=1 this is exactly SCALE-Sim 3.0.0's compute cycles for the layer.
    """
    sr, sc, t = gemm_dims(k, n, p, dataflow)
    return gemms * num_folds(sr, sc, rows, cols) * fold_cycles(rows, cols, t, dataflow, os_formula) - 1


def effective_k(shape: LayerShape, dataflow: str, zero_weights: str) -> int:
    """Reduction length the array actually steps through.

    `skip` compresses zero weights out of K where the weights are the operand that moves along K with
    its own schedule: ws (K on rows: each column keeps only its non-zeros, so fewer row folds) and os
    (K in time: each column streams only its non-zeros). Each PE then selects its activation from the
    fold's K window by a stored index (metadata not modelled). Only `zero_fraction` is known, so every
    column is assumed to hold the expected non-zero count ceil(K * (1 - z)) — optimistic, since a fold
    really waits for its fullest column. In `is` the activations are stationary and dense along K, so a
    zero weight can only be gated: no cycles saved.
    """
    k = shape.gemm_k
    if zero_weights != "skip" or SHORT[dataflow] == "is":
        return k
    return max(1, math.ceil(k * (1.0 - shape.zero_fraction) - 1e-9))


def _fold_sizes(total: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct fold sizes of `total` cut into `size` pieces, with their multiplicities."""
    full, rest = divmod(total, size)
    sizes = [size] * (full > 0) + [rest] * (rest > 0)
    counts = [full] * (full > 0) + [1] * (rest > 0)
    return np.array(sizes, dtype=np.int64), np.array(counts, dtype=np.int64)


def _segments_in_windows(shape: LayerShape, k_eff: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row fold (K on rows): rows used, and FGQ groups whose members fall in the fold.

    A group cut by a fold boundary needs one multiply per piece (alpha*(a+b) = alpha*a + alpha*b).
    With skip, compressed row r stands for original index floor(r * K / k_eff) (non-zeros spread evenly).
    """
    k, cin, gs = shape.gemm_k, shape.cin_per_group, shape.group_size
    g_per_kpos = shape.scale_groups_per_kpos
    starts = np.arange(0, k_eff, rows, dtype=np.int64)
    ends = np.minimum(starts + rows, k_eff)
    if shape.weight_kind == "int8":  # one per-channel scale, applied once the whole K is accumulated
        segs = np.zeros_like(starts)
        segs[-1] = 1
        return ends - starts, segs
    lo, hi = starts * k // k_eff, ends * k // k_eff

    def seg(idx: np.ndarray) -> np.ndarray:
        return (idx // cin) * g_per_kpos + (idx % cin) // gs

    # r non-zeros touch at most r groups: with skip, all-zero groups are compressed out with their multiply.
    return ends - starts, np.minimum(seg(hi - 1) - seg(lo) + 1, ends - starts)


def group_scale(shape: LayerShape, k_eff: int, hw: Accelerator, per_fold: int) -> tuple[int, int]:
    """(group multiplies performed, stall cycles) of the whole layer.

    Per fold: needed = group multiplies whose partial sums the fold produces; available = multipliers
    the fold can use (shared: all of them; per_column: those of the columns in use; per_pe: one per PE
    in use); the multipliers can work through the whole fold (a partial-sum FIFO decouples them from
    the array), so the fold lasts max(per_fold, ceil(needed / available)) cycles:
    stall = max(0, ceil(needed / available) - per_fold).
      ws/is (K on rows): needed = cols_used * T * groups_in_this_K_window
      os (K in time):    needed = rows_used * cols_used * groups_per_output
    Small N => more groups per window => more multiplies per cycle => stalls on few multipliers.
    int8-weight layers have one scale per output channel, the same at every kernel position, so the
    hardware applies it once per finished output (the engine's datapath counts one per kernel position;
    the sums are identical).
    """
    rows, cols, df = hw.array.rows, hw.array.cols, hw.array.dataflow
    gs_cfg = hw.group_scaling
    sr, sc, t = gemm_dims(k_eff, shape.gemm_n, shape.gemm_p, df)
    c_sizes, c_counts = _fold_sizes(sc, cols)
    if SHORT[df] == "os":
        r_sizes, r_counts = _fold_sizes(sr, rows)
        per_output = 1 if shape.weight_kind == "int8" else min(shape.scale_segments, k_eff)
        needed = np.outer(r_sizes * per_output, c_sizes)
    else:
        r_sizes, segs = _segments_in_windows(shape, k_eff, rows)
        r_counts = np.ones_like(r_sizes)
        needed = np.outer(segs * t, c_sizes)
    if gs_cfg.placement == "shared":
        avail = np.full(needed.shape, gs_cfg.multipliers, dtype=np.int64)
    elif gs_cfg.placement == "per_column":
        avail = np.outer(np.ones_like(r_sizes), c_sizes * (gs_cfg.multipliers // cols))
    else:  # per_pe
        avail = np.outer(r_sizes, c_sizes)
    stall = np.maximum(0, -(-needed // avail) - per_fold)
    weight = np.outer(r_counts, c_counts)
    return shape.groups * int((needed * weight).sum()), shape.groups * int((stall * weight).sum())


# --- memory: a roofline per layer --------------------------------------------------------------------
@dataclass(frozen=True)
class _Traffic:
    dram_bytes: int
    sram_bytes: int
    t_tiles: int


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
    df = SHORT[dataflow]
    sr, sc, t = gemm_dims(k_eff, n, p, dataflow)
    r_folds, c_folds = math.ceil(sr / rows), math.ceil(sc / cols)
    share = 2 if mem.double_buffering else 1
    cap_w, cap_a, cap_o = (kib * 1024 / share for kib in
                           (mem.weight_buffer_kib, mem.activation_buffer_kib, mem.output_buffer_kib))
    im2col_bytes = g * k * p * act_bits / 8                     # activations as the array consumes them
    # From DRAM: the input once, or less when the stride skips pixels (1x1 stride-2: a quarter).
    in_bytes = math.ceil(min(shape.input_elements * act_bits / 8, im2col_bytes))
    out_bytes = math.ceil(shape.output_elements * out_bits / 8)
    acc_bytes = math.ceil(acc_bits / 8)

    if df == "os":
        t_tiles = 1
        n_pieces, p_pieces = c_folds, r_folds
        array_side = r_folds * weight_bytes + c_folds * im2col_bytes + out_bytes
    else:
        t_tile = max(1, int(cap_o // (min(cols, sc) * acc_bytes)))
        t_tiles = math.ceil(t / t_tile)
        psum = (2 * r_folds - 1) * g * p * n * acc_bytes       # written every row fold, read back but the first
        if df == "ws":
            n_pieces, p_pieces = c_folds, t_tiles
            array_side = t_tiles * weight_bytes + c_folds * im2col_bytes + psum + out_bytes
        else:
            n_pieces, p_pieces = t_tiles, c_folds
            array_side = c_folds * weight_bytes + t_tiles * im2col_bytes + psum + out_bytes
    w, a = weight_bytes / g, in_bytes / g                       # one GEMM's share
    reads = g * min(_dram_reads(w, n_pieces, cap_w, a, p_pieces, cap_a),
                    _dram_reads(a, p_pieces, cap_a, w, n_pieces, cap_w))
    dram = int(math.ceil(reads)) + out_bytes
    return _Traffic(dram_bytes=dram, sram_bytes=int(math.ceil(array_side)) + dram, t_tiles=t_tiles)


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
        skip = {"name", "shape", "design", "rows", "cols", "dataflow"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


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
        name=shape.name, design=design, rows=rows, cols=cols, dataflow=SHORT[dataflow],
        active_macs=active_macs, group_multiplies=group_mults, compute_cycles=compute,
        stall_group_scale_cycles=group_stall, tile_reload_cycles=reload, stall_memory_cycles=mem_stall,
        dram_cycles=dram_cycles, total_cycles=total, pe_utilization=pe_util, multiplier_utilization=mult_util,
        sram_bytes=traffic.sram_bytes, dram_bytes=traffic.dram_bytes, energy_pj_compute=compute_pj,
        energy_pj_sram=sram_pj, energy_pj_dram=dram_pj, energy_pj_total=compute_pj + sram_pj + dram_pj,
        shape=shape,
    )


def _reload_cycles(t_tiles: int, folds: int, rows: int, cols: int, dataflow: str) -> int:
    """ws/is: each extra T tile re-runs every fold's load, fill and drain (2*rows + cols - 2 cycles)."""
    return 0 if SHORT[dataflow] == "os" else (t_tiles - 1) * folds * (2 * rows + cols - 2)


def layer_timing(shape: LayerShape, hw: Accelerator, *, os_formula: OsFormula = "scalesim") -> LayerTiming:
    """One conv/linear layer on the ternary design `hw` (FGQ group size from `shape.group_size`).

    Ternary layers: a PE adds/subtracts/skips an act_bits activation per cycle; 2-bit codes plus an
    alpha table of scale_bits. int8-weight layers run on the same array, every MAC an 8-bit multiply at
    one per PE per cycle, with one scale multiply per finished output.

    With `zero_weights: skip` the (offline) weight compressor keeps a layer dense when compressing does
    not pay: a multiplier-bound layer gains nothing from fewer add cycles, and packing more groups into
    each fold can cut groups at new fold boundaries (one more multiply each). So skip is never slower.
    """
    k_eff = effective_k(shape, hw.array.dataflow, hw.pe.zero_weights)
    timing = _ternary_timing(shape, hw, k_eff, os_formula)
    if k_eff < shape.gemm_k:
        dense = _ternary_timing(shape, hw, shape.gemm_k, os_formula)
        if dense.total_cycles < timing.total_cycles:
            return dense
    return timing


def _ternary_timing(shape: LayerShape, hw: Accelerator, k_eff: int, os_formula: OsFormula) -> LayerTiming:
    rows, cols, df = hw.array.rows, hw.array.cols, hw.array.dataflow
    act_bits, acc_bits = hw.pe.act_bits, hw.accumulator.bits
    scale_bits, energy = hw.group_scaling.scale_bits, hw.energy
    n, p = shape.gemm_n, shape.gemm_p
    per_fold = fold_cycles(rows, cols, gemm_dims(k_eff, n, p, df)[2], df, os_formula)
    compute = compute_cycles(k_eff, n, p, rows, cols, df, os_formula, gemms=shape.groups)
    group_mults, group_stall = group_scale(shape, k_eff, hw, per_fold)

    w_bits = 8 if shape.weight_kind == "int8" else hw.pe.weight_bits
    weight_bytes = math.ceil(shape.num_weights * w_bits / 8) + math.ceil(shape.num_alphas * scale_bits / 8)
    traffic = memory_traffic(shape, k_eff, rows, cols, df, hw.memory, weight_bytes, act_bits, act_bits, acc_bits)
    folds = shape.groups * num_folds(*gemm_dims(k_eff, n, p, df)[:2], rows, cols)
    reload = _reload_cycles(traffic.t_tiles, folds, rows, cols, df)

    # Zero weights are gated (no add energy) in both modes; only `skip` also saves their cycles.
    nonzero_macs = round(shape.macs * (1.0 - shape.zero_fraction))
    per_mac = add_pj(energy, acc_bits) + (mult_pj(energy, 8, act_bits) if shape.weight_kind == "int8" else 0.0)
    # The scaled operand is one group's partial sum (ternary) or the whole int8 accumulation (int8 layers).
    scaled_bits = acc_bits if shape.weight_kind == "int8" else psum_bits(act_bits, shape.group_size, acc_bits)
    per_scale = mult_pj(energy, scale_bits, scaled_bits) + add_pj(energy, acc_bits)
    compute_pj = nonzero_macs * per_mac + group_mults * per_scale

    multipliers = rows * cols if hw.group_scaling.placement == "per_pe" else hw.group_scaling.multipliers
    active = shape.groups * k_eff * n * p
    return _finish(shape, "ternary", rows, cols, df, hw.memory, compute, group_stall, reload, traffic,
                   active, group_mults, multipliers, energy, compute_pj)


def baseline_layer_timing(shape: LayerShape, hw: Accelerator, *, os_formula: OsFormula = "scalesim") -> LayerTiming:
    """The same layer on the FP32 baseline (hw.baseline): FP32 MAC PEs, 4-byte weights, activations and
    partial sums, dense (no zero skipping), no group scaling."""
    base = hw.baseline
    rows, cols, df = base.array.rows, base.array.cols, base.array.dataflow
    k, n, p = shape.gemm_k, shape.gemm_n, shape.gemm_p
    compute = compute_cycles(k, n, p, rows, cols, df, os_formula, gemms=shape.groups)
    weight_bytes = shape.num_weights * FP32_BITS // 8
    traffic = memory_traffic(shape, k, rows, cols, df, base.memory, weight_bytes, FP32_BITS, FP32_BITS, FP32_BITS)
    folds = shape.groups * num_folds(*gemm_dims(k, n, p, df)[:2], rows, cols)
    reload = _reload_cycles(traffic.t_tiles, folds, rows, cols, df)
    compute_pj = shape.macs * (hw.energy.fp32_mult_pj + hw.energy.fp32_add_pj)
    return _finish(shape, "fp32", rows, cols, df, base.memory, compute, 0, reload, traffic,
                   shape.macs, 0, 0, hw.energy, compute_pj)
