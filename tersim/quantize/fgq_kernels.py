"""Numba kernels of FGQ post-training quantization (tersim.quantize.fgq calls them for numpy weights).

`exact_ternary` is tersim.quantize.fgq's torch "exact" solver, group by group without building the padded
(Cout, kh, kw, G, N) copy, its sort indices and its score tensor: the same float64 operations in the same
order (a stable descending sort, a sequential cumulative sum, score = csum * (1 / sqrt(k)), the first
maximum), so codes and alphas are bit-identical to it (tests/test_fgq_fast.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

RANK_SORT_MAX = 16  # _exact_ternary_groups: groups up to this long are ranked by all-pairs comparisons
                    # (branch-free); longer ones use np.argsort(kind="mergesort") (stable)
LANES_MAX = 64      # group sizes up to this solve all groups of a filter side by side (_exact_ternary_lanes);
                    # its all-pairs ranks cost N comparisons per weight, so longer groups are sorted one by one


def exact_ternary(w: np.ndarray, n: int, residual: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """w (Cout, Cin, kh, kw) float32 or float64 (read as float64), group size n (1 <= n <= Cin) ->
    codes int8 (Cout, Cin, kh, kw), alpha float64 (Cout, kh, kw, G): per group the top-k |w| with k
    maximising S_k / sqrt(k) (first maximum, i.e. smallest k), alpha = S_k / k, codes = sign(w) on the kept
    weights; with `residual` also w - codes * alpha (float64, w's shape; `dequantized_residual`'s values),
    else None. Both solvers give the same bits (tests/test_fgq_fast.py). A NaN or infinite weight raises
    ValueError (the lane solver checks the values as it reads them)."""
    if n <= LANES_MAX:
        codes, alpha, res, finite = _exact_ternary_lanes(w, n, residual)
        if not finite.all():
            raise ValueError("weight contains NaN or infinite values")
        return codes, alpha, (res if residual else None)
    if not np.isfinite(w).all():
        raise ValueError("weight contains NaN or infinite values")
    codes, alpha = _exact_ternary_groups(w, n)
    return codes, alpha, (dequantized_residual(w.astype(np.float64), codes, alpha, n) if residual else None)


@njit(cache=True, inline="always")
def _stable_desc_ranks(a, m, rank):
    """rank[i] = position of a[i] in a stable descending sort of a[:m]: the number of larger values plus the
    number of equal values before it. Comparisons only, no data-dependent branches."""
    for i in range(m):
        r = 0
        ai = a[i]
        for j in range(m):
            r += (a[j] > ai) | ((a[j] == ai) & (j < i))
        rank[i] = r


@njit(cache=True, parallel=True)
def _exact_ternary_groups(w, n):
    """exact_ternary one group at a time (parallel over output channels and kernel rows)."""
    cout, cin, kh, kw = w.shape
    G = (cin + n - 1) // n
    codes = np.empty((cout, cin, kh, kw), np.int8)
    alpha = np.empty((cout, kh, kw, G), np.float64)
    rsqrt = np.empty(n, np.float64)  # torch's rsqrt of k: 1 / sqrt(k), both correctly rounded
    for k in range(n):
        rsqrt[k] = 1.0 / np.sqrt(np.float64(k + 1))
    for item in prange(cout * kh):
        o = item // kh
        ky = item % kh
        a = np.empty(n, np.float64)
        sorted_a = np.empty(n, np.float64)
        rank = np.empty(n, np.int64)
        for kx in range(kw):
            for g in range(G):
                c0 = g * n
                m = min(n, cin - c0)
                for i in range(m):
                    a[i] = abs(np.float64(w[o, c0 + i, ky, kx]))
                if m <= RANK_SORT_MAX:
                    _stable_desc_ranks(a, m, rank)
                else:
                    order = np.argsort(-a[:m], kind="mergesort")
                    for k in range(m):
                        rank[order[k]] = k
                for i in range(m):
                    sorted_a[rank[i]] = a[i]
                csum = 0.0
                best_score = -np.inf
                best_k = 0
                best_sum = 0.0
                for k in range(m):
                    csum += sorted_a[k]
                    score = csum * rsqrt[k]
                    better = score > best_score
                    best_score = score if better else best_score
                    best_k = k if better else best_k
                    best_sum = csum if better else best_sum
                alpha[o, ky, kx, g] = best_sum / np.float64(best_k + 1)
                for i in range(m):
                    v = w[o, c0 + i, ky, kx]
                    codes[o, c0 + i, ky, kx] = (np.int8(v > 0) - np.int8(v < 0)) * np.int8(rank[i] <= best_k)
    return codes, alpha


@njit(cache=True, parallel=True)
def _exact_ternary_lanes(w, n, with_residual):
    """exact_ternary with every group of one output channel solved side by side: lane L = (ky, kx, g) is
    alpha[o, ky, kx, g]'s flat index, row i its group's i-th weight, so each step (all-pairs ranks, the sorted
    cumulative sums, the best k) is one loop over contiguous lanes that the compiler vectorises. A short last
    group is padded with zeros: they sort after every real weight and adding 0.0 leaves the sums unchanged, so
    a padded k scores S_m / sqrt(k) < S_m / sqrt(m) (or 0, not > 0) and is never the first maximum.
    `with_residual`: also return w - codes * alpha (float64), written with the codes (else an empty array);
    and per output channel whether all its weights are finite (the results are meaningless where not)."""
    cout, cin, kh, kw = w.shape
    G = (cin + n - 1) // n
    khw = kh * kw
    lanes = khw * G
    codes = np.empty((cout, cin, kh, kw), np.int8)
    alpha = np.empty((cout, kh, kw, G), np.float64)
    residual = np.empty((cout, cin, kh, kw) if with_residual else (0, 0, 0, 0), np.float64)
    wf, cf, af = w.reshape(cout, cin * khw), codes.reshape(cout, cin * khw), alpha.reshape(cout, lanes)
    rf = residual.reshape(cout, cin * khw if with_residual else 0)
    finite = np.empty(cout, np.bool_)
    rsqrt = np.empty(n, np.float64)
    for k in range(n):
        rsqrt[k] = 1.0 / np.sqrt(np.float64(k + 1))
    for o in prange(cout):
        wo, co, ao = wf[o], cf[o], af[o]
        ok = True
        for f in range(cin * khw):
            ok &= np.isfinite(wo[f])
        finite[o] = ok
        a = np.zeros((n, lanes), np.float64)
        s = np.empty((n, lanes), np.float64)
        rank = np.empty((n, lanes), np.int32)
        csum = np.zeros(lanes, np.float64)
        best_score = np.full(lanes, -np.inf)
        best_sum = np.zeros(lanes, np.float64)
        best_k = np.zeros(lanes, np.int32)
        for i in range(n):              # row i = channels g * n + i; groups past the last channel stay 0
            ai, gi = a[i], (cin - i + n - 1) // n
            for p in range(khw):
                for g in range(gi):
                    ai[p * G + g] = abs(np.float64(wo[(g * n + i) * khw + p]))
        for i in range(n):
            ai, ri = a[i], rank[i]
            for L in range(lanes):
                ri[L] = 0
            for j in range(n):
                aj = a[j]
                if j < i:
                    for L in range(lanes):
                        ri[L] += aj[L] >= ai[L]
                elif j > i:
                    for L in range(lanes):
                        ri[L] += aj[L] > ai[L]
        for i in range(n):
            ai, ri = a[i], rank[i]
            for L in range(lanes):
                s[ri[L], L] = ai[L]
        for k in range(n):
            sk, r = s[k], rsqrt[k]
            for L in range(lanes):
                cs = csum[L] + sk[L]
                csum[L] = cs
                score = cs * r
                better = score > best_score[L]
                best_score[L] = score if better else best_score[L]
                best_k[L] = k if better else best_k[L]
                best_sum[L] = cs if better else best_sum[L]
        for L in range(lanes):
            ao[L] = best_sum[L] / np.float64(best_k[L] + 1)
        for i in range(n):
            ri, gi = rank[i], (cin - i + n - 1) // n
            for p in range(khw):
                for g in range(gi):
                    L, f = p * G + g, (g * n + i) * khw + p
                    v = wo[f]
                    code = (np.int8(v > 0) - np.int8(v < 0)) * np.int8(ri[L] <= best_k[L])
                    co[f] = code
                    if with_residual:
                        rf[o, f] = np.float64(v) - np.float64(code) * ao[L]
    return codes, alpha, residual, finite


@njit(cache=True, parallel=True)
def dequantized_residual(w, codes, alpha, n):
    """w - codes * alpha (alpha of each weight's group), float64 with w's shape (Cout, Cin, kh, kw)."""
    cout, cin, kh, kw = w.shape
    out = np.empty(w.shape, np.float64)
    for o in prange(cout):
        for c in range(cin):
            g = c // n
            for ky in range(kh):
                for kx in range(kw):
                    out[o, c, ky, kx] = w[o, c, ky, kx] - np.float64(codes[o, c, ky, kx]) * alpha[o, ky, kx, g]
    return out


@njit(cache=True)
def scaled_alpha_codes(a, scale, qmax):
    """int32 rint(a * scale) clipped to [0, qmax], a flat float64 array; `scale` an exact power of two, so
    a * scale is the correctly rounded ldexp(a, frac) and rint rounds half to even as np.rint. Serial: a
    layer's alphas are few, and a parallel region costs more than this pass."""
    out = np.empty(a.size, np.int32)
    hi = np.float64(qmax)
    for i in range(a.size):
        out[i] = np.int32(min(max(np.rint(a[i] * scale), 0.0), hi))
    return out


@njit(cache=True)
def int8_channel_codes(w, qmax, with_residual):
    """Symmetric per-output-channel 8-bit codes of w (Cout, Cin, kh, kw), float32 or float64 read as float64:
    scale_o = max|w_o| / qmax, codes = rint(w / scale_o) clipped to [-qmax, qmax] (an all-zero channel: scale
    0, codes 0); the float64 operations of fgq.quantize_int8_weights' torch path. Also whether w is finite,
    and with `with_residual` w - codes * scale_o (float64, `dequantized_residual`'s values; else empty)."""
    cout = w.shape[0]
    wf = w.reshape(cout, -1)
    codes = np.empty(wf.shape, np.int8)
    residual = np.empty(wf.shape if with_residual else (0, 0), np.float64)
    scale = np.empty(cout, np.float64)
    finite = True
    for o in range(cout):
        top = 0.0
        for i in range(wf.shape[1]):
            v = np.float64(wf[o, i])
            finite &= np.isfinite(v)
            top = max(top, abs(v))
        s = top / qmax
        scale[o] = s
        safe = s if s > 0 else 1.0
        for i in range(wf.shape[1]):
            v = np.float64(wf[o, i])
            code = np.int8(min(max(np.rint(v / safe), -qmax), qmax))
            codes[o, i] = code
            if with_residual:
                residual[o, i] = v - np.float64(code) * s
    return codes.reshape(w.shape), scale, finite, residual
