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


@dataclass(frozen=True)
class SkipPlan:
    """`zero_weights: skip` on one layer: per conv group, per column fold, the K indices the fold steps.

    A row of a ws array (a time step of an os array) feeds one activation to every column of the fold,
    so a K index can only be dropped when all the fold's filters have a zero weight there; the weight
    compressor drops those (offline, per fold) and the activation fetcher skips them.
    """

    kept: tuple[tuple[np.ndarray, ...], ...]

    def folds(self):
        """(conv group, column fold index, kept K indices) of every column fold."""
        for g, per_group in enumerate(self.kept):
            for f, kept in enumerate(per_group):
                yield g, f, kept


def _skip_candidate(shape: LayerShape, hw: Accelerator) -> SkipPlan | None:
    """The compressed schedule, or None when skip cannot drop anything (gate, is, no weights known, no
    K index zero across a whole fold). A fold keeps at least one K index (an all-zero fold still runs)."""
    df = SHORT[hw.array.dataflow]
    if hw.pe.zero_weights != "skip" or df == "is" or shape.nonzero is None:
        return None
    n, cols, k = shape.gemm_n, hw.array.cols, shape.gemm_k
    kept, dropped = [], False
    for g in range(shape.groups):
        per_group = []
        for n0 in range(0, n, cols):
            used = np.flatnonzero(shape.nonzero[g * n + n0:g * n + min(n0 + cols, n)].any(axis=0))
            per_group.append(used if used.size else np.zeros(1, np.int64))
            dropped |= per_group[-1].size < k
        kept.append(tuple(per_group))
    return SkipPlan(tuple(kept)) if dropped else None


def _fold_sizes(total: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct fold sizes of `total` cut into `size` pieces, with their multiplicities."""
    full, rest = divmod(total, size)
    sizes = [size] * (full > 0) + [rest] * (rest > 0)
    counts = [full] * (full > 0) + [1] * (rest > 0)
    return np.array(sizes, dtype=np.int64), np.array(counts, dtype=np.int64)


def group_ends(shape: LayerShape, kept: np.ndarray | None = None) -> np.ndarray:
    """Positions in the stepped K order (all of K, or the `kept` indices with skip) whose PE completes an
    FGQ group: there the group's exact partial sum leaves the adder chain for a group-scaling multiplier.

    Groups are runs of `group_size` channels restarting at every kernel position (int8 layers: one group
    per kernel position, the numerics contract's datapath). A group whose indices were all dropped by
    skip is gone with its multiply (its sum would be 0).
    """
    k = np.arange(shape.gemm_k, dtype=np.int64) if kept is None else np.asarray(kept, dtype=np.int64)
    cin = shape.cin_per_group
    seg = (k // cin) * shape.scale_groups_per_kpos + (k % cin) // shape.group_size
    return np.flatnonzero(np.append(seg[1:] != seg[:-1], True))


def queue_stall(starts: np.ndarray, width: int, last: int, rate: int) -> int:
    """Cycles a FIFO served `rate` items per cycle still needs after cycle `last` to empty.

    Item source j puts one item in the FIFO every cycle of [starts_j, starts_j + width) (all before `last`);
    items are served from their arrival cycle on. Lindley: the backlog after `last` is
    max(0, max over t0 of (items arriving at or after t0) - rate * (last - t0 + 1)); the arrival rate only
    changes at starts_j and starts_j + width, so the maximum is at one of those cycles.
    """
    if starts.size == 0:
        return 0
    d = np.sort(starts.astype(np.int64))
    cum = np.concatenate(([0], np.cumsum(d)))
    t0 = np.concatenate((d, d + width))
    hi = np.searchsorted(d, t0, "left")              # sources not started by t0: all `width` items after it
    lo = np.searchsorted(d, t0 - width, "right")     # sources running at t0: d_j + width - t0 items after it
    after = (d.size - hi) * width + (cum[hi] - cum[lo]) + (width - t0) * (hi - lo)
    backlog = int(np.max(after - rate * (last - t0 + 1)))
    return max(0, -(-backlog // rate))


def _fold_stall(ends: np.ndarray, width: int, last: int, cols_used: int, rate: int, per_column: bool) -> int:
    """Group-scale stall of one fold: the multipliers' FIFO must empty before the next fold starts.

    Column c's group sums arrive like column 0's, c cycles later (the skew). per_column: each column has
    its own `rate` multipliers, so the last used column, whose arrivals end latest, decides; shared: one
    FIFO takes every used column's arrivals.
    """
    if per_column:
        return queue_stall(ends, width, last - (cols_used - 1), rate)
    return queue_stall((ends[:, None] + np.arange(cols_used)).ravel(), width, last, rate)


@dataclass(frozen=True)
class _FoldClass:
    """Column folds that step alike: their group ends, stepped K, columns used, and how many there are."""

    ends: np.ndarray
    k: int
    cols_used: int
    count: int


def _fold_classes(shape: LayerShape, hw: Accelerator, plan: SkipPlan | None) -> list[_FoldClass]:
    """Dense: one class per distinct column-fold width (times the conv groups); skip: one per fold."""
    cols, df = hw.array.cols, hw.array.dataflow
    if plan is None:
        ends, k = group_ends(shape), shape.gemm_k
        sc = gemm_dims(k, shape.gemm_n, shape.gemm_p, df)[1]
        return [_FoldClass(ends, k, int(cu), int(cc) * shape.groups) for cu, cc in zip(*_fold_sizes(sc, cols))]
    return [_FoldClass(group_ends(shape, kept), kept.size, min(cols, shape.gemm_n - f * cols), 1)
            for _, f, kept in plan.folds()]


def group_scale(shape: LayerShape, hw: Accelerator, t_tile: int, classes: list[_FoldClass]) -> tuple[int, int]:
    """(group multiplies performed, stall cycles) of the whole layer.

    Every group's exact partial sum is multiplied once by its alpha; a group cut by a row-fold boundary
    carries its raw partial sum into the next fold (the column's top psum input), so it still takes one
    multiply and the accumulation order stays the numerics contract's. The partial sums queue in a FIFO
    per column (per_column: multipliers/cols each) or one FIFO (shared); the fold ends when the array
    is done and the FIFO is empty (`_fold_stall`). per_pe never stalls: a PE finishes at most one group
    per cycle. Arrivals of one fold, stream cycle 0 = first streamed element at row 0:
      ws/is (K on rows): group end at row e of the window: one sum per cycle in [e + c, e + c + T_tile)
                         in column c (T_tile = the P tile (ws) / N tile (is) the fold streams);
      os (K in time):    PE (r, c) ends group e at cycle e + r + c (one item).
    The stream phase lasts T + rows + cols - 2 cycles.
    """
    rows, cols, df = hw.array.rows, hw.array.cols, SHORT[hw.array.dataflow]
    placement, multipliers = hw.group_scaling.placement, hw.group_scaling.multipliers
    sr, _, t = gemm_dims(shape.gemm_k, shape.gemm_n, shape.gemm_p, df)
    outputs_per_column = sr if df == "os" else t          # os: pixels on rows; ws/is: the streamed dimension
    mults = sum(fc.ends.size * fc.cols_used * outputs_per_column * fc.count for fc in classes)
    if placement == "per_pe":
        return int(mults), 0
    per_column = placement == "per_column"
    rate = multipliers // cols if per_column else multipliers
    stall = 0
    for fc in classes:
        ends, cu = fc.ends, fc.cols_used
        if df == "os":
            last = fc.k + rows + cols - 3
            for ru, rc in zip(*_fold_sizes(sr, rows)):
                if ends.size * ru * (1 if per_column else cols) <= rate:
                    continue  # never more arrivals per cycle than multipliers
                pes = (ends[:, None] + np.arange(ru)).ravel()
                stall += rc * fc.count * _fold_stall(pes, 1, last, cu, rate, per_column)
            continue
        windows: dict[bytes, int] = {}
        for w in np.split(ends % rows, np.searchsorted(ends, np.arange(rows, fc.k, rows))):
            windows[w.tobytes()] = windows.get(w.tobytes(), 0) + 1
        for key, wc in windows.items():
            w = np.frombuffer(key, dtype=ends.dtype)
            if w.size * (1 if per_column else cols) <= rate:
                continue
            for tn, tc in zip(*_fold_sizes(t, t_tile)):
                stall += wc * tc * fc.count * _fold_stall(w, tn, tn + rows + cols - 3, cu, rate, per_column)
    return int(mults), int(stall)


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
        t_tile, t_tiles = t, 1
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


@dataclass(frozen=True)
class ArrayCycles:
    """What the PE array itself does in one layer: from the closed forms here, or counted by stepping the
    array cycle by cycle (tersim.engine.cycle_engine). `compute` is SCALE-Sim's stall-free count."""

    compute: int
    group_stall: int
    tile_reload: int
    group_mults: int


def _reload_cycles(t_tiles: int, folds: int, rows: int, cols: int, dataflow: str) -> int:
    """ws/is: each extra T tile re-runs every fold's load, fill and drain (2*rows + cols - 2 cycles)."""
    return 0 if SHORT[dataflow] == "os" else (t_tiles - 1) * folds * (2 * rows + cols - 2)


def _skip_choice(shape: LayerShape, hw: Accelerator, os_formula: OsFormula) -> tuple[SkipPlan | None, LayerTiming]:
    """The (offline) weight compressor's choice with `zero_weights: skip` and the layer's timing under it.
    It keeps the layer dense unless compressing is strictly faster: dropping K indices can move group ends
    across fold boundaries and crowd the multipliers. So skip is never slower than gate."""
    dense = ternary_timing(shape, hw, os_formula=os_formula)
    plan = _skip_candidate(shape, hw)
    if plan is not None:
        compressed = ternary_timing(shape, hw, plan=plan, os_formula=os_formula)
        if compressed.total_cycles < dense.total_cycles:
            return plan, compressed
    return None, dense


def skip_plan(shape: LayerShape, hw: Accelerator, os_formula: OsFormula = "scalesim") -> SkipPlan | None:
    """The compressed schedule `zero_weights: skip` steps for this layer, or None to keep it dense."""
    return _skip_choice(shape, hw, os_formula)[0]


def layer_timing(shape: LayerShape, hw: Accelerator, *, os_formula: OsFormula = "scalesim") -> LayerTiming:
    """One conv/linear layer on the ternary design `hw` (FGQ group size from `shape.group_size`).

    Ternary layers: a PE adds/subtracts/skips an act_bits activation per cycle; 2-bit codes plus an
    alpha table of scale_bits. int8-weight layers run on the same array, every MAC an 8-bit multiply at
    one per PE per cycle, their per-channel scale applied per kernel position as the numerics contract
    writes it (one group per kernel position). `zero_weights: skip`: see `_skip_choice`.
    """
    return _skip_choice(shape, hw, os_formula)[1]


def ternary_traffic(shape: LayerShape, hw: Accelerator, k_eff: int | None = None) -> _Traffic:
    """Bytes and T tiling of the layer on the ternary design (2-bit codes or int8 weights + scales);
    `k_eff`: the K the array steps (skip: the mean over column folds)."""
    k_eff = shape.gemm_k if k_eff is None else k_eff
    w_bits = 8 if shape.weight_kind == "int8" else hw.pe.weight_bits
    weight_bytes = math.ceil(shape.num_weights * w_bits / 8) + math.ceil(shape.num_alphas * hw.group_scaling.scale_bits / 8)
    return memory_traffic(shape, k_eff, hw.array.rows, hw.array.cols, hw.array.dataflow, hw.memory, weight_bytes,
                          hw.pe.act_bits, hw.pe.act_bits, hw.accumulator.bits)


def array_cycles(shape: LayerShape, hw: Accelerator, classes: list[_FoldClass], os_formula: OsFormula, t_tile: int,
                 t_tiles: int) -> ArrayCycles:
    """The closed forms: compute (SCALE-Sim), group-scale stalls, tile reloads, group multiplies.

    Dense layers give exactly `compute_cycles` (SCALE-Sim's count); with skip every column fold has its
    own K: ws/is step ceil(K_fold / rows) row folds of the same length, os one fold per row fold of
    rows + cols + K_fold - 2 cycles."""
    rows, cols, df = hw.array.rows, hw.array.cols, hw.array.dataflow
    sr, _, t = gemm_dims(shape.gemm_k, shape.gemm_n, shape.gemm_p, df)
    if SHORT[df] == "os":
        folds = 0
        stepped = sum(fc.count * math.ceil(sr / rows) * fold_cycles(rows, cols, fc.k, df, os_formula) for fc in classes)
    else:
        folds = sum(fc.count * math.ceil(fc.k / rows) for fc in classes)
        stepped = folds * fold_cycles(rows, cols, t, df, os_formula)
    group_mults, group_stall = group_scale(shape, hw, t_tile, classes)
    return ArrayCycles(stepped - 1, group_stall, _reload_cycles(t_tiles, folds, rows, cols, df), group_mults)


def ternary_timing(shape: LayerShape, hw: Accelerator, cycles: ArrayCycles | None = None, *,
                   plan: SkipPlan | None = None, os_formula: OsFormula = "scalesim") -> LayerTiming:
    """The layer on the ternary design, dense or compressed by `plan` (skip); `cycles` from the
    cycle-stepped engine, else from the closed forms. Bytes, memory stalls and energy follow from them."""
    rows, cols, df = hw.array.rows, hw.array.cols, hw.array.dataflow
    act_bits, acc_bits = hw.pe.act_bits, hw.accumulator.bits
    scale_bits, energy = hw.group_scaling.scale_bits, hw.energy
    classes = _fold_classes(shape, hw, plan)
    sr, _, t = gemm_dims(shape.gemm_k, shape.gemm_n, shape.gemm_p, df)
    # MAC slots stepped: K of each column fold * its columns * what streams past them
    active = sum(fc.k * fc.cols_used * fc.count for fc in classes) * (sr if SHORT[df] == "os" else t)
    traffic = ternary_traffic(shape, hw, math.ceil(active / (shape.groups * shape.gemm_n * shape.gemm_p)))
    if cycles is None:
        cycles = array_cycles(shape, hw, classes, os_formula, traffic.t_tile, traffic.t_tiles)

    # Zero weights are gated (no add energy) in both modes; only `skip` also saves their cycles.
    nonzero_macs = round(shape.macs * (1.0 - shape.zero_fraction))
    per_mac = add_pj(energy, acc_bits) + (mult_pj(energy, 8, act_bits) if shape.weight_kind == "int8" else 0.0)
    # The scaled operand is one group's partial sum (ternary) or one kernel position's int8 sum.
    scaled_bits = acc_bits if shape.weight_kind == "int8" else psum_bits(act_bits, shape.group_size, acc_bits)
    per_scale = mult_pj(energy, scale_bits, scaled_bits) + add_pj(energy, acc_bits)
    compute_pj = nonzero_macs * per_mac + cycles.group_mults * per_scale

    multipliers = rows * cols if hw.group_scaling.placement == "per_pe" else hw.group_scaling.multipliers
    return _finish(shape, "ternary", rows, cols, df, hw.memory, cycles.compute, cycles.group_stall,
                   cycles.tile_reload, traffic, active, cycles.group_mults, multipliers, energy, compute_pj)


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
    base = hw.baseline
    rows, cols, df = base.array.rows, base.array.cols, base.array.dataflow
    k, n, p = shape.gemm_k, shape.gemm_n, shape.gemm_p
    traffic = baseline_traffic(shape, hw)
    if cycles is None:
        folds = shape.groups * num_folds(*gemm_dims(k, n, p, df)[:2], rows, cols)
        cycles = ArrayCycles(compute_cycles(k, n, p, rows, cols, df, os_formula, gemms=shape.groups), 0,
                             _reload_cycles(traffic.t_tiles, folds, rows, cols, df), 0)
    compute_pj = shape.macs * (hw.energy.fp32_mult_pj + hw.energy.fp32_add_pj)
    return _finish(shape, "fp32", rows, cols, df, base.memory, cycles.compute, 0, cycles.tile_reload, traffic,
                   shape.macs, 0, 0, hw.energy, compute_pj)
