"""Cycle-stepped, data-carrying PE array (Numba). tersim/engine/cycle_engine.py prepares the operands.

One GEMM (K reduction, an operand streamed in time, one laid across the columns) runs fold by fold on a
rows x cols array; every cycle every PE register is updated:

* ws / is (`run_stream_gemm`): K on rows. The stationary tile (weights for ws, activations for is) is
  shifted in from the top, one row per cycle (`rows` load cycles). Then the streamed operand enters
  at the left, row r delayed by r cycles (skew), and moves one column right per cycle; partial sums
  move one row down per cycle. A PE adds `stationary * streamed` to the partial sum from above
  (ternary: +x, -x or a gated 0). The PE at the last row of an FGQ group sends the exact group sum to
  the group-scaling FIFO instead of down (the PE below starts from 0); the bottom row's unfinished
  group sum leaves the array and re-enters at the top in the next row fold (carry), so every group is
  multiplied once and the accumulator sees the numerics contract's order. Stream phase:
  T + rows + cols - 2 cycles (fill, T, drain).
* os (`run_os_gemm`): pixels on rows, filters on columns, K in time: activations move right, weights
  move down (both skewed), every PE keeps its own partial sum and accumulator.

Group scaling: psum * alpha then one clamp/wrap step of the accumulator (`_keep`), counted as an overflow
event when the exact value is out of range. The FIFOs (per column or shared) are modelled by their
occupancy: `rate` items leave per cycle from their arrival cycle on; a fold ends when the array is done
and the FIFO is empty (the extra cycles are group-scale stalls). The group sums themselves wait in a FIFO
buffer and the multipliers' psum * alpha + clamp/wrap is applied to them in FIFO order every CHUNK cycles:
a FIFO keeps each output's groups in K order, so the values are those of applying them one by one.

Accumulators live in a skewed buffer acc[q, c] with q = time index + c: all PEs of one row that finish
a group in one cycle write one contiguous row of it, so the inner column loops vectorise. Bubbles carry
zeros, so skewed slots outside the fold stay 0 and never overflow.

The same kernels run the FP32 baseline on float32 data (no clamping, no FIFO).
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

QUEUE_NONE, QUEUE_PER_COLUMN, QUEUE_SHARED = 0, 1, 2   # per_pe never stalls: QUEUE_NONE


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


@njit(cache=True)
def load_stationary(reg, src, s0, su, k0, ku):
    """Shift the tile src[s0 + c, k0 + r] into reg[r, 1 + c] from the top, one row per cycle (column 0
    is the row's input port, no PE); returns the cycles."""
    rows, width = reg.shape
    for step in range(rows):
        for r in range(rows - 1, 0, -1):
            for c in range(width):
                reg[r, c] = reg[r - 1, c]
        kr = rows - 1 - step                       # the row entering now ends at row kr
        for c in range(width - 1):
            reg[0, 1 + c] = src[s0 + c, k0 + kr] if (c < su and kr < ku) else 0
    return rows


@njit(cache=True)
def _queue_step(occ, rate, kind):
    """One cycle of the multipliers: up to `rate` items leave each FIFO."""
    if kind == QUEUE_PER_COLUMN:
        for c in range(occ.size):
            occ[c] = max(occ[c] - rate, 0)
    elif kind == QUEUE_SHARED:
        occ[0] = max(occ[0] - rate, 0)


@njit(cache=True)
def _queue_drain(occ, rate):
    """Cycles the multipliers need to empty the FIFOs after the array's last cycle; resets them."""
    worst = 0
    for c in range(occ.size):
        worst = max(worst, occ[c])
        occ[c] = 0
    return (worst + rate - 1) // rate


CHUNK = 64  # cycles of group sums the FIFO buffers before the multipliers' results are written back


@njit(cache=True)
def _step_pes(act, nact, ps, nps, keep, stat, top, width):
    """One cycle of every PE. Registers are flat rows of `width` = cols + 1: slot 0 of a row is its input
    port (holding this cycle's injected element), slot 1 + c the PE in column c. The streamed operand
    moves one slot right, the partial sum one row down (0 under a group end, `top` into row 0), and each
    PE adds stationary * streamed (port slots have stationary 0)."""
    n = act.size
    left, above = act[:n - width - 1], ps[:n - width]
    a_out, p_out, k, w = nact[width + 1:], nps[width:], keep[width:], stat[width:]
    for i in range(n - width - 1):                # rows 1..
        a = left[i + width]
        a_out[i] = a
        p_out[i + 1] = above[i + 1] * k[i + 1] + w[i + 1] * a
    for c in range(width - 1):                    # row 0
        a = act[c]
        nact[c + 1] = a
        nps[c + 1] = top[c] + stat[c + 1] * a


@njit(cache=True)
def _arrivals(occ, diff, rate, kind, su):
    """One cycle of the group-scaling FIFOs: this cycle's arrivals (diff: +1 at a row's first real lane,
    -1 past its last) go in, up to `rate` items per FIFO go to the multipliers."""
    if kind == QUEUE_PER_COLUMN:
        run = 0
        for c in range(su):
            run += diff[c]
            diff[c] = 0
            occ[c] = max(occ[c] + run - rate, 0)
        diff[su] = 0
    elif kind == QUEUE_SHARED:
        total = 0
        for c in range(su):
            total += diff[c] * (su - c)           # +1 at c_lo, -1 at c_hi + 1: row length c_hi - c_lo + 1
            diff[c] = 0
        diff[su] = 0
        occ[0] = max(occ[0] + total - rate, 0)


@njit(cache=True)
def _multiply_out(acc, fifo, end_rows, scale, tau0, tau1, n_in_time, lo, hi, wrap):
    """The multipliers' arithmetic for the group sums of cycles [tau0, tau1): in FIFO order (earlier rows
    first, so each output gets its groups in K order) psum * alpha, then one clamp/wrap step of the
    accumulator; returns the overflow events. Row r's sum of cycle tau belongs to slot q = tau - r."""
    cols, n_slots = acc.shape
    events = 0
    for e in range(end_rows.size):
        r = end_rows[e]
        q0, q1 = max(tau0 - r, 0), min(tau1 - r, n_slots)
        for c in range(cols):
            if q1 <= q0:
                break
            src = fifo[e, c * CHUNK + q0 + r - tau0:c * CHUNK + q1 + r - tau0]
            dst = acc[c, q0:q1]
            if n_in_time:                         # is: lane c holds time index q - c
                sc = scale[r, q0 + cols - 1 - c:q1 + cols - 1 - c]
                for i in range(dst.size):
                    v = dst[i] + src[i] * sc[i]
                    events += (v < lo) | (v > hi)
                    dst[i] = _keep(v, lo, hi, wrap)
            else:                                 # ws: one alpha per column
                a = scale[r, c]
                for i in range(dst.size):
                    v = dst[i] + src[i] * a
                    events += (v < lo) | (v > hi)
                    dst[i] = _keep(v, lo, hi, wrap)
    return events


@njit(cache=True)
def stream_fold(stat, strm, t0, tn, k0, ku, su, end_rows, keep, last_ends, scale, n_in_time, acc, carry_in,
                carry_out, act, nact, ps, nps, fifo, occ, diff, rate, kind, lo, hi, wrap):
    """The stream phase of one ws/is fold (tn + rows + cols - 2 cycles) on a loaded stationary tile.

    Registers are flat rows of cols + 1 slots (see `_step_pes`): stat, act / nact (this and next
    cycle's streamed operand), ps / nps (partial sums). strm (K, T): row r receives strm[k0 + r, t0 + j] at stream cycle
    j + r. end_rows: rows that end a group; keep[i] = 0 below such a row (and on row 0), else 1;
    last_ends: the bottom row ends a group (nothing to carry). scale: ws (rows, cols) alpha per (row,
    column); is (rows, tn + 2*cols - 2) alpha per (row, time index + cols - 1). acc (cols, tn + cols - 1)
    and carry_* (tn + cols - 1, cols) skewed. fifo (rows, cols * CHUNK): group sums waiting for the multipliers.
    Returns (cycles, overflow events, group sums).
    """
    cols, n_slots = acc.shape
    rows = stat.size // (cols + 1)
    n_cycles = tn + rows + cols - 2
    events = 0
    sums = 0
    zero = np.zeros(cols, carry_in.dtype)
    width = cols + 1
    tau0 = 0
    for tau in range(n_cycles):
        for r in range(rows):                     # the ports: row r's next element, skewed by r cycles
            j = tau - r
            act[r * width] = strm[k0 + r, t0 + j] if (r < ku and 0 <= j < tn) else 0
        _step_pes(act, nact, ps, nps, keep, stat, carry_in[tau] if tau < n_slots else zero, width)
        slot = tau - tau0
        for e in range(end_rows.size):           # group sums leave their rows for the FIFO
            r = end_rows[e]
            for c in range(cols):
                fifo[e, c * CHUNK + slot] = nps[r * width + 1 + c]
            c_lo, c_hi = max(0, tau - r - tn + 1), min(su - 1, tau - r)   # lanes holding a real element
            if c_hi >= c_lo:
                sums += c_hi - c_lo + 1
                diff[c_lo] += 1
                diff[c_hi + 1] -= 1
        _arrivals(occ, diff, rate, kind, su)
        if tau + 1 - tau0 == CHUNK or tau + 1 == n_cycles:
            events += _multiply_out(acc, fifo, end_rows, scale, tau0, tau + 1, n_in_time, lo, hi, wrap)
            tau0 = tau + 1
        q = tau - rows + 1
        if 0 <= q < n_slots:
            if last_ends:
                carry_out[q, :] = 0
            else:
                carry_out[q, :] = nps[(rows - 1) * width + 1:]
        act, nact = nact, act
        ps, nps = nps, ps
    return n_cycles, events, sums


@njit(cache=True)
def _init_acc(acc, bias, n0, su, tn, n_in_time, lo, hi, wrap):
    """Skewed accumulators acc[c, q] of one fold column: bias (one clamp/wrap step) at real slots
    (time index q - c in [0, tn)), 0 elsewhere."""
    cols, n_slots = acc.shape
    events = 0
    acc[:] = 0
    for c in range(su):
        for t in range(tn):
            b = bias[n0 + t] if n_in_time else bias[n0 + c]
            events += (b < lo) | (b > hi)
            acc[c, t + c] = _keep(b, lo, hi, wrap)
    return events


@njit(cache=True)
def _fold_scales(scale, alpha, gidx, k0, ku, s0, su, t0, tn, cols, n_in_time):
    """Alpha of each row's group for this fold: per column (ws) or per time index + cols - 1 (is)."""
    scale[:] = 0
    for r in range(ku):
        g = gidx[k0 + r]
        if n_in_time:
            for t in range(tn):
                scale[r, t + cols - 1] = alpha[t0 + t, g]
        else:
            for c in range(su):
                scale[r, c] = alpha[s0 + c, g]


@njit(cache=True)
def run_stream_gemm(stat_src, strm, ends_k, gidx, alpha, bias, n_in_time, rows, cols, t_tile, lo, hi, wrap,
                    kind, rate, out, psum_proto):
    """ws / is: one GEMM fold by fold (column fold -> T tile -> row fold), every cycle stepped.

    stat_src (S, K) is laid across the columns (ws: weights (N, K); is: im2col activations (P, K)),
    strm (K, T) streams in time (ws: activations; is: weights; K-major: each row reads a contiguous run). alpha (N, groups), bias (N,) are indexed
    by the filter: the column (ws) or the time index (is). out (T, S) receives the accumulators.
    Returns int64[8]: stepped cycles, load cycles, stream cycles, first-tile overhead cycles,
    reload overhead cycles, group-scale stall cycles, overflow events, group sums scaled.
    """
    S, K = stat_src.shape
    T = strm.shape[1]
    stats = np.zeros(8, np.int64)
    width = cols + 1
    reg = np.zeros((rows, width), stat_src.dtype)
    act = np.zeros(rows * width, strm.dtype)
    nact = np.zeros(rows * width, strm.dtype)
    ps = np.zeros(rows * width, psum_proto.dtype)
    nps = np.zeros(rows * width, psum_proto.dtype)
    keep = np.zeros(rows * width, psum_proto.dtype)
    fifo = np.zeros((rows, CHUNK * cols), psum_proto.dtype)
    diff = np.zeros(cols + 1, np.int64)
    occ = np.zeros(cols if kind == QUEUE_PER_COLUMN else 1, np.int64)
    for s0 in range(0, S, cols):
        su = min(cols, S - s0)
        for t0 in range(0, T, t_tile):
            tn = min(t_tile, T - t0)
            n_slots = tn + cols - 1
            acc = np.zeros((cols, n_slots), out.dtype)
            carry_in = np.zeros((n_slots, cols), psum_proto.dtype)
            carry_out = np.zeros((n_slots, cols), psum_proto.dtype)
            scale = np.zeros((rows, tn + 2 * cols - 2 if n_in_time else cols), alpha.dtype)
            stats[6] += _init_acc(acc, bias, t0 if n_in_time else s0, su, tn, n_in_time, lo, hi, wrap)
            for k0 in range(0, K, rows):
                ku = min(rows, K - k0)
                end_rows = np.flatnonzero(ends_k[k0:k0 + ku])
                for r in range(1, rows):
                    keep[r * width:(r + 1) * width] = 0 if (r - 1 < ku and ends_k[k0 + r - 1]) else 1
                last_ends = rows == ku and ends_k[k0 + rows - 1]
                _fold_scales(scale, alpha, gidx, k0, ku, s0, su, t0, tn, cols, n_in_time)
                load = load_stationary(reg, stat_src, s0, su, k0, ku)
                act[:] = 0
                ps[:] = 0
                stream, ev, sums = stream_fold(reg.ravel(), strm, t0, tn, k0, ku, su, end_rows, keep, last_ends,
                                               scale, n_in_time, acc, carry_in, carry_out, act, nact, ps, nps, fifo,
                                               occ, diff, rate, kind, lo, hi, wrap)
                stall = _queue_drain(occ, rate) if kind != QUEUE_NONE else 0
                carry_in, carry_out = carry_out, carry_in
                stats[0] += load + stream
                stats[1] += load
                stats[2] += stream
                stats[3 if t0 == 0 else 4] += load + stream - tn
                stats[5] += stall
                stats[6] += ev
                stats[7] += sums
            for c in range(su):
                for t in range(tn):
                    out[t0 + t, s0 + c] = acc[c, t + c]
    return stats


@njit(cache=True)
def os_fold(x, w, p0, pu, n0, nu, ends_p, gidx_p, off, alpha, act, wreg, ps, acc, occ, rate, kind, lo, hi, wrap):
    """The stream phase of one os fold: rows + cols + K - 2 cycles. PE (r, c) meets x[p0 + r, k] and
    w[n0 + c, k] at cycle k + r + c; ends_p / gidx_p are ends / group index of k at [k + off].
    Returns (cycles, overflow events, group sums)."""
    rows, cols = ps.shape
    K = x.shape[1]
    n_cycles = rows + cols + K - 2
    events = 0
    sums = 0
    for tau in range(n_cycles):
        cur = tau & 1
        nxt = 1 - cur
        for r in range(rows - 1, -1, -1):
            j = tau - r
            a_in = act[nxt, r]
            a_old = act[cur, r]
            a_in[0] = x[p0 + r, j] if (r < pu and 0 <= j < K) else 0
            for c in range(1, cols):
                a_in[c] = a_old[c - 1]
            wr = wreg[r]
            if r > 0:
                above = wreg[r - 1]
                for c in range(cols):
                    wr[c] = above[c]
            else:
                for c in range(cols):
                    k = tau - c
                    wr[c] = w[n0 + c, k] if (c < nu and 0 <= k < K) else 0
            p = ps[r]
            for c in range(cols):
                p[c] += a_in[c] * wr[c]
            base = j + off                                  # lane c works on k = j - c
            for c in range(cols):
                if ends_p[base - c]:
                    v = acc[r, c] + p[c] * alpha[n0 + min(c, nu - 1), gidx_p[base - c]]
                    events += (v < lo) | (v > hi)
                    acc[r, c] = _keep(v, lo, hi, wrap)
                    p[c] = 0
                    if r < pu and c < nu:
                        sums += 1
                        if kind == QUEUE_PER_COLUMN:
                            occ[c] += 1
                        elif kind == QUEUE_SHARED:
                            occ[0] += 1
        _queue_step(occ, rate, kind)
    return n_cycles, events, sums


@njit(cache=True)
def run_os_gemm(x, w, ends_k, gidx, alpha, bias, rows, cols, paper, lo, hi, wrap, kind, rate, out, psum_proto):
    """os: x (P, K) on rows, w (N, K) on columns, K in time; out (P, N). `paper`: outputs drain down the
    columns, one row per cycle (rows cycles), else they are read out as SCALE-Sim 3.0.0 counts them (free).
    Returns int64[8] laid out as run_stream_gemm's (load cycles 0, no tiles)."""
    P, K = x.shape
    N = w.shape[0]
    stats = np.zeros(8, np.int64)
    off = rows + cols
    ends_p = np.zeros(K + 2 * off, np.bool_)
    gidx_p = np.zeros(K + 2 * off, np.int64)
    ends_p[off:off + K] = ends_k
    gidx_p[off:off + K] = gidx
    act = np.zeros((2, rows, cols), x.dtype)
    wreg = np.zeros((rows, cols), w.dtype)
    ps = np.zeros((rows, cols), psum_proto.dtype)
    acc = np.zeros((rows, cols), out.dtype)
    occ = np.zeros(cols if kind == QUEUE_PER_COLUMN else 1, np.int64)
    for p0 in range(0, P, rows):
        pu = min(rows, P - p0)
        for n0 in range(0, N, cols):
            nu = min(cols, N - n0)
            act[:] = 0
            wreg[:] = 0
            ps[:] = 0
            acc[:] = 0
            for r in range(pu):
                for c in range(nu):
                    b = bias[n0 + c]
                    stats[6] += (b < lo) | (b > hi)
                    acc[r, c] = _keep(b, lo, hi, wrap)
            stream, ev, sums = os_fold(x, w, p0, pu, n0, nu, ends_p, gidx_p, off, alpha, act, wreg, ps, acc,
                                       occ, rate, kind, lo, hi, wrap)
            stall = _queue_drain(occ, rate) if kind != QUEUE_NONE else 0
            drain = 0
            if paper:                               # shift the accumulators out of the bottom row
                for step in range(rows):
                    rb = rows - 1 - step
                    for c in range(nu):
                        if rb < pu:
                            out[p0 + rb, n0 + c] = acc[rows - 1, c]
                    for r in range(rows - 1, 0, -1):
                        for c in range(cols):
                            acc[r, c] = acc[r - 1, c]
                    drain += 1
            else:
                for r in range(pu):
                    for c in range(nu):
                        out[p0 + r, n0 + c] = acc[r, c]
            stats[0] += stream + drain
            stats[2] += stream + drain
            stats[3] += stream + drain - K
            stats[5] += stall
            stats[6] += ev
            stats[7] += sums
    return stats

