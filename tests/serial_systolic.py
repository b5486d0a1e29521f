"""The ws/is stream GEMM as it was before its (column fold, T tile) pairs ran on threads and before its stepping
was restructured: one serial loop over folds -> T tiles -> row folds on one set of registers, FIFOs and
accumulators, and its own copy of the plain per-fold stepping (one column fold at a time, a register file for the streamed operand copied
one slot right and one for the partial sums copied one row down every cycle, a skewed port table, the stationary
tile shifted in one row per cycle). tests/test_cycle_engine.py checks tersim.kernels.systolic against it."""
import numpy as np
from numba import njit

from tersim.kernels.systolic import (FIRST_TILE_OVERHEAD, GROUP_STALL, GROUP_SUMS, LOAD, N_COUNTERS, OVERFLOW_EVENTS,
                                     QUEUE_NONE, QUEUE_PER_COLUMN, RELOAD_OVERHEAD, STEPPED, STREAM, U, _enqueue,
                                     _flat_or_none, _group_product, _keep, _may_stall, _queue_drain, _scale_count,
                                     _zeros_like_if)


@njit
def load_stationary(reg, src, s0, su, k0, ku, width):
    """Shift the tile src[s0 + c, k0 + r] into PE (r, c) from the top, one row per cycle; returns the cycles."""
    n = reg.size
    rows = n // width - 1
    for step in range(rows):
        for j in range(n - 1, 2 * width - 1, -1):
            reg[j] = reg[j - width]
        kr = rows - 1 - step                       # the row entering now ends at row kr
        for c in range(width - 1):
            reg[width + 1 + c] = src[s0 + c, k0 + kr] if (c < su and kr < ku) else 0
    return rows


@njit
def _skew_ports(ports, src, i0, n_i, j0, n_j, slot0):
    """ports[j + i, slot0 + i] = src[i0 + i, j0 + j], zero elsewhere: what each port line i (a row's or a
    column's input) sees at each cycle, delayed by i cycles (the skew)."""
    ports[:] = 0
    for i in range(n_i):
        for j in range(n_j):
            ports[j + i, slot0 + i] = src[i0 + i, j0 + j]


@njit
def stream_fold(stat, ports, tn, su, end_rows, scale, n_in_time, acc, n_slots, carry_in, carry_out, act, nact, ps,
                nps, occ, arrivals, rate, kind, lo, hi, wrap, scale_neg=None):
    """The stream phase of one ws/is fold (tn + rows + cols - 2 cycles) on a loaded stationary tile.

    stat, act / nact (this and next cycle's streamed operand), ps / nps (partial sums): flat register files
    (module docstring). ports (>= n_cycles, rows): what enters row r's port at each cycle (skewed, zero
    outside the tile). end_rows: rows that end a group; their sums go to the multipliers and the row is
    cleared, so the row below starts from 0. scale: ws (rows, cols) alpha per (row, column); is (rows,
    n_slots + cols - 1) alpha of time index n_slots - 1 - u at [r, u]. acc (>= n_slots, cols) and carry_*
    (>= n_slots, cols) skewed. scale_neg: alpha- laid out like scale (two scales: every group end sends two
    products to the multipliers), None for one scale. Returns (cycles, overflow events).
    """
    n_scale = _scale_count(scale_neg)
    scn = _flat_or_none(scale_neg)
    cols = acc.shape[1]
    width = cols + 1
    n = stat.size
    rows = n // width - 1
    n_cycles = tn + rows + cols - 2
    events = 0
    queue = _may_stall(end_rows.size * n_scale, su, rate, kind)
    accf, cout, sc = acc.reshape(-1), carry_out.reshape(-1), scale.reshape(-1)
    W, C = U(width), U(cols)
    for tau in range(n_cycles):
        for r in range(rows):                     # the ports: row r's next element, skewed by r cycles
            act[(r + 1) * width] = ports[tau, r]
        for c in range(cols):                     # partial sums entering from the top: the carry
            ps[1 + c] = carry_in[tau, c] if tau < n_slots else 0
        for j in range(U(n - width)):             # every PE: operand one column right, sum one row down
            a = act[j + W - U(1)]
            nact[j + W] = a
            nps[j + W] = ps[j] + stat[j + W] * a
        for e in range(end_rows.size):            # group sums leave their rows for the multipliers
            r = end_rows[e]
            q = tau - r
            row = U((r + 1) * width + 1)
            if 0 <= q < n_slots:                  # is: lane c holds time index q - c; ws: one alpha per column
                dst = U(q * cols)
                alpha = U(r * scale.shape[1] + (n_slots - 1 - q if n_in_time else 0))
                for c in range(C):
                    v = accf[dst + c] + _group_product(nps[row + c], sc[alpha + c], scn, alpha + c)
                    events += (v < lo) | (v > hi)
                    accf[dst + c] = _keep(v, lo, hi, wrap)
            for c in range(C):
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
            dst, bottom = U(q * cols), U(rows * width + 1)
            for c in range(C):
                cout[dst + c] = nps[bottom + c]
        act, nact = nact, act
        ps, nps = nps, ps
    return n_cycles, events



@njit
def _init_acc(acc, bias, n0, su, tn, n_in_time, lo, hi, wrap):
    """Skewed accumulators acc[q, c] of one fold column: bias (one clamp/wrap step) at real slots
    (time index q - c in [0, tn)), 0 elsewhere."""
    events = 0
    acc[:] = 0
    for c in range(su):
        for t in range(tn):
            b = bias[n0 + t] if n_in_time else bias[n0 + c]
            events += (b < lo) | (b > hi)
            acc[t + c, c] = _keep(b, lo, hi, wrap)
    return events


@njit
def _fold_scales(scale, alpha, gidx, k0, ku, s0, su, t0, tn, n_slots, n_in_time):
    """Alpha of each row's group for this fold: per column (ws) or per time index, reversed (is)."""
    scale[:] = 0
    for r in range(ku):
        g = gidx[k0 + r]
        if n_in_time:
            for t in range(tn):
                scale[r, n_slots - 1 - t] = alpha[t0 + t, g]
        else:
            for c in range(su):
                scale[r, c] = alpha[s0 + c, g]


@njit
def serial_stream_gemm(stat_src, strm, ends_k, gidx, alpha, bias, n_in_time, rows, cols, t_tile, lo, hi, wrap,
                       kind, rate, out, psum_proto, alpha_neg=None):
    """tersim.kernels.systolic.run_stream_gemm's arguments and counters, every fold in order on one thread."""
    n_scale = _scale_count(alpha_neg)
    S, K = stat_src.shape
    T = strm.shape[1]
    stats = np.zeros(N_COUNTERS, np.int64)
    width = cols + 1
    n = (rows + 1) * width
    tile = min(t_tile, T)
    slots = tile + cols - 1
    reg = np.zeros(n, stat_src.dtype)
    act = np.zeros(n, strm.dtype)
    nact = np.zeros(n, strm.dtype)
    ps = np.zeros(n, psum_proto.dtype)
    nps = np.zeros(n, psum_proto.dtype)
    ports = np.zeros((tile + rows + cols - 2, rows), strm.dtype)
    acc = np.zeros((slots, cols), out.dtype)
    carry_in = np.zeros((slots, cols), psum_proto.dtype)
    carry_out = np.zeros((slots, cols), psum_proto.dtype)
    scale = np.zeros((rows, slots + cols - 1 if n_in_time else cols), alpha.dtype)
    scale_neg = _zeros_like_if(alpha_neg, scale)
    occ = np.zeros(cols if kind == QUEUE_PER_COLUMN else 1, np.int64)
    arrivals = np.zeros(cols, np.int64)
    for s0 in range(0, S, cols):
        su = min(cols, S - s0)
        for t0 in range(0, T, t_tile):
            tn = min(t_tile, T - t0)
            n_slots = tn + cols - 1
            stats[OVERFLOW_EVENTS] += _init_acc(acc, bias, t0 if n_in_time else s0, su, tn, n_in_time, lo, hi, wrap)
            carry_in[:] = 0
            for k0 in range(0, K, rows):
                ku = min(rows, K - k0)
                end_rows = np.flatnonzero(ends_k[k0:k0 + ku])
                _fold_scales(scale, alpha, gidx, k0, ku, s0, su, t0, tn, n_slots, n_in_time)
                if alpha_neg is not None:
                    _fold_scales(scale_neg, alpha_neg, gidx, k0, ku, s0, su, t0, tn, n_slots, n_in_time)
                _skew_ports(ports, strm, k0, ku, t0, tn, 0)
                load = load_stationary(reg, stat_src, s0, su, k0, ku, width)
                act[:] = 0
                ps[:] = 0
                stream, ev = stream_fold(reg, ports, tn, su, end_rows, scale, n_in_time, acc, n_slots, carry_in,
                                         carry_out, act, nact, ps, nps, occ, arrivals, rate, kind, lo, hi, wrap,
                                         scale_neg)
                stall = _queue_drain(occ, rate) if kind != QUEUE_NONE else 0
                carry_in, carry_out = carry_out, carry_in
                stats[STEPPED] += load + stream
                stats[LOAD] += load
                stats[STREAM] += stream
                stats[FIRST_TILE_OVERHEAD if t0 == 0 else RELOAD_OVERHEAD] += load + stream - tn
                stats[GROUP_STALL] += stall
                stats[OVERFLOW_EVENTS] += ev
                stats[GROUP_SUMS] += end_rows.size * su * tn * n_scale
            for c in range(su):
                for t in range(tn):
                    out[t0 + t, s0 + c] = acc[t + c, c]
    return stats
