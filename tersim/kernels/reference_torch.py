"""The integer kernels again, written plainly in torch int64 ops: what `tersim verify` checks the Numba engine
against. Same functions, same signatures, same numpy-in/numpy-out convention as tersim.kernels.

Written to be obviously correct, not fast: the conv walks the canonical reduction order (ky, kx, g) one step
at a time, vectorised over every output element, clamping/wrapping and counting overflow events per step
in both modes. Pool windows and divisors come from torch.nn.functional itself (in float64, where every sum
of int32 values involved is exact), so PyTorch's own rules define them.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tersim.kernels.arith import round_shift
from tersim.kernels.common import (check_adaptive, check_add, check_conv, check_linear, check_out_range,
                                   check_pool, int_array, max_abs)

__all__ = ["round_shift", "conv2d_int", "linear_int", "max_pool2d_int", "avg_pool2d_int",
           "adaptive_avg_pool2d_int", "add_int", "requantize_int"]


def _i64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a).astype(np.int64))


def _out(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.int32).numpy()


def _round_shift_clamp(v: torch.Tensor, s: int, lo: int, hi: int) -> torch.Tensor:
    """clamp(round_shift(v, s), lo, hi) for int64 v with |v| < 2**62.

    s > 0: floor division, then round up when the remainder is above half, or exactly half and the floor is
    odd. s <= 0: multiply; any |v| >= 2**31 ends up clamped anyway, so clamp v to +-2**31 and the shift
    to 31 first to keep the product inside int64.
    """
    if s > 0:
        if s >= 63:  # |v| < 2**62 <= 2**(s-1): below one half
            return torch.zeros_like(v).clamp(lo, hi)
        q = torch.div(v, 2**s, rounding_mode="floor")
        r = v - q * 2**s
        half = 2 ** (s - 1)
        q = q + ((r > half) | ((r == half) & (q % 2 == 1))).to(torch.int64)
    else:
        q = v.clamp(-(2**31), 2**31) * 2 ** min(-s, 31)
    return q.clamp(lo, hi)


def _div_round_half_even(v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    q = torch.div(v, d, rounding_mode="floor")
    r = v - q * d
    return q + ((2 * r > d) | ((2 * r == d) & (q % 2 == 1))).to(torch.int64)


def _clamp_or_wrap(v: torch.Tensor, lo: int, hi: int, saturate: bool) -> tuple[torch.Tensor, int]:
    """One accumulator step: keep v in [lo, hi] and count the elements whose exact value was outside."""
    if v.numel() == 0:
        return v, 0
    low, high = torch.aminmax(v)
    if int(low) >= lo and int(high) <= hi:     # the common case: nothing to clamp, no event
        return v, 0
    events = int(((v < lo) | (v > hi)).sum())
    if saturate:
        return v.clamp(lo, hi), events
    return torch.remainder(v - lo, hi - lo + 1) + lo, events


def conv2d_int(x: np.ndarray, codes: np.ndarray, alpha_q: np.ndarray, bias_q: np.ndarray, *, group_size: int,
               stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int,
               acc_bits: int, saturate: bool, shift: int, out_lo: int, out_hi: int, group_layout: str = "channel",
               scales: str | int = 1, x_max: int | None = None) -> tuple[np.ndarray, int]:
    """Reference for tersim.kernels.conv2d_int: (y int32 (B, Cout, OH, OW), overflow events). x_max (a bound
    on max|x| that only steers the Numba kernel's choice of path) is accepted and ignored."""
    spec, x, codes, alpha_q, bias_q = check_conv(x, codes, alpha_q, bias_q, group_size=group_size, stride=stride,
                                                 padding=padding, dilation=dilation, groups=groups,
                                                 acc_bits=acc_bits, out_lo=out_lo, out_hi=out_hi,
                                                 group_layout=group_layout, scales=scales)
    if not spec.is_default_variant:
        return _conv2d_variant(x, codes, alpha_q, bias_q, spec, saturate, shift)
    B, Cout, OH, OW, gr, cin_g, N = spec.B, spec.Cout, spec.OH, spec.OW, spec.groups, spec.cin_g, spec.group_size
    if B == 0 or Cout == 0:
        return np.empty((B, Cout, OH, OW), np.int32), 0
    (sh, sw), (ph, pw), (dh, dw) = spec.stride, spec.padding, spec.dilation
    lo, hi = spec.acc_lo, spec.acc_hi
    xp = F.pad(_i64(x), (pw, pw, ph, ph))                       # padded positions are 0
    w = _i64(codes).reshape(gr, spec.cout_g, cin_g, spec.kh, spec.kw)
    alpha = _i64(alpha_q)
    acc, events = _clamp_or_wrap(_i64(bias_q).view(1, Cout, 1, 1).expand(B, Cout, OH, OW), lo, hi, saturate)
    for ky in range(spec.kh):
        for kx in range(spec.kw):
            # input under tap (ky, kx) for every output position: (B, groups, cin_g, OH, OW)
            patch = xp[:, :, ky * dh:ky * dh + (OH - 1) * sh + 1:sh, kx * dw:kx * dw + (OW - 1) * sw + 1:sw]
            patch = patch.reshape(B, gr, cin_g, OH, OW)
            for g in range(spec.G):
                c0, c1 = g * N, min(cin_g, (g + 1) * N)
                psum = torch.einsum("bgcyx,goc->bgoyx", patch[:, :, c0:c1], w[:, :, c0:c1, ky, kx])
                step = psum.reshape(B, Cout, OH, OW) * alpha[:, ky, kx, g].view(1, Cout, 1, 1)
                acc, ev = _clamp_or_wrap(acc + step, lo, hi, saturate)
                events += ev
    return _out(_round_shift_clamp(acc, int(shift), spec.out_lo, spec.out_hi)), events


def _grouped_view(t: torch.Tensor, spec, per_tap: int) -> torch.Tensor:
    """Split the filter axis (-2 of t, (c, ky, kx) order, per_tap = kh * kw) into the contract's alpha groups:
    (..., groups in order, N, last): channel layout: taps (ky, kx) outer, runs of N channels (the last one
    zero-padded); kernel layout: runs of N of the flattened filter (the last zero-padded)."""
    N, cin_g = spec.group_size, spec.cin_g
    lead, last = t.shape[:-2], t.shape[-1]
    if spec.group_layout == "kernel":
        K = cin_g * per_tap
        G = -(-K // N)
        t = F.pad(t, (0, 0, 0, G * N - K))
        return t.reshape(*lead, G, N, last)
    G = -(-cin_g // N)
    t = t.reshape(*lead, cin_g, per_tap, last).transpose(-3, -2)             # (..., taps, cin_g, last)
    t = F.pad(t, (0, 0, 0, G * N - cin_g))
    return t.reshape(*lead, per_tap * G, N, last)


def _conv2d_variant(x, codes, alpha_q, bias_q, spec, saturate: bool, shift: int) -> tuple[np.ndarray, int]:
    """Any group layout / scale count: im2col by F.unfold ((c, ky, kx) order), every alpha group's partial
    sums by one einsum, then one accumulator step per alpha group in the contract's order; two scales:
    P * alpha+ - M * alpha- (P, M: sums of the inputs under the +1 and -1 codes)."""
    B, Cout, OH, OW, gr, cin_g = spec.B, spec.Cout, spec.OH, spec.OW, spec.groups, spec.cin_g
    if B == 0 or Cout == 0:
        return np.empty((B, Cout, OH, OW), np.int32), 0
    lo, hi, taps = spec.acc_lo, spec.acc_hi, spec.kh * spec.kw
    # float64 unfold is exact for int32 inputs; (B, groups, cin_g * kh * kw, OH * OW)
    cols = F.unfold(_i64(x).double(), (spec.kh, spec.kw), dilation=spec.dilation, padding=spec.padding,
                    stride=spec.stride).round().to(torch.int64).reshape(B, gr, cin_g * taps, OH * OW)
    xg = _grouped_view(cols, spec, taps)                                       # (B, gr, G, N, P)
    w = _i64(codes).reshape(gr, spec.cout_g, cin_g * taps, 1)
    alpha = _i64(alpha_q).reshape(Cout, -1, spec.scales)                        # groups in the contract's order
    if spec.scales == 2:
        pos = torch.einsum("bgjnp,gojn->bgojp", xg, _grouped_view(w.clamp(min=0), spec, taps)[..., 0])
        neg = torch.einsum("bgjnp,gojn->bgojp", xg, _grouped_view((-w).clamp(min=0), spec, taps)[..., 0])
        steps = (pos.reshape(B, Cout, -1, OH * OW) * alpha[None, :, :, 0, None]
                 - neg.reshape(B, Cout, -1, OH * OW) * alpha[None, :, :, 1, None])
    else:
        psum = torch.einsum("bgjnp,gojn->bgojp", xg, _grouped_view(w, spec, taps)[..., 0])
        steps = psum.reshape(B, Cout, -1, OH * OW) * alpha[None, :, :, 0, None]
    acc, events = _clamp_or_wrap(_i64(bias_q).view(1, Cout, 1).expand(B, Cout, OH * OW), lo, hi, saturate)
    steps = steps.permute(2, 0, 1, 3).contiguous()                               # (G, B, Cout, P)
    for g in range(steps.shape[0]):
        acc, ev = _clamp_or_wrap(acc + steps[g], lo, hi, saturate)
        events += ev
    y = _round_shift_clamp(acc, int(shift), spec.out_lo, spec.out_hi).reshape(B, Cout, OH, OW)
    return _out(y), events


def linear_int(x: np.ndarray, codes: np.ndarray, alpha_q: np.ndarray, bias_q: np.ndarray, *, group_size: int,
               acc_bits: int, saturate: bool, shift: int, out_lo: int, out_hi: int, group_layout: str = "channel",
               scales: str | int = 1) -> tuple[np.ndarray, int]:
    """Reference for tersim.kernels.linear_int: a 1x1 conv on a 1x1 image."""
    spec, x, codes, alpha_q, bias_q = check_linear(x, codes, alpha_q, bias_q, group_size=group_size,
                                                   acc_bits=acc_bits, out_lo=out_lo, out_hi=out_hi,
                                                   group_layout=group_layout, scales=scales)
    y, events = conv2d_int(x[:, :, None, None], codes[:, :, None, None], alpha_q[:, None, None], bias_q,
                           scales=spec.scales,
                           group_size=group_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                           acc_bits=acc_bits, saturate=saturate, shift=shift, out_lo=out_lo, out_hi=out_hi)
    return y.reshape(spec.B, spec.Cout), events


def max_pool2d_int(x: np.ndarray, *, kernel, stride, padding, dilation=(1, 1), ceil_mode: bool = False) -> np.ndarray:
    """Reference max pool: F.max_pool2d on float64 (exact for int32 values)."""
    spec, x = check_pool(x, kernel, stride, padding, dilation, ceil_mode)
    if x.size == 0:
        return np.empty((x.shape[0], x.shape[1], spec.OH, spec.OW), np.int32)
    y = F.max_pool2d(_i64(x).double(), spec.kernel, spec.stride, spec.padding, spec.dilation, bool(ceil_mode))
    return _out(y.to(torch.int64))


def avg_pool2d_int(x: np.ndarray, *, kernel, stride, padding, ceil_mode: bool = False, count_include_pad: bool = True,
                   divisor_override: int | None = None, out_lo: int, out_hi: int) -> np.ndarray:
    """Reference average pool: window sums and divisors from F.avg_pool2d itself, then an exact rounding division.

    With divisor_override=1, F.avg_pool2d returns the plain window sum (exact in float64 here). Pooling a
    tensor of ones gives cnt (valid elements, divisor 1) and cnt / divisor (PyTorch's divisor), so
    divisor = cnt / that, whatever count_include_pad and ceil_mode make of the window.
    """
    spec, x = check_pool(x, kernel, stride, padding, (1, 1), ceil_mode)
    lo, hi = check_out_range(out_lo, out_hi)
    B, C, H, W = x.shape
    if x.size == 0:
        return np.empty((B, C, spec.OH, spec.OW), np.int32)
    pool = dict(kernel_size=spec.kernel, stride=spec.stride, padding=spec.padding, ceil_mode=bool(ceil_mode))
    sums = F.avg_pool2d(_i64(x).double(), count_include_pad=True, divisor_override=1, **pool).to(torch.int64)
    if divisor_override is not None:
        if int(divisor_override) <= 0:
            raise ValueError(f"divisor_override must be positive, got {divisor_override}")
        divisor = torch.tensor(int(divisor_override), dtype=torch.int64)
    else:
        ones = torch.ones(1, 1, H, W, dtype=torch.float64)
        cnt = F.avg_pool2d(ones, count_include_pad=True, divisor_override=1, **pool)
        mean = F.avg_pool2d(ones, count_include_pad=bool(count_include_pad), **pool)
        divisor = torch.round(cnt / mean).to(torch.int64)
    return _out(_div_round_half_even(sums, divisor).clamp(lo, hi))


def adaptive_avg_pool2d_int(x: np.ndarray, *, output_size, out_lo: int, out_hi: int) -> np.ndarray:
    """Reference adaptive average pool: window [floor(i*H/OH), ceil((i+1)*H/OH)) summed in int64, one per output."""
    (OH, OW), x = check_adaptive(x, output_size)
    lo, hi = check_out_range(out_lo, out_hi)
    B, C, H, W = x.shape
    xt = _i64(x)
    y = torch.zeros(B, C, OH, OW, dtype=torch.int64)
    for oy in range(OH):
        hs, he = (oy * H) // OH, -(-((oy + 1) * H) // OH)
        for ox in range(OW):
            ws, we = (ox * W) // OW, -(-((ox + 1) * W) // OW)
            s = xt[:, :, hs:he, ws:we].sum(dim=(2, 3))
            y[:, :, oy, ox] = _div_round_half_even(s, torch.tensor((he - hs) * (we - ws)))
    return _out(y.clamp(lo, hi))


def add_int(a: np.ndarray, a_frac: int, b: np.ndarray, b_frac: int, *, out_frac: int, out_lo: int,
            out_hi: int) -> np.ndarray:
    """Reference add: round_shift(a * 2**(F-fa) + b * 2**(F-fb), F - fo), F = max(fa, fb), then clamp."""
    a, b, da, db, s = check_add(a, a_frac, b, b_frac, out_frac)
    lo, hi = check_out_range(out_lo, out_hi)
    return _out(_round_shift_clamp(_i64(a) * 2**da + _i64(b) * 2**db, s, lo, hi))


def requantize_int(x: np.ndarray, *, shift: int, out_lo: int, out_hi: int) -> np.ndarray:
    """Reference requantization: clamp(round_shift(x, shift), out_lo, out_hi)."""
    x = int_array(x, "x")
    lo, hi = check_out_range(out_lo, out_hi)
    if max_abs(x) >= 2**62:
        raise ValueError("requantize_int needs |x| < 2**62")
    return _out(_round_shift_clamp(_i64(x), int(shift), lo, hi))
