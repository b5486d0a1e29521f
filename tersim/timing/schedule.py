"""The array's schedule: how one layer's GEMMs are cut into folds and stepped, and what that costs in cycles.

Below both the cycle-stepped engine (tersim/engine/cycle_engine.py), which steps this schedule with data,
and the analytic model (tersim/timing/analytic.py), which counts it in closed form: the dataflow, the
fold geometry (SCALE-Sim's), the FGQ group ends in the stepped K order (`group_ends`), the skip plan of
`zero_weights: skip`, the column-fold classes, and the per-fold cycle accounting (compute, group-scale
stalls from the multiplier FIFOs, tile reloads) as an `ArrayCycles`. docs/TIMING.md writes it out.
"""
from __future__ import annotations

import collections
import enum
import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tersim.config import Accelerator
from tersim.quantize.layout import k_group_index
from tersim.timing.shapes import LayerShape

OsFormula = Literal["scalesim", "paper"]


class Dataflow(enum.Enum):
    """What stays in the PEs (SCALE-Sim's names): weights (ws), outputs (os) or inputs (is)."""

    WS = "weight_stationary"
    OS = "output_stationary"
    IS = "input_stationary"

    @classmethod
    def of(cls, name: "str | Dataflow") -> "Dataflow":
        """From a config name ('weight_stationary') or SCALE-Sim's short one ('ws')."""
        if isinstance(name, Dataflow):
            return name
        try:
            return _DATAFLOW_BY_NAME[name]   # called per layer and point: a lookup, not a scan of the members
        except (KeyError, TypeError):
            raise ValueError(f"unknown dataflow {name!r}") from None

    @property
    def short(self) -> str:
        return self.name.lower()


_DATAFLOW_BY_NAME = {name: df for df in Dataflow for name in (df.value, df.short)}


# --- compute: SCALE-Sim's stall-free cycles ---------------------------------------------------------
def gemm_dims(k: int, n: int, p: int, dataflow: str | Dataflow) -> tuple[int, int, int]:
    """(Sr, Sc, T): what maps to array rows, to array columns, and what streams in time (SCALE-Sim)."""
    df = Dataflow.of(dataflow)
    if df is Dataflow.WS:
        return k, n, p
    if df is Dataflow.OS:
        return p, n, k
    return k, p, n


def num_folds(sr: int, sc: int, rows: int, cols: int) -> int:
    """How many array-sized tiles the (Sr, Sc) spatial plane is cut into."""
    return math.ceil(sr / rows) * math.ceil(sc / cols)


def fold_cycles(rows: int, cols: int, t: int, dataflow: str | Dataflow, os_formula: OsFormula = "scalesim") -> int:
    """Cycles of one fold. ws/is: load the stationary tile (rows), skew in (rows), drain (cols), stream T.

    os: SCALE-Sim 3.0.0 counts `rows + cols + T - 2`; its paper (and its maintainers, as a bug) say
    `2*rows + cols + T - 2`. `os_formula="scalesim"` (default) matches the tool, "paper" the paper.
    """
    if Dataflow.of(dataflow) is Dataflow.OS and os_formula == "scalesim":
        return rows + cols + t - 2
    if os_formula not in ("scalesim", "paper"):
        raise ValueError(f"os_formula must be 'scalesim' or 'paper', got {os_formula!r}")
    return 2 * rows + cols + t - 2


def compute_cycles(k: int, n: int, p: int, rows: int, cols: int, dataflow: str | Dataflow,
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


def skip_candidate(shape: LayerShape, hw: Accelerator) -> SkipPlan | None:
    """The compressed schedule, or None when skip cannot drop anything (gate, is, no weights known, no
    K index zero across a whole fold). A fold keeps at least one K index (an all-zero fold still runs)."""
    if hw.pe.zero_weights != "skip" or Dataflow.of(hw.array.dataflow) is Dataflow.IS or shape.nonzero is None:
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


def fold_sizes(total: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct fold sizes of `total` cut into `size` pieces, with their multiplicities."""
    full, rest = divmod(total, size)
    sizes = [size] * (full > 0) + [rest] * (rest > 0)
    counts = [full] * (full > 0) + [1] * (rest > 0)
    return np.array(sizes, dtype=np.int64), np.array(counts, dtype=np.int64)


def group_index(shape: LayerShape, kept: np.ndarray | None = None) -> np.ndarray:
    """The FGQ group (alpha column) of every position in the stepped K order (all of K, or the `kept` indices
    with skip). Groups and the K order come from the layer's group layout (tersim.quantize.layout; channel:
    K runs (ky, kx) outer, input channel inner, groups are runs of `group_size` channels restarting at every
    kernel position, int8 layers one group per kernel position; kernel: runs of `group_size` of the flattened
    filter). The one place that says which K index belongs to which group."""
    seg = _k_group_index(shape.cin_per_group, shape.kernel_h, shape.kernel_w, shape.group_size, shape.group_layout)
    return seg if kept is None else seg[np.asarray(kept, dtype=np.int64)]


@functools.lru_cache(maxsize=1024)
def _k_group_index(cin_g: int, kh: int, kw: int, group_size: int, group_layout: str) -> np.ndarray:
    """k_group_index, once per layer geometry (a network repeats them, a sweep times them per point); read-only
    because every caller shares the array."""
    seg = k_group_index(cin_g, kh, kw, group_size, group_layout)
    seg.flags.writeable = False
    return seg


def group_ends(shape: LayerShape, kept: np.ndarray | None = None) -> np.ndarray:
    """Positions in the stepped K order (all of K, or the `kept` indices with skip) whose PE completes an
    FGQ group: there the group's exact partial sum leaves the adder chain for a group-scaling multiplier.
    A group whose indices were all dropped by skip is gone with its multiply (its sum would be 0). With two
    scales every end sends two products. Dense (no `kept`): a shared read-only array."""
    if kept is None:
        return _dense_group_ends(shape.cin_per_group, shape.kernel_h, shape.kernel_w, shape.group_size,
                                 shape.group_layout)
    return _segment_ends(group_index(shape, kept))


def _segment_ends(seg: np.ndarray) -> np.ndarray:
    """The last position of every run of equal group indices."""
    return np.flatnonzero(np.append(seg[1:] != seg[:-1], True))


@functools.lru_cache(maxsize=1024)
def _dense_group_ends(cin_g: int, kh: int, kw: int, group_size: int, group_layout: str) -> np.ndarray:
    """group_ends of all of K, once per layer geometry (timed per layer and per sweep point)."""
    ends = _segment_ends(_k_group_index(cin_g, kh, kw, group_size, group_layout))
    ends.flags.writeable = False
    return ends


def group_end_mask(shape: LayerShape, kept: np.ndarray | None = None) -> np.ndarray:
    """`group_ends` as a boolean mask over the stepped K positions (what the Numba kernels take)."""
    mask = np.zeros(shape.gemm_k if kept is None else len(kept), np.bool_)
    mask[group_ends(shape, kept)] = True
    return mask


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


def unit_queue_stall(arrivals: np.ndarray, last: int, rate: int) -> int:
    """`queue_stall` of items that each arrive in one cycle (width 1), given as `arrivals[t]` = items arriving
    at cycle t: the same Lindley maximum over the same cycles (each arrival cycle and the one after it), the
    items at or after t0 a suffix sum, with no per-item arrays (an os fold has one item per PE and group end)."""
    present = np.flatnonzero(arrivals)
    if present.size == 0:
        return 0
    at_or_after = np.append(np.cumsum(arrivals[::-1])[::-1], 0)
    t0 = np.concatenate((present, present + 1))
    backlog = int(np.max(at_or_after[t0] - rate * (last - t0 + 1)))
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
class FoldClass:
    """Column folds that step alike: their group ends, stepped K, columns used, and how many there are."""

    ends: np.ndarray
    k: int
    cols_used: int
    count: int


def fold_classes(shape: LayerShape, hw: Accelerator, plan: SkipPlan | None = None) -> list[FoldClass]:
    """Dense: one class per distinct column-fold width (times the conv groups); skip: one per fold."""
    cols, df = hw.array.cols, hw.array.dataflow
    if plan is None:
        ends, k = group_ends(shape), shape.gemm_k
        sc = gemm_dims(k, shape.gemm_n, shape.gemm_p, df)[1]
        return [FoldClass(ends, k, int(cu), int(cc) * shape.groups) for cu, cc in zip(*fold_sizes(sc, cols))]
    return [FoldClass(group_ends(shape, kept), kept.size, min(cols, shape.gemm_n - f * cols), 1)
            for _, f, kept in plan.folds()]


def group_scale(shape: LayerShape, hw: Accelerator, t_tile: int, classes: list[FoldClass]) -> tuple[int, int]:
    """(group multiplies performed, stall cycles) of the whole layer.

    Every group's exact partial sum is multiplied once by its alpha; a group cut by a row-fold boundary
    carries its raw partial sum into the next fold (the column's top psum input), so it still takes one
    multiply and the accumulation order stays the numerics contract's. The partial sums queue in a FIFO
    per column (per_column: multipliers/cols each) or one FIFO (shared); the fold ends when the array
    is done and the FIFO is empty (`_fold_stall`). per_pe never stalls: a PE finishes at most one group
    per cycle (two scales: per_pe means two multipliers per PE, counted in the area; every group end sends
    two products). Arrivals of one fold, stream cycle 0 = first streamed element at row 0:
      ws/is (K on rows): group end at row e of the window: one sum per cycle in [e + c, e + c + T_tile)
                         in column c (T_tile = the P tile (ws) / N tile (is) the fold streams);
      os (K in time):    PE (r, c) ends group e at cycle e + r + c (one item).
    The stream phase lasts T + rows + cols - 2 cycles.
    """
    rows, cols, df = hw.array.rows, hw.array.cols, Dataflow.of(hw.array.dataflow)
    placement, multipliers = hw.group_scaling.placement, hw.group_scaling.multipliers
    sr, _, t = gemm_dims(shape.gemm_k, shape.gemm_n, shape.gemm_p, df)
    # A network repeats layer shapes (and a sweep repeats them per point): the result is a function of these.
    key = (rows, cols, df, placement, multipliers, sr, t, t_tile, shape.scales,
           tuple((fc.ends.dtype.str, fc.ends.tobytes(), fc.k, fc.cols_used, fc.count) for fc in classes))
    if key not in _GROUP_SCALE_MEMO:
        if len(_GROUP_SCALE_MEMO) >= GROUP_SCALE_MEMO_SIZE:
            _GROUP_SCALE_MEMO.clear()
        _GROUP_SCALE_MEMO[key] = _group_scale(rows, cols, df, placement, multipliers, sr, t, t_tile, shape.scales,
                                                  classes)
    return _GROUP_SCALE_MEMO[key]


GROUP_SCALE_MEMO_SIZE = 4096
_GROUP_SCALE_MEMO: dict[tuple, tuple[int, int]] = {}


def _group_scale(rows: int, cols: int, df: Dataflow, placement: str, multipliers: int, sr: int, t: int,
                 t_tile: int, scales: int, classes: list[FoldClass]) -> tuple[int, int]:
    outputs_per_column = sr if df is Dataflow.OS else t          # os: pixels on rows; ws/is: the streamed dimension
    mults = sum(fc.ends.size * fc.cols_used * outputs_per_column * fc.count for fc in classes) * scales
    if placement == "per_pe":
        return int(mults), 0
    per_column = placement == "per_column"
    rate = multipliers // cols if per_column else multipliers
    stall = 0
    for fc in classes:
        ends, cu = np.repeat(fc.ends, scales), fc.cols_used    # two scales: two items per group end
        if df is Dataflow.OS:
            last = fc.k + rows + cols - 3
            ends_per_cycle = np.bincount(ends)   # two scales: two items per group end
            for ru, rc in zip(*fold_sizes(sr, rows)):
                if ends.size * ru * (1 if per_column else cols) <= rate:
                    continue  # never more arrivals per cycle than multipliers
                # PE (r, c) ends group e at cycle e + r + c: the arrivals per cycle of column 0 (the ends shifted
                # by every row) and, shared, of all columns (shifted again by every column)
                column0 = np.convolve(ends_per_cycle, np.ones(int(ru), np.int64))
                if per_column:
                    stall += rc * fc.count * unit_queue_stall(column0, last - (cu - 1), rate)
                else:
                    stall += rc * fc.count * unit_queue_stall(np.convolve(column0, np.ones(cu, np.int64)), last, rate)
            continue
        # row fold j steps K indices [j * rows, (j + 1) * rows): its group ends per row, one fold per table row;
        # folds with the same ends stall alike, so each distinct one is queued once, times its count
        folds = len(range(rows, fc.k, rows)) + 1
        ends_per_row = np.bincount(ends, minlength=folds * rows).reshape(folds, rows)
        for key, wc in collections.Counter(ends_per_row.view(np.dtype((np.void, rows * 8))).ravel().tolist()).items():
            w = np.repeat(np.arange(rows), np.frombuffer(key, np.int64))   # the fold's group-end rows, in order
            if w.size * (1 if per_column else cols) <= rate:
                continue
            for tn, tc in zip(*fold_sizes(t, t_tile)):
                stall += wc * tc * fc.count * _fold_stall(w, tn, tn + rows + cols - 3, cu, rate, per_column)
    return int(mults), int(stall)


@dataclass(frozen=True)
class ArrayCycles:
    """What the PE array itself does in one layer: from the closed forms here, or counted by stepping the
    array cycle by cycle (tersim.engine.cycle_engine). `compute` is SCALE-Sim's stall-free count."""

    compute: int
    group_stall: int
    tile_reload: int
    group_mults: int


def reload_cycles(t_tiles: int, folds: int, rows: int, cols: int, dataflow: str | Dataflow) -> int:
    """ws/is: each extra T tile re-runs every fold's load, fill and drain (2*rows + cols - 2 cycles)."""
    return 0 if Dataflow.of(dataflow) is Dataflow.OS else (t_tiles - 1) * folds * (2 * rows + cols - 2)


def array_cycles(shape: LayerShape, hw: Accelerator, classes: list[FoldClass], os_formula: OsFormula, t_tile: int,
                 t_tiles: int) -> ArrayCycles:
    """The closed forms: compute (SCALE-Sim), group-scale stalls, tile reloads, group multiplies.

    Dense layers give exactly `compute_cycles` (SCALE-Sim's count); with skip every column fold has its
    own K: ws/is step ceil(K_fold / rows) row folds of the same length, os one fold per row fold of
    rows + cols + K_fold - 2 cycles."""
    rows, cols, df = hw.array.rows, hw.array.cols, hw.array.dataflow
    sr, _, t = gemm_dims(shape.gemm_k, shape.gemm_n, shape.gemm_p, df)
    if Dataflow.of(df) is Dataflow.OS:
        folds = 0
        stepped = sum(fc.count * math.ceil(sr / rows) * fold_cycles(rows, cols, fc.k, df, os_formula) for fc in classes)
    else:
        folds = sum(fc.count * math.ceil(fc.k / rows) for fc in classes)
        stepped = folds * fold_cycles(rows, cols, t, df, os_formula)
    group_mults, group_stall = group_scale(shape, hw, t_tile, classes)
    return ArrayCycles(stepped - 1, group_stall, reload_cycles(t_tiles, folds, rows, cols, df), group_mults)


