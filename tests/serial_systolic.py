"""The ws/is stream GEMM as it was before its (column fold, T tile) pairs ran on threads: one serial loop
over folds -> T tiles -> row folds on one set of registers, FIFOs and accumulators, calling the same per-fold
stepping (tersim.kernels.systolic). tests/test_cycle_engine.py checks the threaded kernel against it."""
import numpy as np
from numba import njit

from tersim.kernels.systolic import (FIRST_TILE_OVERHEAD, GROUP_STALL, GROUP_SUMS, LOAD, N_COUNTERS, OVERFLOW_EVENTS,
                                     QUEUE_NONE, QUEUE_PER_COLUMN, RELOAD_OVERHEAD, STEPPED, STREAM, _fold_scales,
                                     _init_acc, _queue_drain, _scale_count, _skew_ports, _zeros_like_if,
                                     load_stationary, stream_fold)


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
