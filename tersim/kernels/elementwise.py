"""Residual add and requantization (round-half-even shift + clamp) on int32 tensors (Numba)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from tersim.kernels.arith import shift_round_clamp
from tersim.kernels.common import check_add, check_out_range, int_array, max_abs


@njit(cache=True, parallel=True)
def add_kernel(a, da, b, db, s, out_lo, out_hi, y):
    """y = clamp(round_shift(a * 2**da + b * 2**db, s)): both inputs aligned to the finer scale, one rounding.
    The usual right shift (0 < s < 63) has its own branch-free loop, so it runs as int64 vector ops."""
    if 0 < s < 63:
        half = np.int64(1) << (s - 1)
        lo = np.int64(out_lo)
        hi = np.int64(out_hi)
        for i in prange(y.size):
            v = (np.int64(a[i]) << da) + (np.int64(b[i]) << db)
            q = v >> s
            r = v - (q << s)
            q += np.int64((r > half) | ((r == half) & ((q & 1) == 1)))
            y[i] = min(max(q, lo), hi)
    else:
        for i in prange(y.size):
            v = (np.int64(a[i]) << da) + (np.int64(b[i]) << db)
            y[i] = shift_round_clamp(v, s, out_lo, out_hi)


@njit(cache=True, parallel=True)
def requantize_kernel(x, shift, out_lo, out_hi, y):
    for i in prange(y.size):
        y[i] = shift_round_clamp(np.int64(x[i]), shift, out_lo, out_hi)


def add_int(a: np.ndarray, a_frac: int, b: np.ndarray, b_frac: int, *, out_frac: int, out_lo: int,
            out_hi: int) -> np.ndarray:
    """a * 2**-a_frac + b * 2**-b_frac requantized to out_frac (exact sum at F = max(fracs), one rounding)."""
    a, b, da, db, s = check_add(a, a_frac, b, b_frac, out_frac)
    lo, hi = check_out_range(out_lo, out_hi)
    y = np.empty(a.shape, np.int32)
    if y.size:
        add_kernel(np.ascontiguousarray(a, np.int32).reshape(-1), da, np.ascontiguousarray(b, np.int32).reshape(-1),
                   db, s, lo, hi, y.reshape(-1))
    return y


def requantize_int(x: np.ndarray, *, shift: int, out_lo: int, out_hi: int) -> np.ndarray:
    """clamp(round_shift(x, shift), out_lo, out_hi): concat inputs to the output scale, standalone relu (out_lo=0)."""
    x = int_array(x, "x")
    lo, hi = check_out_range(out_lo, out_hi)
    y = np.empty(x.shape, np.int32)
    if y.size:
        if max_abs(x) >= 2**62:
            raise ValueError("requantize_int needs |x| < 2**62")
        requantize_kernel(np.ascontiguousarray(x, np.int64).reshape(-1), int(shift), lo, hi, y.reshape(-1))
    return y
