"""Slow, obviously-correct reference implementations shared by the tests: literal loops over the
numerics contract (docs/ARCHITECTURE.md) and the ternarization rules, and model helpers."""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

from tersim.kernels import round_shift


# --- FGQ ternarization (tests/test_fgq.py) -----------------------------------------------------------------
def iter_groups(w4, n):
    """Yield (o, ky, kx, g, channel slice) in the contract's layout: runs of n input channels."""
    cout, cin, kh, kw = w4.shape
    for o, ky, kx in itertools.product(range(cout), range(kh), range(kw)):
        for g in range(math.ceil(cin / n)):
            yield o, ky, kx, g, slice(g * n, min((g + 1) * n, cin))


def group_error(w, alpha, t):
    return float(np.sum((w - alpha * t) ** 2))


def best_topk(w):
    """Try every k: support = top-k |w|, alpha = mean; returns (error, alpha, k) of the best (smallest k on ties)."""
    a = np.abs(w)
    order = np.argsort(-a, kind="stable")
    best = None
    for k in range(1, len(w) + 1):
        t = np.zeros_like(w)
        t[order[:k]] = np.sign(w[order[:k]])
        alpha = a[order[:k]].mean()
        err = group_error(w, alpha, t)
        if best is None or err < best[0]:
            best = (err, alpha, k)
    return best


def best_any_pattern(w):
    """Every t in {-1,0,1}^n with its optimal alpha >= 0: the true minimum of ||w - alpha t||^2."""
    best = float(np.sum(w**2))  # t = 0
    for t in itertools.product((-1.0, 0.0, 1.0), repeat=len(w)):
        t = np.array(t)
        tt = t @ t
        if tt:
            alpha = max(0.0, (t @ w) / tt)
            best = min(best, group_error(w, alpha, t))
    return best


def twn_group(w):
    """Loop implementation of TWN for one group."""
    keep = np.abs(w) > 0.7 * np.abs(w).mean()
    alpha = np.abs(w[keep]).mean() if keep.any() else 0.0
    return np.sign(w) * keep, alpha


# --- the conv/linear datapath (tests/test_kernels.py) ------------------------------------------------------
def naive_conv(x, codes, alpha, bias, *, group_size, stride, padding, dilation, groups, acc_bits, saturate,
               shift, out_lo, out_hi):
    """The contract's pseudo-code, literally, on Python integers."""
    B, Cin, H, W = x.shape
    Cout, cin_g, kh, kw = codes.shape
    (sh, sw), (ph, pw), (dh, dw), N = stride, padding, dilation, group_size
    OH, OW = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    events = 0

    def clamp_or_wrap(v):
        nonlocal events
        if lo <= v <= hi:
            return v
        events += 1
        return min(max(v, lo), hi) if saturate else (v - lo) % 2**acc_bits + lo

    y = np.zeros((B, Cout, OH, OW), np.int64)
    for b in range(B):
        for o in range(Cout):
            c_base = (o // (Cout // groups)) * cin_g
            for oy in range(OH):
                for ox in range(OW):
                    acc = clamp_or_wrap(int(bias[o]))
                    for ky in range(kh):
                        for kx in range(kw):
                            iy, ix = oy * sh - ph + ky * dh, ox * sw - pw + kx * dw
                            inside = 0 <= iy < H and 0 <= ix < W
                            for g in range(math.ceil(cin_g / N)):
                                psum = sum(int(codes[o, c, ky, kx]) * int(x[b, c_base + c, iy, ix])
                                           for c in range(g * N, min(cin_g, (g + 1) * N))) if inside else 0
                                acc = clamp_or_wrap(acc + psum * int(alpha[o, ky, kx, g]))
                    y[b, o, oy, ox] = min(max(round_shift(acc, shift), out_lo), out_hi)
    return y.astype(np.int32), events


# --- models -------------------------------------------------------------------------------------------------
def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm running stats and affine parameters (so a wrong fold shows up), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()
