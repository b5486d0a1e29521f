"""Scalar integer helpers shared by the Numba kernels (docs/ARCHITECTURE.md, "Numerics contract").

Everything here works on int64 scalars and is inlined into the kernels' loops. Shift amounts and bounds
are loop-invariant, so LLVM hoists the branches out of the vectorised loops.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def round_shift(v: int, s: int) -> int:
    """Exact reference for one value: s > 0 divides by 2**s rounding half to even; s <= 0 multiplies by 2**-s.

    Pure Python integers, so it is exact for any size (the kernels use the int64 `shift_round_clamp`).

    Examples:
        >>> [round_shift(v, 1) for v in (-3, -1, 1, 3, 5)]
        [-2, 0, 0, 2, 2]
        >>> round_shift(-5, -2)
        -20
    """
    v, s = int(v), int(s)
    if s <= 0:
        return v << -s
    q, r = divmod(v, 1 << s)  # floor division: correct for negative v
    half = 1 << (s - 1)
    if r > half or (r == half and q & 1):
        q += 1
    return q


@njit(cache=True, inline="always")
def shift_round_clamp(v, s, lo, hi):
    """clamp(round_shift(v, s), lo, hi) for int64 v with |v| < 2**62 and lo, hi in int32 range.

    Why the clamps inside the left shift: the exact product may not fit int64, but any |v| >= 2**31
    lands outside [lo, hi] after a left shift anyway, so pre-clamping v to +-2**31 and the shift to 31
    keeps the final answer exact. For s >= 63 the quotient of |v| < 2**62 rounds to 0.
    """
    v = np.int64(v)
    if s > 0:
        if s >= 63:
            q = np.int64(0)
        else:
            q = v >> s
            r = v - (q << s)
            half = np.int64(1) << (s - 1)
            q += np.int64((r > half) | ((r == half) & ((q & 1) == 1)))
    else:
        k = -s
        if k > 31:
            k = 31
        q = v
        if q > 2**31:
            q = np.int64(2**31)
        if q < -(2**31):
            q = np.int64(-(2**31))
        q = q << k
    if q < lo:
        q = np.int64(lo)
    if q > hi:
        q = np.int64(hi)
    return q


@njit(cache=True, inline="always")
def div_round_half_even(v, d):
    """v / d for int64 v and d > 0, rounded half to even (exact: floor division plus a remainder test)."""
    q = v // d
    r = v - q * d
    return q + np.int64((2 * r > d) | ((2 * r == d) & ((q & 1) == 1)))


@njit(cache=True, parallel=True)
def min_max(flat):
    """(min, max) of a non-empty 1-D integer array in one parallel pass (numpy's min and max are two serial
    passes; activations are scanned for every layer)."""
    lo = flat[0]
    hi = flat[0]
    for i in prange(flat.size):
        v = flat[i]
        lo = min(lo, v)
        hi = max(hi, v)
    return lo, hi
