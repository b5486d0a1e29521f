"""Integer pooling with PyTorch's window and divisor rules (Numba). The scale is unchanged by pooling.

Average pools sum exactly in int64 and divide once, rounding half to even; max pools never let padding
win. Work items are (image, channel) planes.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from tersim.kernels.arith import div_round_half_even
from tersim.kernels.common import check_adaptive, check_out_range, check_pool


@njit(cache=True)
def _tap_range(o, s, p, d, k, n):
    """Taps j (0 <= j < k) of output position o whose input o * s - p + j * d lies in [0, n): [j0, j1)."""
    i0 = o * s - p
    j0 = 0 if i0 >= 0 else (-i0 + d - 1) // d
    j1 = 0 if i0 >= n else min(k, (n - i0 + d - 1) // d)
    return j0, max(j0, j1)


@njit(cache=True, parallel=True)
def max_pool_kernel(x, kh, kw, sh, sw, ph, pw, dh, dw, y):
    """Per output row, the max over the window's valid rows (contiguous, vectorised over W), then over the
    valid columns of each window; padding is skipped, never compared (every window holds an input)."""
    B, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    cols = np.empty((OW, 2), np.int64)
    for ox in range(OW):
        cols[ox, 0], cols[ox, 1] = _tap_range(ox, sw, pw, dw, kw, W)
    for item in prange(B * C):
        b = item // C
        c = item % C
        plane = x[b, c]
        colmax = np.empty(W, x.dtype)
        for oy in range(OH):
            i0, i1 = _tap_range(oy, sh, ph, dh, kh, H)
            out = y[b, c, oy]
            if i1 == i0:  # no input row in the window (as before: the padding value, never an input)
                out[:] = -(2**62)
                continue
            colmax[:] = plane[oy * sh - ph + i0 * dh]
            for i in range(i0 + 1, i1):
                row = plane[oy * sh - ph + i * dh]
                for ix in range(W):
                    colmax[ix] = max(colmax[ix], row[ix])
            for ox in range(OW):
                m = np.int64(-(2**62))  # below any int32: padding never wins
                base = ox * sw - pw
                for j in range(cols[ox, 0], cols[ox, 1]):
                    m = max(m, np.int64(colmax[base + j * dw]))
                out[ox] = m


@njit(cache=True, parallel=True)
def avg_pool_kernel(x, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override, out_lo, out_hi, y):
    """divisor_override <= 0 means none. The window is clipped at H + pad (PyTorch's pool_size), then at
    the input for summing and for the count_include_pad=False divisor."""
    B, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for item in prange(B * C):
        b = item // C
        c = item % C
        for oy in range(OH):
            h0 = oy * sh - ph
            h1 = min(h0 + kh, H + ph)
            hs, he = max(h0, 0), min(h1, H)
            for ox in range(OW):
                w0 = ox * sw - pw
                w1 = min(w0 + kw, W + pw)
                ws, we = max(w0, 0), min(w1, W)
                s = np.int64(0)
                for iy in range(hs, he):
                    for ix in range(ws, we):
                        s += x[b, c, iy, ix]
                if divisor_override > 0:
                    d = np.int64(divisor_override)
                elif count_include_pad:
                    d = np.int64((h1 - h0) * (w1 - w0))
                else:
                    d = np.int64((he - hs) * (we - ws))
                y[b, c, oy, ox] = min(max(div_round_half_even(s, d), out_lo), out_hi)


@njit(cache=True, parallel=True)
def adaptive_avg_pool_kernel(x, out_lo, out_hi, y):
    """Window i spans [floor(i*H/OH), ceil((i+1)*H/OH)) as in PyTorch."""
    B, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    for item in prange(B * C):
        b = item // C
        c = item % C
        for oy in range(OH):
            hs = (oy * H) // OH
            he = ((oy + 1) * H + OH - 1) // OH
            for ox in range(OW):
                ws = (ox * W) // OW
                we = ((ox + 1) * W + OW - 1) // OW
                s = np.int64(0)
                for iy in range(hs, he):
                    for ix in range(ws, we):
                        s += x[b, c, iy, ix]
                d = np.int64((he - hs) * (we - ws))
                y[b, c, oy, ox] = min(max(div_round_half_even(s, d), out_lo), out_hi)


def _as_int32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.int32)


def max_pool2d_int(x: np.ndarray, *, kernel, stride, padding, dilation=(1, 1), ceil_mode: bool = False) -> np.ndarray:
    """Integer max pool of x (B, C, H, W) -> int32 (B, C, OH, OW)."""
    spec, x = check_pool(x, kernel, stride, padding, dilation, ceil_mode)
    y = np.empty((x.shape[0], x.shape[1], spec.OH, spec.OW), np.int32)
    if y.size:
        max_pool_kernel(_as_int32(x), *spec.kernel, *spec.stride, *spec.padding, *spec.dilation, y)
    return y


def avg_pool2d_int(x: np.ndarray, *, kernel, stride, padding, ceil_mode: bool = False, count_include_pad: bool = True,
                   divisor_override: int | None = None, out_lo: int, out_hi: int) -> np.ndarray:
    """Integer average pool: exact window sum / divisor, rounded half to even, clamped to [out_lo, out_hi]."""
    spec, x = check_pool(x, kernel, stride, padding, (1, 1), ceil_mode)
    lo, hi = check_out_range(out_lo, out_hi)
    if divisor_override is not None and int(divisor_override) <= 0:
        raise ValueError(f"divisor_override must be positive, got {divisor_override}")
    y = np.empty((x.shape[0], x.shape[1], spec.OH, spec.OW), np.int32)
    if y.size:
        avg_pool_kernel(_as_int32(x), *spec.kernel, *spec.stride, *spec.padding, bool(count_include_pad),
                        int(divisor_override or 0), lo, hi, y)
    return y


def adaptive_avg_pool2d_int(x: np.ndarray, *, output_size, out_lo: int, out_hi: int) -> np.ndarray:
    """Integer adaptive average pool (PyTorch windows), rounded half to even, clamped."""
    (oh, ow), x = check_adaptive(x, output_size)
    lo, hi = check_out_range(out_lo, out_hi)
    y = np.empty((x.shape[0], x.shape[1], oh, ow), np.int32)
    if y.size:
        adaptive_avg_pool_kernel(_as_int32(x), lo, hi, y)
    return y
