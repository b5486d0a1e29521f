"""Cycle-stepped, data-carrying PE array (Numba). tersim/engine/cycle_engine.py prepares the operands.

One GEMM (K reduction, an operand streamed in time, one laid across the columns) runs fold by fold on a
rows x cols array; every cycle every PE register is updated.

Register files are flat arrays of lines, one line per PE row, plus one more line where values enter from
the top. Every cycle is one pass over the flat arrays; a value moves one row down by reading the slot one
line up. The passes index with unsigned offsets and create no array views, so they vectorise and pay no
reference counting per cycle (see reports/cycle_engine.txt for the rate).

* ws / is (`run_stream_gemm`): K on rows. The stationary tile (weights for ws, activations for is) is
  shifted in from the top, one row per cycle (`rows` load cycles: nothing computes, so `load_stationary`
  writes the state they leave and counts them). ws steps up to MAX_SEGMENTS column folds of one T tile
  side by side, interleaved in one register line (lane c * segments + m: column c of segment m), line 0
  the partial sums entering from the top (`stream_fold`). Then the streamed operand enters at the left,
  row r delayed by r cycles (skew), and moves one column right per cycle, so PE (r, c) meets element
  tau - r - c at cycle tau: each fold's operands are laid out once in that order (`_operand_table`) and a
  cycle reads one contiguous block per row instead of moving every operand register. Partial sums move
  one row down per cycle. A PE adds `stationary * streamed` to the partial sum from above
  (ternary: +x, -x or a gated 0). The PE at the last row of an FGQ group sends the exact group sum to
  a group-scaling multiplier instead of down (its register is cleared, so the PE below starts from 0);
  the bottom row's unfinished group sum leaves the array and re-enters at the top in the next row fold
  (carry), so every group is multiplied once and the accumulator sees the numerics contract's order.
  Stream phase: T + rows + cols - 2 cycles (fill, T, drain).
* os (`run_os_gemm`): pixels on rows, filters on columns, K in time: activations move right, weights
  move down (both skewed), every PE keeps its own partial sum and accumulator; at a group's last k the
  PE's sum is scaled into its accumulator and restarts from 0. Its lines have cols + 1 slots: slot 0 a
  row's activation port, slot 1 + c the PE in column c (a value moves one column right by reading slot
  j - 1); port slots hold no PE, so what they compute is never read.

Group scaling: psum * alpha then one clamp/wrap step of the accumulator (`_keep`), counted as an overflow
event when the exact value is out of range. ws/is skip that step when a bound on the operands shows that no
value can leave the range (`sums_stay_in_range`): it would change nothing and count nothing. Accumulators of
ws/is live in a skewed buffer acc[q, c] (q = time index + c): the sums a row finishes in one cycle fill one
contiguous line of it. Bubbles carry zeros, so slots outside the fold stay 0 and never overflow.

The multiplier FIFOs (per column or shared) are modelled by their occupancy: arrivals go in, `rate`
items leave per cycle; a fold ends when the array is done and the FIFOs are empty (the extra cycles are
group-scale stalls). When no cycle can bring more items than the multipliers take (`_may_stall` is
false), every occupancy stays 0 and is not stepped.

The same kernels run the FP32 baseline on float32 data (no clamping, no FIFO).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import get_num_threads, njit, prange, types
from numba.extending import overload

from tersim.kernels.common import max_abs

# The counters a GEMM kernel returns (one int64 each, at these indices); `GemmCounters.of` names them.
(STEPPED, LOAD, STREAM, FIRST_TILE_OVERHEAD, RELOAD_OVERHEAD, GROUP_STALL, OVERFLOW_EVENTS, GROUP_SUMS,
 N_COUNTERS) = range(9)


class GemmCounters(NamedTuple):
    """What the array did in one or more GEMMs, counted cycle by cycle."""

    stepped: int               # every cycle stepped
    load: int                  # cycles loading stationary tiles (ws/is)
    stream: int                # stream-phase cycles (fill, stream, drain)
    first_tile_overhead: int   # load/fill/drain cycles of each fold's first T tile
    reload_overhead: int       # load/fill/drain cycles of every later T tile (output buffer too small)
    group_stall: int           # cycles waiting for the group-scaling FIFOs to empty
    overflow_events: int       # accumulator adds out of range
    group_sums: int            # group partial sums scaled by an alpha (group multiplies)

    @classmethod
    def of(cls, counters: np.ndarray) -> "GemmCounters":
        """From a kernel's (or a sum of kernels') counter array."""
        return cls(*(int(v) for v in counters))


QUEUE_NONE, QUEUE_PER_COLUMN, QUEUE_SHARED = 0, 1, 2   # per_pe never stalls: QUEUE_NONE
MAX_SEGMENTS = 4   # ws: column folds of one T tile stepped side by side (stream_fold)
U = np.uint64   # per-cycle loops index with unsigned offsets: no negative-index check (so they vectorise) and no
                # array views (each costs two atomic reference-count updates, measured at a third of the time)


def _keep(v, lo, hi, wrap):
    """The accumulator's overflow rule: saturate to [lo, hi] or wrap modulo 2**acc_bits (floats: none)."""


@overload(_keep, inline="always")
def _keep_impl(v, lo, hi, wrap):
    if isinstance(v, types.Float):
        return lambda v, lo, hi, wrap: v

    def impl(v, lo, hi, wrap):
        if wrap:
            return ((v - lo) & (hi - lo)) + lo
        return min(max(v, lo), hi)
    return impl


PACK_SHIFT = 31   # two scales: a partial sum register holds P + M * 2**31 (see _group_product)
PACK_HALF = 2**30


def pack_two_scale_codes(codes: np.ndarray) -> np.ndarray:
    """Two scales per group: the stationary/streamed weight a PE multiplies by, int64: +1 -> 1, -1 -> 2**31, 0 -> 0.

    One partial-sum register then carries both sums of the group, P (inputs under +1 codes) in the low part and
    M (inputs under -1 codes) times 2**31, exactly as long as |P| < 2**30 and |M| < 2**31: two adder chains in
    one register, so the stepping (moves, carries across folds) is the one-scale array's."""
    c = np.asarray(codes)
    return np.where(c > 0, 1, np.where(c < 0, np.int64(1) << PACK_SHIFT, 0)).astype(np.int64)


def narrow_scales(alpha: np.ndarray | None) -> np.ndarray | None:
    """Integer alphas as int32 when every one fits (else unchanged; floats and None too): a group product is
    then a 32 x 32 -> 64-bit multiply (the kernels widen both factors to int64 first, so the products are the
    same), which vectorises; a 64 x 64-bit one does not as well."""
    if alpha is None or alpha.dtype.kind not in "iu" or alpha.size == 0:
        return alpha
    if alpha.min() >= np.iinfo(np.int32).min and alpha.max() <= np.iinfo(np.int32).max:
        return np.ascontiguousarray(alpha, np.int32)
    return alpha


def _group_product(s, a, neg_scale, i):
    """A finished group's product: psum * alpha (one scale, neg_scale None), or P * alpha+ - M * alpha- from a
    packed sum s = P + M * 2**31 (two scales, alpha- = neg_scale[i])."""


@overload(_group_product, inline="always")
def _group_product_impl(s, a, neg_scale, i):
    if neg_scale is None or isinstance(neg_scale, types.NoneType):
        return lambda s, a, neg_scale, i: s * a

    def impl(s, a, neg_scale, i):
        pos = ((s + PACK_HALF) & (2 * PACK_HALF - 1)) - PACK_HALF
        neg = (s - pos) >> PACK_SHIFT
        return pos * a - neg * neg_scale[i]
    return impl


def _scale_count(neg_scale):
    """Multiplies per group: 1 without alpha- (None), 2 with it."""


@overload(_scale_count, inline="always")
def _scale_count_impl(neg_scale):
    if neg_scale is None or isinstance(neg_scale, types.NoneType):
        return lambda neg_scale: 1
    return lambda neg_scale: 2


def _flat_or_none(a):
    """a.reshape(-1), None stays None."""


@overload(_flat_or_none, inline="always")
def _flat_or_none_impl(a):
    if a is None or isinstance(a, types.NoneType):
        return lambda a: None
    return lambda a: a.reshape(-1)


def _zeros_like_if(flag, a):
    """np.zeros_like(a) when flag (alpha-) is an array, None when it is None."""


@overload(_zeros_like_if, inline="always")
def _zeros_like_if_impl(flag, a):
    if flag is None or isinstance(flag, types.NoneType):
        return lambda flag, a: None
    return lambda flag, a: np.zeros_like(a)


@njit(cache=True)
def _may_stall(most_per_column, lanes, rate, kind):
    """Can one cycle bring a FIFO more items than its `rate` multipliers take? (else it stays empty)"""
    if kind == QUEUE_PER_COLUMN:
        return most_per_column > rate
    if kind == QUEUE_SHARED:
        return most_per_column * lanes > rate
    return False


@njit(cache=True)
def _queue_drain(occ, rate):
    """Cycles the multipliers need to empty the FIFOs after the array's last cycle; resets them."""
    worst = 0
    for c in range(occ.size):
        worst = max(worst, occ[c])
        occ[c] = 0
    return (worst + rate - 1) // rate


@njit(cache=True)
def _enqueue(occ, arrivals, n_lanes, rate, kind):
    """One cycle of the group-scaling FIFOs: arrivals[c] items of column c go in, up to `rate` per FIFO
    go to the multipliers."""
    if kind == QUEUE_PER_COLUMN:
        for c in range(n_lanes):
            occ[c] = max(occ[c] + arrivals[c] - rate, 0)
    else:
        total = 0
        for c in range(n_lanes):
            total += arrivals[c]
        occ[0] = max(occ[0] + total - rate, 0)


@njit(cache=True)
def load_stationary(reg, src, s0, su, k0, ku, cols):
    """Load the tiles src[s0[m] + c, k0 + r] (c < su[m]) into PE (r, c) of segment m; returns the load cycles.
    Line r of `reg` is PE row r, lane c * segments + m its column c of segment m (module docstring).

    The array shifts a tile in from the top, one row per cycle (`rows` cycles: the row entering at step i
    ends at row rows - 1 - i). Nothing is computed while it does, so the registers are written in the state
    those cycles leave them in (the shifting itself is tests/serial_systolic.py's) and the cycles are counted."""
    segments = s0.size
    line = cols * segments
    rows = reg.size // line
    for r in range(rows):
        for c in range(cols):
            for m in range(segments):
                reg[r * line + c * segments + m] = src[s0[m] + c, k0 + r] if (c < su[m] and r < ku) else 0
    return rows


@njit(cache=True)
def _operand_table(table, src, k0, ku, t0, tn, n_cycles, segments):
    """The streamed operand of one fold as every PE meets it: table[r, x * segments + m] = src[k0 + r, t0 + u]
    with u = n_cycles - 1 - x - r, the same for every segment m, zero where u is outside [0, tn) or r >= ku.

    Row r's port delays the stream by r cycles and each column passes it one PE right per cycle, so PE (r, c)
    meets element u = tau - c - r at cycle tau: x = n_cycles - 1 - tau + c. One cycle's row reads one
    contiguous block of the table, its lanes in the register line's order (`stream_fold`)."""
    table[:] = 0
    for r in range(ku):
        for u in range(tn):
            x = n_cycles - 1 - u - r
            v = src[k0 + r, t0 + u]
            for m in range(segments):
                table[r, x * segments + m] = v


@njit(cache=True)
def stream_fold(stat, table, tn, su, end_rows, scale, n_in_time, acc, n_slots, carry_in, carry_out, ps, nps, occ,
                arrivals, rate, kind, lo, hi, wrap, scale_neg=None, in_range=False):
    """The stream phase of one ws/is fold (tn + rows + cols - 2 cycles) on a loaded stationary tile.

    stat (rows lines), ps / nps (partial sums, this and next cycle; rows + 1 lines, line 0 the sums entering
    from the top): flat register files (module docstring) whose lines hold `segments` arrays interleaved
    (lane c * segments + m: column c of segment m), independent column folds of the same T tile and row fold,
    stepped in the same cycles so that every per-cycle loop runs over all of them at once. Their streamed
    operand is the same: table (`_operand_table`) holds what each row's PEs meet at each cycle. end_rows: rows
    that end a group; their sums go to the multipliers and the row is cleared, so the row below starts from 0.
    scale (rows, line): alpha at [r, c * segments + m] (ws); is (one segment): alpha of time index
    n_slots - u at [r, u]. acc (>= n_slots, line) and carry_* (>= n_slots, line) skewed: lane c * segments + m
    of line q holds column c of segment m at time index q - c. scale_neg: alpha- laid out like scale (two
    scales: every group end sends two products to the multipliers), None for one scale. su: the columns of
    the one segment's tile, for the FIFOs (only a single segment may stall). in_range: no accumulator can
    leave [lo, hi] (`sums_stay_in_range`), so a group end only adds its product: clamping or wrapping would
    leave every value as it is and count no event.
    Returns (cycles, overflow events).
    """
    n_scale = _scale_count(scale_neg)
    scn = _flat_or_none(scale_neg)
    line = acc.shape[1]
    rows = stat.size // line
    cols = n_slots - tn + 1
    segments = line // cols
    n_cycles = tn + rows + cols - 2
    events = 0
    queue = _may_stall(end_rows.size * n_scale, su, rate, kind)
    accf, cin, cout, sc, opf = acc.reshape(-1), carry_in.reshape(-1), carry_out.reshape(-1), scale.reshape(-1), \
        table.reshape(-1)
    L, R, X = U(line), U(rows), U(table.shape[1])
    for tau in range(n_cycles):
        if tau < n_slots:                         # partial sums entering from the top: the carry
            src = U(tau) * L
            for c in range(L):
                ps[c] = cin[src + c]
        else:
            for c in range(L):
                ps[c] = 0
        x0 = U(n_cycles - 1 - tau) * U(segments)
        for r in range(R):                        # every PE of row r: its operand, the sum from one row up
            row, op = r * L, r * X + x0
            for i in range(L):
                nps[row + L + i] = ps[row + i] + stat[row + i] * opf[op + i]
        for e in range(end_rows.size):            # group sums leave their rows for the multipliers
            r = end_rows[e]
            q = tau - r
            row = U(r + 1) * L
            if 0 <= q < n_slots:                  # is: lane c holds time index q - c; ws: one alpha per column
                dst = U(q) * L
                alpha = U(r * scale.shape[1] + (n_slots - q if n_in_time else 0))
                if in_range:
                    for c in range(L):
                        accf[dst + c] += _group_product(nps[row + c], sc[alpha + c], scn, alpha + c)
                        nps[row + c] = 0
                else:
                    for c in range(L):
                        v = accf[dst + c] + _group_product(nps[row + c], sc[alpha + c], scn, alpha + c)
                        events += (v < lo) | (v > hi)
                        accf[dst + c] = _keep(v, lo, hi, wrap)
                        nps[row + c] = 0
            else:
                for c in range(L):
                    nps[row + c] = 0
        if queue:                                 # lanes c of row r hold a real element: 0 <= tau - r - c < tn
            arrivals[:] = 0
            for e in range(end_rows.size):
                r = end_rows[e]
                for c in range(max(0, tau - r - tn + 1), min(su - 1, tau - r) + 1):
                    arrivals[c] += n_scale
            _enqueue(occ, arrivals, su, rate, kind)
        q = tau - rows + 1
        if 0 <= q < n_slots:                      # the bottom row's unfinished sums: the next fold's carry
            dst, bottom = U(q) * L, R * L
            for c in range(L):
                cout[dst + c] = nps[bottom + c]
        ps, nps = nps, ps
    return n_cycles, events


def sums_stay_in_range(stat_src: np.ndarray, strm: np.ndarray, ends_k: np.ndarray, alpha: np.ndarray,
                       bias: np.ndarray, lo, hi, alpha_neg: np.ndarray | None = None) -> bool:
    """Does every accumulator of this GEMM stay in [lo, hi] after every step, whatever the operands' order?

    |bias| + (group ends) x (longest group) x max|stationary| x max|streamed| x max|alpha| (exact integers)
    bounds every value an accumulator takes. Below half of min(hi, -lo, 2**31), every clamp or wrap step is the
    identity with room to spare and counts no event, and the values fit int32. Integer operands, scales and
    bias, and one scale only (a two-scale product subtracts; floats are not clamped, and max_abs would truncate
    a float scale, so the bound would not hold)."""
    if alpha_neg is not None or any(a.dtype.kind not in "iu" for a in (stat_src, strm, alpha, bias)):
        return False
    ends = np.flatnonzero(ends_k)
    longest = int(np.diff(ends, prepend=-1).max()) if ends.size else 0   # a tail after the last end is never scaled
    bound = max_abs(bias) + ends.size * longest * max_abs(stat_src) * max_abs(strm) * max_abs(alpha)
    return 2 * bound < min(int(hi), -int(lo), 2**31)


@njit(cache=True)
def _init_acc(acc, bias, n0, su, tn, n_in_time, lo, hi, wrap):
    """Skewed accumulators acc[q, c * segments + m] of the segments (column folds starting at filter n0[m]
    (ws) or of time tile n0[0] (is)): bias (one clamp/wrap step) at real slots (time index q - c in [0, tn),
    c < su[m]), 0 elsewhere."""
    events = 0
    acc[:] = 0
    for m in range(su.size):
        for c in range(su[m]):
            for t in range(tn):
                b = bias[n0[m] + t] if n_in_time else bias[n0[m] + c]
                events += (b < lo) | (b > hi)
                acc[t + c, c * su.size + m] = _keep(b, lo, hi, wrap)
    return events


@njit(cache=True)
def _fold_scales(scale, alpha, gidx, k0, ku, s0, su, t0, tn, n_slots, n_in_time):
    """Alpha of each row's group for this fold: per column of each segment m (ws: [r, c * segments + m]) or
    per time index, reversed (is, one segment: time t at [r, n_slots - t])."""
    scale[:] = 0
    for r in range(ku):
        g = gidx[k0 + r]
        if n_in_time:
            for t in range(tn):
                scale[r, n_slots - t] = alpha[t0 + t, g]
        else:
            for m in range(su.size):
                for c in range(su[m]):
                    scale[r, c * su.size + m] = alpha[s0[m] + c, g]


@njit(cache=True)
def _skew_ports(ports, src, i0, n_i, j0, n_j, slot0):
    """ports[j + i, slot0 + i] = src[i0 + i, j0 + j], zero elsewhere: what each port line i (a row's or a
    column's input) sees at each cycle, delayed by i cycles (the skew)."""
    ports[:] = 0
    for i in range(n_i):
        for j in range(n_j):
            ports[j + i, slot0 + i] = src[i0 + i, j0 + j]


@njit(cache=True)
def _stream_tile(stat_src, strm, ends_k, gidx, alpha, bias, n_in_time, rows, lo, hi, wrap, kind, rate, out, alpha_neg,
                 s0, su, t0, tn, cols, reg, ps, nps, table, acc, carry_in, carry_out, scale, scale_neg, occ, arrivals,
                 stats, in_range):
    """Column folds s0[m] (su[m] columns; su 0: an idle segment) x one T tile of run_stream_gemm, side by side
    (stream_fold's segments), every row fold, on the caller's scratch (registers, FIFOs, accumulators: any
    contents, every array is reset or overwritten before it is read). A tile starts from the bias, zero
    carries and empty FIFOs and leaves the FIFOs empty, so tiles are independent. Writes
    out[t0:t0 + tn, s0[m]:s0[m] + su[m]] and adds each fold's counters to stats."""
    n_scale = _scale_count(alpha_neg)
    K = stat_src.shape[1]
    n_slots = tn + cols - 1
    n_cycles = tn + rows + cols - 2
    real = 0
    for m in range(su.size):
        real += su[m] > 0
    stats[OVERFLOW_EVENTS] += _init_acc(acc, bias, np.full(1, t0) if n_in_time else s0, su, tn, n_in_time, lo, hi,
                                        wrap)
    carry_in[:] = 0
    for k0 in range(0, K, rows):
        ku = min(rows, K - k0)
        end_rows = np.flatnonzero(ends_k[k0:k0 + ku])
        _fold_scales(scale, alpha, gidx, k0, ku, s0, su, t0, tn, n_slots, n_in_time)
        if alpha_neg is not None:
            _fold_scales(scale_neg, alpha_neg, gidx, k0, ku, s0, su, t0, tn, n_slots, n_in_time)
        _operand_table(table, strm, k0, ku, t0, tn, n_cycles, su.size)
        load = load_stationary(reg, stat_src, s0, su, k0, ku, cols)
        ps[:] = 0
        stream, ev = stream_fold(reg, table, tn, su[0], end_rows, scale, n_in_time, acc, n_slots, carry_in,
                                 carry_out, ps, nps, occ, arrivals, rate, kind, lo, hi, wrap, scale_neg, in_range)
        stall = _queue_drain(occ, rate) if kind != QUEUE_NONE else 0
        carry_in, carry_out = carry_out, carry_in
        stats[STEPPED] += (load + stream) * real
        stats[LOAD] += load * real
        stats[STREAM] += stream * real
        stats[FIRST_TILE_OVERHEAD if t0 == 0 else RELOAD_OVERHEAD] += (load + stream - tn) * real
        stats[GROUP_STALL] += stall
        stats[OVERFLOW_EVENTS] += ev
        for m in range(su.size):                  # every end row scales one sum per real lane and time
            stats[GROUP_SUMS] += end_rows.size * su[m] * tn * n_scale
    for m in range(su.size):
        for c in range(su[m]):
            for t in range(tn):
                out[t0 + t, s0[m] + c] = acc[t + c, c * su.size + m]


@njit(cache=True)
def _segments(ends_k, rows, cols, n_folds, n_tiles, n_in_time, n_scale, rate, kind, threads):
    """How many column folds a worker steps side by side: up to MAX_SEGMENTS while there are still >= 4 items
    (segment groups x T tiles) per thread; 1 for is (its alpha runs along time) and when a FIFO may stall
    (the FIFOs are one segment's)."""
    most = 0
    for k0 in range(0, ends_k.size, rows):
        most = max(most, np.count_nonzero(ends_k[k0:k0 + rows]))
    if n_in_time or _may_stall(most * n_scale, cols, rate, kind):
        return 1
    m = MAX_SEGMENTS
    while m > 1 and (n_folds + m - 1) // m * n_tiles < 4 * threads:
        m //= 2
    return m


def run_stream_gemm(stat_src, strm, ends_k, gidx, alpha, bias, n_in_time, rows, cols, t_tile, lo, hi, wrap,
                    kind, rate, out, psum_proto, alpha_neg=None):
    """ws / is: one GEMM fold by fold (column fold -> T tile -> row fold), every cycle stepped.

    stat_src (S, K) is laid across the columns (ws: weights (N, K); is: im2col activations (P, K)),
    strm (K, T) streams in time (ws: activations; is: weights). alpha (N, groups), bias (N,) are indexed
    by the filter: the column (ws) or the time index (is). out (T, S) receives the accumulators.
    Returns the counters (int64[N_COUNTERS], indexed by STEPPED, LOAD, ...: see GemmCounters).
    alpha_neg (N, groups): alpha- of two scales per group (weights packed by pack_two_scale_codes), or None.

    The (column fold, T tile) pairs share no state (`_stream_tile`); a worker steps a few column folds of one
    T tile side by side (`_segments`), and these items are dealt round-robin to one worker per Numba thread;
    a worker allocates its registers, FIFOs and accumulators once and reuses them for each of its items (no
    allocation per item), and counts into its own row; the rows are summed at the end (integers: the serial
    loop's totals). At one Numba thread (the calling thread's count: Numba's is per thread) the single worker
    runs without a parallel launch and without the GIL (`_stream_gemm_serial`), so callers may step
    independent GEMMs on several Python threads at once.

    When no accumulator can leave [lo, hi] (`sums_stay_in_range`: ResNet-50's 8-bit layers on a 32-bit
    accumulator) a group end only adds its product and the accumulators are int32: the same values and no
    events, and `run resnet50`'s simulate phase 1.10-1.15x faster (reports/cycle_engine.txt).
    """
    in_range = sums_stay_in_range(stat_src, strm, ends_k, alpha, bias, lo, hi, alpha_neg)
    acc_proto = np.zeros(1, np.int32 if in_range else out.dtype)
    threads = get_num_threads()
    if threads == 1:
        return _stream_gemm_serial(stat_src, strm, ends_k, gidx, alpha, bias, n_in_time, rows, cols, t_tile, lo, hi,
                                   wrap, kind, rate, out, psum_proto, acc_proto, in_range, alpha_neg)
    return _stream_gemm_on_workers(stat_src, strm, ends_k, gidx, alpha, bias, n_in_time, rows, cols, t_tile, lo, hi,
                                   wrap, kind, rate, out, psum_proto, acc_proto, in_range, threads, alpha_neg)


@njit(cache=True, nogil=True)
def _stream_items(stat_src, strm, ends_k, rows, cols, t_tile, n_in_time, n_scale, rate, kind, threads):
    """(segments, items) of run_stream_gemm on `threads` workers: column folds side by side per item
    (`_segments`), items = segment groups x T tiles."""
    n_tiles = (strm.shape[1] + t_tile - 1) // t_tile
    n_folds = (stat_src.shape[0] + cols - 1) // cols
    segments = _segments(ends_k, rows, cols, n_folds, n_tiles, n_in_time, n_scale, rate, kind, threads)
    return segments, (n_folds + segments - 1) // segments * n_tiles


@njit(cache=True, nogil=True)
def _stream_worker(stat_src, strm, ends_k, gidx, alpha, bias, n_in_time, rows, cols, t_tile, lo, hi, wrap, kind, rate,
                   out, psum_proto, acc_proto, in_range, alpha_neg, segments, n_items, w, n_workers, stats):
    """Worker w of n_workers: items w, w + n_workers, ... of run_stream_gemm on its own scratch (allocated
    once; accumulators of acc_proto's dtype), counters added to stats."""
    S = stat_src.shape[0]
    T = strm.shape[1]
    tile = min(t_tile, T)
    slots = tile + cols - 1
    n_tiles = (T + t_tile - 1) // t_tile
    line = segments * cols
    reg = np.zeros(rows * line, stat_src.dtype)
    ps = np.zeros((rows + 1) * line, psum_proto.dtype)
    nps = np.zeros((rows + 1) * line, psum_proto.dtype)
    table = np.zeros((rows, (tile + rows + 2 * cols - 3) * segments), strm.dtype)
    acc = np.zeros((slots, line), acc_proto.dtype)
    carry_in = np.zeros((slots, line), psum_proto.dtype)
    carry_out = np.zeros((slots, line), psum_proto.dtype)
    scale = np.zeros((rows, slots + cols if n_in_time else line), alpha.dtype)
    scale_neg = _zeros_like_if(alpha_neg, scale)
    occ = np.zeros(cols if kind == QUEUE_PER_COLUMN else 1, np.int64)
    arrivals = np.zeros(cols, np.int64)
    s0 = np.zeros(segments, np.int64)
    su = np.zeros(segments, np.int64)
    for item in range(w, n_items, n_workers):
        group, t0 = item // n_tiles, item % n_tiles * t_tile
        for m in range(segments):
            s0[m] = min((group * segments + m) * cols, S)
            su[m] = min(cols, S - s0[m])
        _stream_tile(stat_src, strm, ends_k, gidx, alpha, bias, n_in_time, rows, lo, hi, wrap, kind, rate, out,
                     alpha_neg, s0, su, t0, min(t_tile, T - t0), cols, reg, ps, nps, table, acc, carry_in,
                     carry_out, scale, scale_neg, occ, arrivals, stats, in_range)


@njit(cache=True, nogil=True)
def _stream_gemm_serial(stat_src, strm, ends_k, gidx, alpha, bias, n_in_time, rows, cols, t_tile, lo, hi, wrap,
                        kind, rate, out, psum_proto, acc_proto, in_range, alpha_neg=None):
    """run_stream_gemm on one worker: no parallel launch (whose wake-up and barrier cost more than they save
    when the other core is busy) and no GIL held."""
    segments, n_items = _stream_items(stat_src, strm, ends_k, rows, cols, t_tile, n_in_time, _scale_count(alpha_neg),
                                      rate, kind, 1)
    stats = np.zeros(N_COUNTERS, np.int64)
    _stream_worker(stat_src, strm, ends_k, gidx, alpha, bias, n_in_time, rows, cols, t_tile, lo, hi, wrap, kind, rate,
                   out, psum_proto, acc_proto, in_range, alpha_neg, segments, n_items, 0, 1, stats)
    return stats


@njit(cache=True, parallel=True)
def _stream_gemm_on_workers(stat_src, strm, ends_k, gidx, alpha, bias, n_in_time, rows, cols, t_tile, lo, hi, wrap,
                            kind, rate, out, psum_proto, acc_proto, in_range, threads, alpha_neg=None):
    """run_stream_gemm on min(threads, items) workers (threads: Numba's current count, read outside the kernel so
    the kernel stays cacheable)."""
    segments, n_items = _stream_items(stat_src, strm, ends_k, rows, cols, t_tile, n_in_time, _scale_count(alpha_neg),
                                      rate, kind, threads)
    n_workers = min(threads, n_items)
    per_worker = np.zeros((n_workers, N_COUNTERS), np.int64)
    for w in prange(n_workers):
        _stream_worker(stat_src, strm, ends_k, gidx, alpha, bias, n_in_time, rows, cols, t_tile, lo, hi, wrap, kind,
                       rate, out, psum_proto, acc_proto, in_range, alpha_neg, segments, n_items, w, n_workers,
                       per_worker[w])
    stats = np.zeros(N_COUNTERS, np.int64)
    for w in range(n_workers):
        stats += per_worker[w]
    return stats


@njit(cache=True)
def _os_tables(scaled, live, alpha, ends_k, gidx, n0, nu, rows, width):
    """Per column fold: line y, slot 1 + c holds, for k = y - (rows - 1) - c, alpha[n0 + c, group of k] if k
    ends a group (else 0) in `scaled` and 0 if k ends a group (else 1) in `live` (see `os_fold`)."""
    K = ends_k.size
    n_lines = scaled.size // width
    scaled[:] = 0
    live[:] = 1
    for y in range(n_lines):
        for c in range(width - 1):
            k = y - (rows - 1) - c
            if 0 <= k < K and ends_k[k]:
                live[y * width + 1 + c] = 0
                if c < nu:
                    scaled[y * width + 1 + c] = alpha[n0 + c, gidx[k]]


@njit(cache=True)
def os_fold(xports, wports, K, pu, nu, scaled, live, act, nact, wreg, nwreg, ps, acc, ends_prefix, queue, occ,
            arrivals, rate, kind, lo, hi, wrap, scaled_neg=None):
    """The stream phase of one os fold: rows + cols + K - 2 cycles; PE (r, c) meets x[p0 + r, k] and
    w[n0 + c, k] at cycle k + r + c (xports[k + r, r] = x[p0 + r, k], wports[k + c, 1 + c] = w[n0 + c, k]).

    os register files list the PE rows bottom-up: line rows - 1 - r holds PE row r (slot 0 its activation
    port), line `rows` is the weight port line above row 0; weights move one line down (to line - 1),
    activations one slot right. Every PE adds a * w to its sum; at a group's last k it adds sum * alpha to
    its accumulator (one clamp/wrap step) and restarts from 0; elsewhere its alpha and live are 0 and 1,
    which leaves the accumulator as it is. scaled / live (`_os_tables`): the PE at flat slot f reads
    [tau * width + f], so one cycle reads one contiguous block and the next cycle the block after it.
    scaled_neg: alpha- laid out like scaled (two scales), or None. Returns (cycles, overflow events)."""
    n_scale = _scale_count(scaled_neg)
    width = wports.shape[1]
    rows = act.size // width - 1
    cols = width - 1
    n_cycles = rows + cols + K - 2
    events = 0
    W, one, top = U(width), U(1), U(rows * width)
    for tau in range(n_cycles):
        for r in range(rows):                     # activations enter at the left, row r delayed by r
            act[(rows - 1 - r) * width] = xports[tau, r]
        for c in range(width):                    # weights enter at the top, column c delayed by c
            wreg[top + U(c)] = wports[tau, c]
        T = U(tau * width)
        for j in range(top - one):                # every PE (flat slot j + 1)
            a = act[j]
            nact[j + one] = a
            w = wreg[j + one + W]
            nwreg[j + one] = w
            s = ps[j + one] + a * w
            v = acc[j + one] + _group_product(s, scaled[T + j + one], scaled_neg, T + j + one)
            events += (v < lo) | (v > hi)
            acc[j + one] = _keep(v, lo, hi, wrap)
            ps[j + one] = s * live[T + j + one]
        if queue:                                 # column c's rows r < pu that ended k = tau - r - c
            for c in range(nu):
                hi_k, lo_k = min(max(tau - c + 1, 0), K), min(max(tau - c - pu + 1, 0), K)
                arrivals[c] = (ends_prefix[hi_k] - ends_prefix[lo_k]) * n_scale
            _enqueue(occ, arrivals, nu, rate, kind)
        act, nact = nact, act
        wreg, nwreg = nwreg, wreg
    return n_cycles, events


@njit(cache=True, nogil=True)
def run_os_gemm(x, w, ends_k, gidx, alpha, bias, rows, cols, paper, lo, hi, wrap, kind, rate, out, psum_proto,
                alpha_neg=None):
    """os: x (P, K) on rows, w (N, K) on columns, K in time; out (P, N). `paper`: outputs drain down the
    columns, one row per cycle (rows cycles), else they are read out as SCALE-Sim 3.0.0 counts them (free).
    Returns the counters as run_stream_gemm does (no load cycles, no T tiles). alpha_neg: as run_stream_gemm's."""
    n_scale = _scale_count(alpha_neg)
    P, K = x.shape
    N = w.shape[0]
    stats = np.zeros(N_COUNTERS, np.int64)
    width = cols + 1
    n = (rows + 1) * width
    n_cycles = rows + cols + K - 2
    xports = np.zeros((n_cycles, rows), x.dtype)
    wports = np.zeros((n_cycles, width), w.dtype)
    ends_prefix = np.zeros(K + 1, np.int64)
    for k in range(K):
        ends_prefix[k + 1] = ends_prefix[k] + ends_k[k]
    n_ends = ends_prefix[K]
    scaled = np.zeros((n_cycles + rows - 1) * width, alpha.dtype)
    live = np.zeros((n_cycles + rows - 1) * width, np.int8)
    scaled_neg = _zeros_like_if(alpha_neg, scaled)
    act = np.zeros(n, x.dtype)
    nact = np.zeros(n, x.dtype)
    wreg = np.zeros(n, w.dtype)
    nwreg = np.zeros(n, w.dtype)
    ps = np.zeros(n, psum_proto.dtype)
    acc = np.zeros(n, out.dtype)
    occ = np.zeros(cols if kind == QUEUE_PER_COLUMN else 1, np.int64)
    arrivals = np.zeros(cols, np.int64)
    for n0 in range(0, N, cols):
        nu = min(cols, N - n0)
        _os_tables(scaled, live, alpha, ends_k, gidx, n0, nu, rows, width)
        if alpha_neg is not None:
            _os_tables(scaled_neg, live, alpha_neg, ends_k, gidx, n0, nu, rows, width)
        _skew_ports(wports, w, n0, nu, 0, K, 1)     # slot 0 of the weight port line is no column
        for p0 in range(0, P, rows):
            pu = min(rows, P - p0)
            most = 0                              # most group ends among pu consecutive k: one column's arrivals
            for k in range(K):
                most = max(most, ends_prefix[min(k + pu, K)] - ends_prefix[k])
            _skew_ports(xports, x, p0, pu, 0, K, 0)
            act[:] = 0
            wreg[:] = 0
            ps[:] = 0
            acc[:] = 0
            for r in range(pu):
                for c in range(nu):
                    b = bias[n0 + c]
                    stats[OVERFLOW_EVENTS] += (b < lo) | (b > hi)
                    acc[(rows - 1 - r) * width + 1 + c] = _keep(b, lo, hi, wrap)
            stream, ev = os_fold(xports, wports, K, pu, nu, scaled, live, act, nact, wreg, nwreg, ps, acc,
                                 ends_prefix, _may_stall(most * n_scale, nu, rate, kind), occ, arrivals, rate, kind,
                                 lo, hi, wrap, scaled_neg)
            stall = _queue_drain(occ, rate) if kind != QUEUE_NONE else 0
            drain = 0
            if paper:                             # shift the accumulators out of the bottom row (line 0)
                for step in range(rows):
                    rb = rows - 1 - step
                    for c in range(nu):
                        if rb < pu:
                            out[p0 + rb, n0 + c] = acc[1 + c]
                    for j in range(rows * width - width):
                        acc[j] = acc[j + width]
                    drain += 1
            else:
                for r in range(pu):
                    for c in range(nu):
                        out[p0 + r, n0 + c] = acc[(rows - 1 - r) * width + 1 + c]
            stats[STEPPED] += stream + drain
            stats[STREAM] += stream + drain
            stats[FIRST_TILE_OVERHEAD] += stream + drain - K
            stats[GROUP_STALL] += stall
            stats[OVERFLOW_EVENTS] += ev
            stats[GROUP_SUMS] += pu * nu * n_ends * n_scale  # every real PE scales each of its groups once (twice)
    return stats
