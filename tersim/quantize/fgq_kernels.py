"""Numba kernels of FGQ post-training quantization (tersim.quantize.fgq calls them for numpy weights).

`exact_ternary` is tersim.quantize.fgq's torch "exact" solver, group by group without building the padded
(Cout, kh, kw, G, N) copy, its sort indices and its score tensor: the same float64 operations in the same
order (a stable descending sort, a sequential cumulative sum, score = csum * (1 / sqrt(k)), the first
maximum), so codes and alphas are bit-identical to it (tests/test_fgq_fast.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

RANK_SORT_MAX = 16  # groups up to this long are ranked by all-pairs comparisons (branch-free); longer ones
                    # use np.argsort(kind="mergesort") (stable)


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
def exact_ternary(w, n):
    """w (Cout, Cin, kh, kw) float64, group size n (1 <= n <= Cin) -> codes int8 (Cout, Cin, kh, kw),
    alpha float64 (Cout, kh, kw, G): per group the top-k |w| with k maximising S_k / sqrt(k) (first
    maximum, i.e. smallest k), alpha = S_k / k, codes = sign(w) on the kept weights."""
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
                    a[i] = abs(w[o, c0 + i, ky, kx])
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
