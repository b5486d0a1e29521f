"""Ternary/int8 conv2d and linear on the integer datapath (Numba).

Datapath per output element (docs/ARCHITECTURE.md): acc = clamp_or_wrap(bias); for ky, kx, g:
acc = clamp_or_wrap(acc + psum_g * alpha_g); y = clamp(round_shift(acc, shift)).

Two paths, chosen per output channel, give identical results:
* Fast path. From the weights and max|x| the wrapper bounds |acc| over every prefix of the sum. When the
  bound fits the accumulator (and int32), no clamp can fire and no event can occur, so the order of the
  sum is free: alphas are folded into the weights (w = code * alpha) and the channel is a plain int32
  conv. This is the common case (32-bit accumulators). It runs on one of three kernels:
  - simd kernel (tersim.kernels.simd, used whenever the CPU has AVX-512 VNNI and groups == 1): register-
    blocked tiles of 12 pixels x 32 channels accumulated with vpdpwssd (int16 pairs -> int32), ~2-3x the
    pure-Numba kernels below on ResNet layers;
  - dot kernel: channels-last, one int16 dot product of length kw * cin_g per (pixel, ky) (vpmaddwd);
    best for deep layers (small images, many channels);
  - wide-grid kernel: the padded input is split into stride phases, so every tap (ky, kx) reads one
    contiguous run of a phase plane: grid position j = b*Hq*Wq + oy*Wq + ox reads plane element
    j + tap_off. Grid columns ox >= OW and rows oy >= OH are computed and thrown away; in exchange the
    inner loop is long, branch-free and unit-stride (no im2col, no padding tests), zero weights are
    skipped, and four weights share each pass over the accumulators. Best for large images.
* Exact path (channels that might overflow): the canonical order on the wide grid, per (ky, kx, g) an
  exact psum in the narrowest safe type (int16 when |x| * sum|codes| of a group fits), then one
  clamp/wrap step of the int64 accumulators with event counting, vectorised over pixels.

The folded weights are cached by content (a deep layer at batch 1 has ~50 MACs per weight, so rebuilding
them on every call would cost as much as the conv). Read-only weights (tersim.quantize.graph freezes every
layer's) are hashed once per array object; writeable ones on every call.
"""
from __future__ import annotations

import weakref

import numpy as np
from numba import njit, prange

from tersim.kernels import simd
from tersim.kernels.arith import shift_round_clamp
from tersim.kernels.common import ConvSpec, LruCache, check_conv, check_linear, linear_alpha_as_conv, max_abs
from tersim.kernels.grouped import conv2d_grouped

TILE_TARGET = 4096  # grid elements per work item: accumulators and psums stay in L1/L2


# ----------------------------------------------------------------------------------------------- kernels

@njit(cache=True, parallel=True)
def plan_channels(codes_t, alpha, group_size):
    """Per output channel: the overflow bound's weight factor and the alpha-folded weights.

    codes_t is channels-last (Cout, kh, kw, cin_g). |acc| after any step of channel o is at most
    |bias| + max|x| * S[o] with S[o] = sum over groups of |alpha| * sum|code|. Returns S (float64; only
    used for a yes/no test far from its precision limit), weff = code * alpha (Cout, kh, kw, cin_g) int32
    and max |code * alpha| per channel (int64, so a value that does not fit int32 is still seen).
    """
    Cout, kh, kw, cin_g = codes_t.shape
    G = alpha.shape[3]
    S = np.zeros(Cout, np.float64)
    weff = np.zeros((Cout, kh, kw, cin_g), np.int32)
    wmax = np.zeros(Cout, np.int64)
    for o in prange(Cout):
        s_o = 0.0
        m = 0
        for ky in range(kh):
            for kx in range(kw):
                for g in range(G):
                    a = np.int64(alpha[o, ky, kx, g])
                    n_abs = 0
                    for c in range(g * group_size, min(cin_g, (g + 1) * group_size)):
                        w = np.int64(codes_t[o, ky, kx, c]) * a
                        weff[o, ky, kx, c] = w
                        m = max(m, abs(w))
                        n_abs += abs(np.int64(codes_t[o, ky, kx, c]))
                    s_o += float(n_abs) * float(abs(a))
        S[o] = s_o
        wmax[o] = m
    return S, weff, wmax


FINGERPRINT_CHUNK = 1 << 14  # words per parallel work item


@njit(cache=True)
def _fingerprint_range(words, start, stop):
    """The two position-weighted sums of `fingerprint` over words[start:stop]."""
    h1 = np.uint64(0)
    h2 = np.uint64(0)
    golden = np.uint64(0x9E3779B97F4A7C15)
    mix = np.uint64(0xD6E8FEB86659FD93)
    one = np.uint64(1)
    for i in range(start, stop):
        k = (np.uint64(i) * golden) | one
        v = words[i]
        h1 += v * k
        h2 += (v ^ (v >> np.uint64(29))) * ((k ^ mix) | one)
    return h1, h2


@njit(cache=True)
def fingerprint(words):
    """Two 64-bit position-weighted sums of the data: any single changed word changes h1 (odd weights)."""
    return _fingerprint_range(words, 0, words.size)


@njit(cache=True, parallel=True)
def fingerprint_parallel(words):
    """fingerprint over chunks on all threads (sums mod 2**64 do not depend on the order): for large weights."""
    n_chunks = (words.size + FINGERPRINT_CHUNK - 1) // FINGERPRINT_CHUNK
    h1 = np.uint64(0)
    h2 = np.uint64(0)
    for c in prange(n_chunks):
        t1, t2 = _fingerprint_range(words, c * FINGERPRINT_CHUNK, min(words.size, (c + 1) * FINGERPRINT_CHUNK))
        h1 += t1
        h2 += t2
    return h1, h2


FINGERPRINT_PARALLEL = 1 << 16  # words: below this a parallel launch costs more than it saves


@njit(cache=True)
def _dot32(w, x):
    """sum(w * x) in int32 (exact on fast channels); for int16 vectors this form compiles to vpmaddwd."""
    s = np.int32(0)
    for k in range(w.size):
        s = np.int32(s + np.int32(w[k]) * np.int32(x[k]))
    return s


@njit(cache=True, parallel=True)
def conv2d_dot_kernel(xg, wt, bias, chans, cin_g, cout_g, kw, sh, sw, dh, dw, shift, out_lo, out_hi, y):
    """Fast channels as int16 dot products along input channels (channels-last, padded input).

    xg (groups, B, Hp, Wp * cin_g) int16, wt (Cout, kh, kw * cin_g) int16. With dilation 1 the kw taps of
    one kernel row are adjacent in xg, so each (pixel, ky) is a single dot of length kw * cin_g.
    Work items are (channel, image).
    """
    B, Cout, OH, OW = y.shape
    kh = wt.shape[1]
    seg = kw * cin_g
    for item in prange(chans.size * B):
        o = chans[item // B]
        b = item % B
        go = o // cout_g
        w_o = wt[o]
        bo = np.int32(bias[o])
        for oy in range(OH):
            for ox in range(OW):
                acc = bo
                for ky in range(kh):
                    row = xg[go, b, oy * sh + ky * dh]
                    if dw == 1:
                        x0 = ox * sw * cin_g
                        acc = np.int32(acc + _dot32(w_o[ky], row[x0:x0 + seg]))
                    else:
                        for kx in range(kw):
                            x0 = (ox * sw + kx * dw) * cin_g
                            acc = np.int32(acc + _dot32(w_o[ky, kx * cin_g:(kx + 1) * cin_g], row[x0:x0 + cin_g]))
                y[b, o, oy, ox] = shift_round_clamp(acc, shift, out_lo, out_hi)


@njit(cache=True)
def _accumulate_fast(flat, plane_len, n_phase, tap_plane, tap_off, weff, o, cbase, j0, n, bias):
    """acc = bias + sum of w * x over the channel's non-zero weights, int32, four weights per pass
    (one load/store of acc per four multiply-adds)."""
    kh, kw, cin_g = weff.shape[1], weff.shape[2], weff.shape[3]
    src = np.empty(kh * kw * cin_g, np.int64)  # start of each non-zero weight's input run in `flat`
    ws = np.empty(kh * kw * cin_g, np.int32)
    nt = 0
    for ky in range(kh):
        for kx in range(kw):
            for c in range(cin_g):
                w = weff[o, ky, kx, c]
                if w != 0:
                    src[nt] = ((cbase + c) * n_phase + tap_plane[ky, kx]) * plane_len + tap_off[ky, kx] + j0
                    ws[nt] = w
                    nt += 1
    acc = np.empty(n, np.int32)
    b = np.int32(bias)
    for i in range(n):
        acc[i] = b
    t = 0
    while t + 4 <= nt:
        w0, w1, w2, w3 = ws[t], ws[t + 1], ws[t + 2], ws[t + 3]
        s0 = flat[src[t]:src[t] + n]  # slices: unit stride, no negative-index checks in the loop
        s1 = flat[src[t + 1]:src[t + 1] + n]
        s2 = flat[src[t + 2]:src[t + 2] + n]
        s3 = flat[src[t + 3]:src[t + 3] + n]
        for i in range(n):
            acc[i] = np.int32(acc[i] + w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i])
        t += 4
    while t < nt:
        w0 = ws[t]
        s0 = flat[src[t]:src[t] + n]
        for i in range(n):
            acc[i] = np.int32(acc[i] + w0 * s0[i])
        t += 1
    return acc


@njit(cache=True)
def _accumulate_exact(flat, plane_len, n_phase, tap_plane, tap_off, codes, alpha, o, cbase, group_size,
                      j0, n, bias, acc_lo, acc_hi, saturate, valid, psum_proto):
    """The canonical order for one channel: per (ky, kx, g) an exact psum, then one clamp/wrap step.

    Returns the int64 accumulators and the number of overflow events at valid grid positions.
    """
    cin_g = codes.shape[1]
    kh, kw = tap_off.shape
    G = alpha.shape[3]
    mask = np.int64(acc_hi) - np.int64(acc_lo)  # 2**acc_bits - 1
    acc = np.empty(n, np.int64)
    psum = np.empty(n, psum_proto.dtype)
    vmask = valid[j0:j0 + n]
    events = 0
    b = np.int64(bias)
    if b < acc_lo or b > acc_hi:
        for i in range(n):
            events += vmask[i]
        b = min(max(b, acc_lo), acc_hi) if saturate else ((b - acc_lo) & mask) + acc_lo
    for i in range(n):
        acc[i] = b
    for ky in range(kh):
        for kx in range(kw):
            base = tap_plane[ky, kx] * plane_len + tap_off[ky, kx] + j0
            for g in range(G):
                a = np.int64(alpha[o, ky, kx, g])
                first = True
                for c in range(g * group_size, min(cin_g, (g + 1) * group_size)):
                    code = codes[o, c, ky, kx]
                    if code == 0:
                        continue
                    start = (cbase + c) * n_phase * plane_len + base
                    s0 = flat[start:start + n]
                    if first:
                        for i in range(n):
                            psum[i] = code * s0[i]
                        first = False
                    else:
                        for i in range(n):
                            psum[i] = psum[i] + code * s0[i]
                if first or a == 0:  # psum * alpha == 0: acc unchanged, no event possible
                    continue
                if saturate:
                    for i in range(n):
                        v = acc[i] + np.int64(psum[i]) * a
                        events += vmask[i] & np.int64((v < acc_lo) | (v > acc_hi))
                        acc[i] = min(max(v, acc_lo), acc_hi)
                else:
                    for i in range(n):
                        v = acc[i] + np.int64(psum[i]) * a
                        events += vmask[i] & np.int64((v < acc_lo) | (v > acc_hi))
                        acc[i] = ((v - acc_lo) & mask) + acc_lo
    return acc, events


@njit(cache=True)
def _store_rows(acc, y, o, r0, r1, Hq, Wq, OH, OW, shift, out_lo, out_hi):
    """Round-shift, clamp and scatter the valid part of grid rows [r0, r1) into y[b, o, oy, :]."""
    for r in range(r0, r1):
        b = r // Hq
        oy = r - b * Hq
        if oy >= OH:
            continue
        src = (r - r0) * Wq
        for ox in range(OW):
            y[b, o, oy, ox] = shift_round_clamp(acc[src + ox], shift, out_lo, out_hi)


@njit(cache=True, parallel=True)
def conv2d_grid_kernel(flat, plane_len, n_phase, tap_plane, tap_off, codes, weff, alpha, bias, fast, chans,
                       psum_proto, cin_g, cout_g, group_size, Hq, Wq, rows_per_tile, acc_lo, acc_hi, saturate,
                       shift, out_lo, out_hi, valid, y):
    """Channels `chans` on the wide grid, fast or exact per channel; returns the overflow-event count.

    Work items are (channel, tile of grid rows).
    """
    B, Cout, OH, OW = y.shape
    total_rows = B * Hq
    n_tiles = (total_rows + rows_per_tile - 1) // rows_per_tile
    events = np.zeros(chans.size * n_tiles, np.int64)
    for item in prange(chans.size * n_tiles):
        o = chans[item // n_tiles]
        r0 = (item % n_tiles) * rows_per_tile
        r1 = min(total_rows, r0 + rows_per_tile)
        j0 = r0 * Wq
        n = (r1 - r0) * Wq
        cbase = (o // cout_g) * cin_g
        if fast[o]:
            acc = _accumulate_fast(flat, plane_len, n_phase, tap_plane, tap_off, weff, o, cbase, j0, n, bias[o])
            _store_rows(acc, y, o, r0, r1, Hq, Wq, OH, OW, shift, out_lo, out_hi)
        else:
            acc64, ev = _accumulate_exact(flat, plane_len, n_phase, tap_plane, tap_off, codes, alpha, o, cbase,
                                          group_size, j0, n, bias[o], acc_lo, acc_hi, saturate, valid, psum_proto)
            events[item] = ev
            _store_rows(acc64, y, o, r0, r1, Hq, Wq, OH, OW, shift, out_lo, out_hi)
    return events.sum()


@njit(cache=True, parallel=True)
def linear_kernel(x, codes, weff, alpha, bias, fast, group_size, acc_lo, acc_hi, saturate, shift,
                  out_lo, out_hi, y):
    """Fill y (B, out); returns the overflow-event count. One work item per (output feature, sample)."""
    B, n_in = x.shape
    n_out = codes.shape[0]
    G = alpha.shape[1]
    mask = np.int64(acc_hi) - np.int64(acc_lo)
    events = np.zeros(n_out * B, np.int64)
    for item in prange(n_out * B):
        o = item // B
        b = item - o * B
        if fast[o]:
            acc = np.int64(np.int32(bias[o]) + _dot32(weff[o], x[b]))
        else:
            ev = 0
            acc = np.int64(bias[o])
            if acc < acc_lo or acc > acc_hi:
                ev += 1
                acc = min(max(acc, acc_lo), acc_hi) if saturate else ((acc - acc_lo) & mask) + acc_lo
            for g in range(G):
                psum = np.int64(0)
                for c in range(g * group_size, min(n_in, (g + 1) * group_size)):
                    psum += np.int64(codes[o, c]) * x[b, c]
                v = acc + psum * np.int64(alpha[o, g])
                if v < acc_lo or v > acc_hi:
                    ev += 1
                    v = min(max(v, acc_lo), acc_hi) if saturate else ((v - acc_lo) & mask) + acc_lo
                acc = v
            events[item] = ev
        y[b, o] = shift_round_clamp(acc, shift, out_lo, out_hi)
    return events.sum()


# ----------------------------------------------------------------------------------------------- wrappers

# Kernel choice for the fast channels (measured on ResNet-50 layers, benchmarks/bench_kernels.py): the
# VNNI kernel wins on every ResNet layer where it is available (stem: on par with the grid); without it,
# dot products win on small images with many input channels (deep layers) and the wide grid on large
# images and few channels (stem).
DOT_MIN_SEGMENT = 32      # kw * cin_g: shorter dot products pay too much per-dot overhead
DOT_MAX_PIXELS = 1024     # OH * OW: above this the grid's long vector loops are faster
STRATEGY = "auto"         # "auto" | "simd" | "dot" | "grid" (tests and benchmarks force each)
PLAN_CACHE_SIZE = 256


def _fingerprint_key(a: np.ndarray) -> tuple:
    """dtype, shape and a fingerprint of the bytes: identifies an array's content without storing it."""
    b = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    n8 = b.size - b.size % 8
    words = b[:n8].view(np.uint64)
    sums = fingerprint_parallel(words) if words.size >= FINGERPRINT_PARALLEL else fingerprint(words)
    return (a.dtype.str, a.shape, *sums, bytes(b[n8:]))


def _frozen_root(a: np.ndarray) -> np.ndarray | None:
    """The last ndarray of a's ownership chain (a.base, a.base.base, ...) if no ndarray in the chain is
    writeable, else None. Such an array's bytes cannot change without someone re-enabling writes on purpose."""
    root = None
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return None
        root, a = a, a.base
    return root


_identity_keys = LruCache(4 * PLAN_CACHE_SIZE)


def _content_key(a: np.ndarray) -> tuple:
    """_fingerprint_key(a), remembered per object for read-only arrays (tersim.quantize.graph freezes every
    layer's weights): a forward pass then re-hashes none of ResNet-50's 25 M weights. Writeable arrays are
    hashed on every call, so a caller that edits its weights in place still gets fresh plans."""
    root = _frozen_root(a)
    if root is None:
        return _fingerprint_key(a)
    ident = (id(root), a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str)
    hit = _identity_keys.get(ident)
    if hit is not None and hit[0]() is root:  # a dead weakref (id reused by a new object) is a miss
        return hit[1]
    key = _fingerprint_key(a)
    _identity_keys.put(ident, (weakref.ref(root), key))
    return key


_plan_cache = LruCache(PLAN_CACHE_SIZE)
_weight_max_cache = LruCache(PLAN_CACHE_SIZE)


def _weight_keys(codes, alpha_q) -> tuple[tuple, tuple[int, int] | None]:
    """Content keys of (codes, alpha_q) and their remembered (max|codes|, max|alpha_q|), if seen before:
    the argument checks then skip two scans of the weights per call."""
    wkey = (_content_key(np.asarray(codes)), _content_key(np.asarray(alpha_q)))
    return wkey, _weight_max_cache.get(wkey)


def _remember_weight_max(wkey: tuple, codes: np.ndarray, alpha_q: np.ndarray) -> None:
    if wkey not in _weight_max_cache:
        _weight_max_cache.put(wkey, (max_abs(codes), max_abs(alpha_q)))


def _weight_plan(codes4: np.ndarray, alpha4: np.ndarray, group_size: int, wkey: tuple | None = None) -> dict:
    """plan_channels for these weights, cached by content: a deep layer at batch 1 has only ~50 MACs per
    weight, so re-deriving the folded weights on every call would cost as much as the conv. wkey: the
    content keys of (codes4, alpha4) if the caller has them (reshaping does not change the bytes)."""
    if wkey is None:
        wkey = (_content_key(codes4), _content_key(alpha4))
    key = (*wkey, int(group_size))
    plan = _plan_cache.get(key)
    if plan is None:
        codes_t = np.ascontiguousarray(codes4.transpose(0, 2, 3, 1), np.int8)
        S, weff, wmax = plan_channels(codes_t, np.ascontiguousarray(alpha4, np.int32), int(group_size))
        if wmax.size and wmax.max() < 2**15:  # the usual case: int16 holds every folded weight, half the memory
            weff = weff.astype(np.int16)
        plan = {"S": S, "weff": weff, "wmax": wmax, "source": (codes4, alpha4, int(group_size)), "key": key}
        _plan_cache.put(key, plan)
    return plan


def _folded_weights(plan: dict) -> np.ndarray:
    """plan["weff"], re-derived from the plan's weights if _simd_weights dropped it."""
    if "weff" not in plan:
        codes4, alpha4, group_size = plan["source"]
        if (_content_key(codes4), _content_key(alpha4), group_size) != plan["key"]:
            raise RuntimeError("conv weights were modified in place after their first use; pass a copy instead")
        codes_t = np.ascontiguousarray(codes4.transpose(0, 2, 3, 1), np.int8)
        weff = plan_channels(codes_t, np.ascontiguousarray(alpha4, np.int32), group_size)[1]
        plan["weff"] = weff.astype(np.int16) if plan["wmax"].max() < 2**15 else weff
    return plan["weff"]


def _int16_weights(plan: dict) -> np.ndarray:
    """weff as int16 (Cout, kh, kw * cin_g), made once per plan (a view when weff is int16 already); only rows
    with wmax < 2**15 are meaningful."""
    if "w16" not in plan:
        weff = _folded_weights(plan)
        Cout, kh, kw, cin_g = weff.shape
        plan["w16"] = weff.astype(np.int16, copy=False).reshape(Cout, kh, kw * cin_g)
    return plan["w16"]


def _simd_weights(plan: dict) -> tuple[np.ndarray, int]:
    """The int16 weights packed for tersim.kernels.simd (input channels padded to even), made once per plan."""
    if "wp" not in plan:
        Cout, kh, kw, cin_g = _folded_weights(plan).shape
        plan["cin_pad"] = cin_g + cin_g % 2
        plan["wp"] = simd.pack_weights(_int16_weights(plan).reshape(Cout, kh, kw, cin_g), plan["cin_pad"])
        if plan["weff"].dtype == np.int16:
            # every fast channel fits int16, so with |x| < 2**15 all of them run on wp and the grid never
            # reads weff; cached layers hold only the packed copy (re-derived in the rare other case)
            del plan["weff"], plan["w16"]
    return plan["wp"], plan["cin_pad"]


def _fast_channels(plan: dict, bias_q: np.ndarray, spec: ConvSpec, xmax: int) -> np.ndarray:
    """Channels whose every partial sum provably fits the accumulator and int32 (see plan_channels)."""
    limit = min(spec.acc_hi, 2**31 - 1) * (1 - 1e-9)  # margin absorbs float rounding of the bound
    bound = np.abs(bias_q.astype(np.float64)) + float(xmax) * plan["S"]
    return (bound <= limit) & (plan["wmax"] < 2**31)


def _phase_planes(x: np.ndarray, spec: ConvSpec, Hq: int, Wq: int, dtype) -> np.ndarray:
    """Zero-padded, stride-phase-split copy of x: planes[(c*sh + p)*sw + q] is the flat grid of padded
    rows p, p+sh, ... and columns q, q+sw, ... of every image stacked (Hq rows each), plus spare zero
    rows at the end so the thrown-away grid positions read in bounds."""
    B, C, H, W = x.shape
    (sh, sw), (ph, pw) = spec.stride, spec.padding
    extra = Hq - spec.OH + 1
    planes = np.zeros((C, sh, sw, B * Hq + extra, Wq), dtype)
    grid = planes[:, :, :, : B * Hq].reshape(C, sh, sw, B, Hq, Wq)
    xt = x.transpose(1, 0, 2, 3)
    for p in range(sh):
        q0 = max(0, -(-(ph - p) // sh))                  # first plane row inside the image
        q1 = min(Hq, (H - 1 + ph - p) // sh + 1)         # one past the last
        for q in range(sw):
            t0 = max(0, -(-(pw - q) // sw))
            t1 = min(Wq, (W - 1 + pw - q) // sw + 1)
            if q1 > q0 and t1 > t0:
                grid[:, p, q, :, q0:q1, t0:t1] = xt[:, :, q0 * sh + p - ph:(q1 - 1) * sh + p - ph + 1:sh,
                                                    t0 * sw + q - pw:(t1 - 1) * sw + q - pw + 1:sw]
    return planes.reshape(C * sh * sw, (B * Hq + extra) * Wq)


def _run_grid(x, codes, alpha_q, bias_q, spec: ConvSpec, fast, weff, chans, xmax, saturate, shift, y) -> int:
    """Channels `chans` through the wide-grid kernel (fast or exact per channel)."""
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    Hq = spec.OH + (spec.kh - 1) * dh // sh
    Wq = spec.OW + (spec.kw - 1) * dw // sw
    planes = _phase_planes(x, spec, Hq, Wq, np.int16 if xmax < 2**15 else np.int32)
    ky, kx = np.meshgrid(np.arange(spec.kh) * dh, np.arange(spec.kw) * dw, indexing="ij")
    tap_plane = ((ky % sh) * sw + kx % sw).astype(np.int64)
    tap_off = ((ky // sh) * Wq + kx // sw).astype(np.int64)
    valid = np.zeros((spec.B, Hq, Wq), np.int64)
    valid[:, : spec.OH, : spec.OW] = 1
    psum_bound = xmax * max_abs(codes) * min(spec.group_size, spec.cin_g)
    psum_dtype = np.int16 if psum_bound < 2**15 and xmax < 2**15 else np.int32 if psum_bound < 2**31 else np.int64
    return conv2d_grid_kernel(planes.reshape(-1), planes.shape[1], sh * sw, tap_plane, tap_off,
                              np.ascontiguousarray(codes, np.int8), weff, np.ascontiguousarray(alpha_q, np.int32),
                              np.ascontiguousarray(bias_q, np.int64), fast, chans, np.zeros(1, psum_dtype),
                              spec.cin_g, spec.cout_g, spec.group_size, Hq, Wq, max(1, TILE_TARGET // Wq),
                              spec.acc_lo, spec.acc_hi, bool(saturate), int(shift), spec.out_lo, spec.out_hi,
                              valid.reshape(-1), y)


def _run_dot(x, bias_q, spec: ConvSpec, w16, chans, shift, y) -> None:
    """Fast channels `chans` through the channels-last int16 dot-product kernel."""
    B, C, H, W = x.shape
    (ph, pw), g, cg = spec.padding, spec.groups, spec.cin_g
    xg = np.zeros((g, B, H + 2 * ph, W + 2 * pw, cg), np.int16)
    xg[:, :, ph:ph + H, pw:pw + W, :] = x.reshape(B, g, cg, H, W).transpose(1, 0, 3, 4, 2)
    conv2d_dot_kernel(xg.reshape(g, B, H + 2 * ph, -1), w16, np.ascontiguousarray(bias_q, np.int64), chans, cg,
                      spec.cout_g, spec.kw, *spec.stride, *spec.dilation, int(shift), spec.out_lo, spec.out_hi, y)


class _ConvCall:
    """What conv2d_int derives from its weights, arguments and x's shape and max: the checked spec, the plan's
    key, the fast/chosen channel masks, the kernel and the VNNI channel arguments. Kept per call signature
    when the weights are read-only (_call_cache), so a forward pass re-checks and re-plans nothing."""

    __slots__ = ("spec", "plan_key", "fast", "chosen", "kernel", "vnni_channels", "roots")

    def __init__(self, spec, plan_key, fast, chosen, kernel, roots):
        self.spec, self.plan_key, self.fast, self.chosen, self.kernel = spec, plan_key, fast, chosen, kernel
        self.vnni_channels = None
        self.roots = roots  # weakrefs of the weights' frozen roots: a hit must see the very same arrays


_call_cache = LruCache(4 * PLAN_CACHE_SIZE)


def _call_key(x, codes, alpha_q, bias_q, args: tuple, x_max: int | None) -> tuple[tuple | None, tuple, int | None]:
    """(cache key, frozen roots of the weights, max|x| or the caller's bound) of a conv2d_int call, or
    (None, (), x_max) when a weight array is writeable (its content may change: the call is checked and
    planned afresh) or x is not an integer 4-D array (check_conv raises the error)."""
    roots = tuple(_frozen_root(a) if isinstance(a, np.ndarray) else None for a in (codes, alpha_q, bias_q))
    if any(r is None for r in roots) or not (isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype.kind in "iu"):
        return None, (), x_max
    xmax = max_abs(x) if x_max is None else int(x_max)
    weights = tuple((id(r), a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str)
                    for r, a in zip(roots, (codes, alpha_q, bias_q)))
    key = (weights, x.shape, x.dtype.str, xmax, args, STRATEGY, simd.HAVE_VNNI)
    try:
        hash(key)
    except TypeError:  # e.g. a list for stride: fine for check_conv, just not cached
        return None, (), xmax
    return key, roots, xmax


def _cached_call(key: tuple | None, roots: tuple) -> tuple[_ConvCall | None, dict | None]:
    if key is None:
        return None, None
    call = _call_cache.get(key)
    if call is None or any(ref() is not r for ref, r in zip(call.roots, roots)):
        return None, None
    plan = _plan_cache.get(call.plan_key)
    if plan is None:  # the plan was evicted: plan again
        return None, None
    return call, plan


def _plan_call(x, codes, alpha_q, bias_q, group_size, stride, padding, dilation, groups, acc_bits, out_lo, out_hi,
               group_layout, scales, xmax) -> tuple[_ConvCall, dict | None, tuple]:
    """Check the call and choose its channels and kernel; returns the call, its plan and the checked arrays."""
    wkey, known = _weight_keys(codes, alpha_q)
    spec, x, codes, alpha_q, bias_q = check_conv(x, codes, alpha_q, bias_q, group_size=group_size, stride=stride,
                                                 padding=padding, dilation=dilation, groups=groups,
                                                 acc_bits=acc_bits, out_lo=out_lo, out_hi=out_hi,
                                                 group_layout=group_layout, scales=scales, weight_max=known,
                                                 x_max=xmax)
    _remember_weight_max(wkey, codes, alpha_q)
    if not spec.is_default_variant or spec.B * spec.Cout == 0:
        return _ConvCall(spec, None, None, None, None, ()), None, (x, codes, alpha_q, bias_q)
    xmax = spec.xmax
    plan = _weight_plan(codes, alpha_q, spec.group_size, wkey)
    fast = _fast_channels(plan, bias_q, spec, xmax)
    segment = spec.cin_g * (spec.kw if spec.dilation[1] == 1 else 1)
    has_simd = simd.HAVE_VNNI and spec.groups == 1
    if STRATEGY in ("auto", "simd") and has_simd:
        kernel = "simd"
    elif STRATEGY in ("auto", "simd"):  # no VNNI: the pure-Numba kernels
        kernel = "dot" if segment >= DOT_MIN_SEGMENT and spec.OH * spec.OW <= DOT_MAX_PIXELS else "grid"
    else:
        kernel = STRATEGY
    # simd and dot take the fast channels with int16 operands; the grid takes the rest (fast or exact)
    chosen = fast & (plan["wmax"] < 2**15) & (xmax < 2**15) & (kernel != "grid")
    return _ConvCall(spec, plan["key"], fast, chosen, kernel, ()), plan, (x, codes, alpha_q, bias_q)


def conv2d_int(x: np.ndarray, codes: np.ndarray, alpha_q: np.ndarray, bias_q: np.ndarray, *, group_size: int,
               stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int,
               acc_bits: int, saturate: bool, shift: int, out_lo: int, out_hi: int, group_layout: str = "channel",
               scales: str | int = 1, x_max: int | None = None) -> tuple[np.ndarray, int]:
    """Integer conv2d: x (B, Cin, H, W), codes int8 (Cout, Cin/groups, kh, kw), alpha_q (Cout, kh, kw, G),
    bias_q (Cout,) -> (y int32 (B, Cout, OH, OW), overflow events). The design-space variants (kernel group
    layout, two scales: alpha_q shapes in tersim.quantize.fgq) run on tersim.kernels.grouped.

    x_max: a bound on max|x| the caller guarantees (tersim.engine.execute knows it from the producer's clamp),
    used in place of a scan of x. Any bound gives the same result: it only decides which channels provably
    cannot overflow (and may run in int16), and both paths are exact; a loose bound only costs speed."""
    args = (group_size, stride, padding, dilation, groups, acc_bits, out_lo, out_hi, group_layout, scales)
    key, roots, xmax = _call_key(x, codes, alpha_q, bias_q, args, x_max)
    call, plan = _cached_call(key, roots)
    if call is None:
        call, plan, (x, codes, alpha_q, bias_q) = _plan_call(x, codes, alpha_q, bias_q, *args, xmax)
        if key is not None and plan is not None:
            call.roots = tuple(weakref.ref(r) for r in roots)
            _call_cache.put(key, call)
    spec = call.spec
    if not spec.is_default_variant:
        return conv2d_grouped(x, codes, alpha_q, bias_q, spec, saturate, shift)
    y = np.empty((spec.B, spec.Cout, spec.OH, spec.OW), np.int32)
    if y.size == 0:
        return y, 0
    kernel, fast, chosen = call.kernel, call.fast, call.chosen
    if kernel == "simd" and chosen.any():
        wp, cin_pad = _simd_weights(plan)
        if call.vnni_channels is None:
            call.vnni_channels = simd.channel_args(wp, bias_q, chosen)
        simd.conv2d_vnni(x, wp, cin_pad, bias_q, chosen, spec.kh, spec.kw, spec.stride, spec.padding, spec.dilation,
                         int(shift), spec.out_lo, spec.out_hi, y, call.vnni_channels)
    elif kernel == "dot" and chosen.any():
        _run_dot(x, bias_q, spec, _int16_weights(plan), np.flatnonzero(chosen), shift, y)
    events = 0
    if not chosen.all():
        events = _run_grid(x, codes, alpha_q, bias_q, spec, fast, _folded_weights(plan), np.flatnonzero(~chosen),
                           spec.xmax, saturate, shift, y)
    return y, int(events)


def linear_int(x: np.ndarray, codes: np.ndarray, alpha_q: np.ndarray, bias_q: np.ndarray, *, group_size: int,
               acc_bits: int, saturate: bool, shift: int, out_lo: int, out_hi: int, group_layout: str = "channel",
               scales: str | int = 1) -> tuple[np.ndarray, int]:
    """Integer linear: x (B, in), codes int8 (out, in), alpha_q (out, G) (two scales: (out, G, 2)), bias_q (out,)
    -> (y int32 (B, out), events). Both group layouts are the same on a linear layer."""
    spec, x, codes, alpha_q, bias_q = check_linear(x, codes, alpha_q, bias_q, group_size=group_size,
                                                   acc_bits=acc_bits, out_lo=out_lo, out_hi=out_hi,
                                                   group_layout=group_layout, scales=scales)
    if not spec.is_default_variant:
        y, events = conv2d_grouped(x[:, :, None, None], codes[:, :, None, None], linear_alpha_as_conv(alpha_q),
                                   bias_q, spec, saturate, shift)
        return y.reshape(spec.B, spec.Cout), events
    y = np.empty((spec.B, spec.Cout), np.int32)
    if y.size == 0:
        return y, 0
    xmax = spec.xmax
    plan = _weight_plan(codes[:, :, None, None], alpha_q[:, None, None, :], spec.group_size)
    fast = _fast_channels(plan, bias_q, spec, xmax)
    narrow = xmax < 2**15 and plan["wmax"][fast].max(initial=0) < 2**15  # int16 operands: vpmaddwd
    weff = _int16_weights(plan)[:, 0, :] if narrow else _folded_weights(plan)[:, 0, 0, :]  # only fast rows are read
    events = linear_kernel(np.ascontiguousarray(x, np.int16 if narrow else np.int32),
                           np.ascontiguousarray(codes, np.int8), weff, np.ascontiguousarray(alpha_q, np.int32),
                           np.ascontiguousarray(bias_q, np.int64), fast, spec.group_size, spec.acc_lo,
                           spec.acc_hi, bool(saturate), int(shift), spec.out_lo, spec.out_hi, y)
    return y, int(events)
