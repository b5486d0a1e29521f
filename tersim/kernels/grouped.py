"""conv2d / linear for the FGQ design-space variants (kernel group layout, two scales per group) (Numba).

The fast kernels of tersim.kernels.conv (VNNI, dot, wide grid) are built around the paper's channel layout
with one alpha per group. The variants run here instead, on im2col columns in the layout's K order
(tersim.quantize.layout). Channels whose accumulator provably cannot overflow take a float64 GEMM of the
alpha-folded weights (exact: every partial sum is an integer below 2**53, and without clamping the order of
the sum is free); the others a plain kernel walking the numerics contract's canonical order:

    acc = keep(bias)
    for each alpha group g (in K order):
        one scale:  psum = sum(code * x over g)                acc = keep(acc + psum * alpha[g])
        two scales: P = sum(x over +1 codes), M = sum(x over -1 codes)
                                                               acc = keep(acc + P * alpha+[g] - M * alpha-[g])
    y = clamp(round_shift(acc, shift))

`keep` clamps or wraps to acc_bits and counts an overflow event when the exact value is outside. The
channel/one-scale case also runs here (tests compare it with the fast kernels), but conv2d_int only sends
the variants. Tested against a NumPy reference (tests/test_fgq_variants.py) and the torch reference.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from tersim.kernels.arith import shift_round_clamp
from tersim.kernels.common import ConvSpec, max_abs
from tersim.quantize.layout import k_group_index, k_order


def im2col(x: np.ndarray, kh: int, kw: int, stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int], groups: int, oh: int, ow: int, group_layout: str = "channel") -> np.ndarray:
    """(groups, B*OH*OW, kh*kw*Cin/groups): each output pixel's inputs in the layout's K order:
    (ky, kx, c) for the channel layout, (c, ky, kx) for the kernel layout."""
    B, C, H, W = x.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.zeros((B, C, H + 2 * ph, W + 2 * pw), x.dtype)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    taps = [xp[:, :, ky * dh:ky * dh + (oh - 1) * sh + 1:sh, kx * dw:kx * dw + (ow - 1) * sw + 1:sw]
            for ky in range(kh) for kx in range(kw)]                        # each (B, C, OH, OW)
    cols = np.stack(taps, axis=1).reshape(B, kh * kw, groups, C // groups, oh, ow)
    order = (2, 0, 4, 5, 1, 3) if group_layout == "channel" else (2, 0, 4, 5, 3, 1)
    return np.ascontiguousarray(cols.transpose(*order)).reshape(groups, B * oh * ow, -1)


def layout_operands(codes: np.ndarray, alpha_q: np.ndarray, spec: ConvSpec) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray, np.ndarray]:
    """codes in the layout's K order (Cout, K) int8, alpha as (Cout, groups per filter, scales) int64, the alpha
    group of every K step and the group-end flags (a step whose successor is in another group)."""
    K = spec.cin_g * spec.kh * spec.kw
    order = k_order(spec.cin_g, spec.kh, spec.kw, spec.group_layout)
    wk = np.ascontiguousarray(np.asarray(codes, np.int8).reshape(spec.Cout, K)[:, order])
    alpha = np.ascontiguousarray(np.asarray(alpha_q, np.int64).reshape(spec.Cout, spec.n_alpha_groups, spec.scales))
    gid = k_group_index(spec.cin_g, spec.kh, spec.kw, spec.group_size, spec.group_layout)
    ends = np.append(gid[1:] != gid[:-1], True)
    return wk, alpha, gid, ends


@njit(cache=True, parallel=True)
def grouped_gemm_kernel(xcol, wk, alpha, gid, ends, bias, chans, acc_lo, acc_hi, saturate, shift, out_lo, out_hi,
                        y):
    """y[o, p] for the output channels `chans` and every pixel p of one conv group's im2col columns xcol (P, K);
    returns the overflow-event count. wk (Cout_g, K) codes, alpha (Cout_g, n_groups, scales), bias (Cout_g,)."""
    P, K = xcol.shape
    two = alpha.shape[2] == 2
    mask = np.int64(acc_hi) - np.int64(acc_lo)
    events = np.zeros(chans.size, np.int64)
    for i in prange(chans.size):
        o = chans[i]
        ev = 0
        for p in range(P):
            acc = np.int64(bias[o])
            if acc < acc_lo or acc > acc_hi:
                ev += 1
                acc = min(max(acc, acc_lo), acc_hi) if saturate else ((acc - acc_lo) & mask) + acc_lo
            pos = np.int64(0)
            neg = np.int64(0)
            for k in range(K):
                c = np.int64(wk[o, k])
                if c > 0 or not two:
                    pos += c * np.int64(xcol[p, k])
                elif c < 0:
                    neg -= c * np.int64(xcol[p, k])
                if ends[k]:
                    g = gid[k]
                    v = acc + pos * alpha[o, g, 0]
                    if two:
                        v -= neg * alpha[o, g, 1]
                    if v < acc_lo or v > acc_hi:
                        ev += 1
                        v = min(max(v, acc_lo), acc_hi) if saturate else ((v - acc_lo) & mask) + acc_lo
                    acc = v
                    pos = np.int64(0)
                    neg = np.int64(0)
            y[o, p] = shift_round_clamp(acc, shift, out_lo, out_hi)
        events[i] = ev
    return events.sum()


@njit(cache=True, parallel=True)
def requantize_columns(acc, chans, shift, out_lo, out_hi, y):
    """y[chans[j], p] = clamp(round_shift(acc[p, j])) for exact integer-valued float64 sums acc (P, len(chans))."""
    for j in prange(chans.size):
        o = chans[j]
        for p in range(acc.shape[0]):
            y[o, p] = shift_round_clamp(np.int64(acc[p, j]), shift, out_lo, out_hi)


def folded_weights(wk: np.ndarray, alpha: np.ndarray, gid: np.ndarray) -> np.ndarray:
    """code * (its scale) per weight, K order, int64: alpha of its group, alpha+ / alpha- by sign with two scales."""
    sign_index = (wk < 0).astype(np.int64) if alpha.shape[2] == 2 else np.zeros(wk.shape, np.int64)
    per_weight = np.take_along_axis(alpha[:, gid, :], sign_index[:, :, None], axis=2)[:, :, 0]
    return wk.astype(np.int64) * per_weight


def conv2d_grouped(x: np.ndarray, codes: np.ndarray, alpha_q: np.ndarray, bias_q: np.ndarray, spec: ConvSpec,
                   saturate: bool, shift: int) -> tuple[np.ndarray, int]:
    """A checked conv (tersim.kernels.common.check_conv) of any group layout / scale count:
    (y int32 (B, Cout, OH, OW), overflow events)."""
    y = np.empty((spec.B, spec.Cout, spec.OH, spec.OW), np.int32)
    if y.size == 0:
        return y, 0
    xcol = im2col(np.asarray(x, np.int32), spec.kh, spec.kw, spec.stride, spec.padding, spec.dilation, spec.groups,
                  spec.OH, spec.OW, spec.group_layout)
    wk, alpha, gid, ends = layout_operands(codes, alpha_q, spec)
    bias = np.asarray(bias_q, np.int64)
    P, cg = spec.B * spec.OH * spec.OW, spec.cout_g
    out = np.empty((spec.groups, cg, P), np.int32)
    # Fast channels: |bias| + max|x| * sum|code * scale| bounds |acc| after every step; when that fits the
    # accumulator (and 2**52), no clamp fires, the order of the sum is free and a float64 GEMM of the folded
    # weights is exact (every partial sum is an integer below 2**53).
    weff = folded_weights(wk, alpha, gid)
    bound = np.abs(bias).astype(np.float64) + float(max_abs(xcol)) * np.abs(weff).sum(axis=1).astype(np.float64)
    fast = bound <= min(spec.acc_hi, 2**52) * (1 - 1e-9)
    events = 0
    for g in range(spec.groups):
        sl = slice(g * cg, (g + 1) * cg)
        quick, slow = np.flatnonzero(fast[sl]), np.flatnonzero(~fast[sl])
        if quick.size:
            acc = xcol[g].astype(np.float64) @ weff[sl][quick].T.astype(np.float64) + bias[sl][quick]
            requantize_columns(acc, quick, int(shift), spec.out_lo, spec.out_hi, out[g])
        if slow.size:
            events += grouped_gemm_kernel(xcol[g], wk[sl], alpha[sl], gid, ends, bias[sl], slow, spec.acc_lo,
                                          spec.acc_hi, bool(saturate), int(shift), spec.out_lo, spec.out_hi, out[g])
    y[:] = out.reshape(spec.Cout, spec.B, spec.OH, spec.OW).transpose(1, 0, 2, 3)
    return y, int(events)
