"""AVX-512 VNNI micro-kernel for the fast conv path (int16 x int16 -> int32 dot-accumulate, `vpdpwssd`).

Only the fast path of tersim.kernels.conv runs here: channels whose every partial sum provably fits int32,
with alpha folded into the weights (w = code * alpha, |w| < 2**15) and |x| < 2**15. On those channels the
order of the sum is free and two's-complement int32 arithmetic is exact, so one `vpdpwssd` (16 lanes x
2 products, added into 16 int32 accumulators, wrapping) is bit-exact.

Layout (outer-product form, the usual GEMM micro-kernel):
* activations: zero-padded, channels-last, int16, channel count padded to even, so one (pixel, ky, kx,
  channel pair) is one int32 "pair word": xq[b, iy, ix, c2] (int32 view of two int16 channels). With
  dilation 1 along x the kw taps of a kernel row are adjacent, so a kernel row is one *run* of
  kw * Cp/2 consecutive pair words; the run's start relative to the pixel is `runs[r]`.
* weights: packed per block of LANES = 16 * CB output channels as wp[blk, k2, lane] = the int32 pair word
  (w[o, k, 2*c2], w[o, k, 2*c2 + 1]) of output channel blk * LANES + lane, k2 running over the runs in
  order. One k2 step of a block is CB zmm vectors, read contiguously.
* one tile = P pixels x LANES channels, held in P * CB zmm accumulators for the whole reduction: per k2
  step, CB weight vectors are loaded and each pixel's pair word is broadcast (embedded {1to16} memory
  operand) into CB `vpdpwssd`. That is CB + P loads per P * CB instructions of 32 MACs, instead of two
  loads and a horizontal reduction per 32 MACs in a dot-product kernel.
* pixels of a tile are any P output pixels (flattened over images and rows), given by their base pair
  word in xq, so strides and image edges need no special cases and only the last tile is short.

The micro-kernel is a Numba @intrinsic built with llvmlite's IR builder; a switch on the tile's pixel
count selects a body specialised for that count (registers must be fixed at compile time). It is only
used when the host CPU has avx512vnni (HAVE_VNNI); tersim.kernels.conv falls back to its pure-Numba
kernels otherwise.
"""
from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic

from tersim.kernels.arith import INT32_MAX, INT32_MIN, shift_round_clamp
from tersim.kernels.common import LruCache

CB = 2                 # zmm vectors of 16 output channels per tile
LANES = 16 * CB        # output channels per tile
PMAX = 12              # pixels per tile: CB * PMAX = 24 of the 32 zmm registers hold accumulators
ITEMS_PER_CHUNK = 8    # tiles per parallel work item: amortises the tile buffer, keeps 2 threads balanced


def _host_has_vnni() -> bool:
    try:
        feats = llvm.get_host_cpu_features()
    except Exception:  # pragma: no cover - llvmlite without host feature query
        return False
    return bool(feats.get("avx512vnni", False) and feats.get("avx512bw", False) and feats.get("avx512f", False))


HAVE_VNNI = _host_has_vnni()

_VEC = ir.VectorType(ir.IntType(32), 16)


def _emit_tile(builder, npix, wbase, xbase, bases, runs, n_runs, run_len, acc_slots):
    """IR for one tile of `npix` pixels: zero the accumulators, reduce over every run, leave them in acc_slots."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    dpw = builder.module.declare_intrinsic("llvm.x86.avx512.vpdpwssd.512", fnty=ir.FunctionType(_VEC, [_VEC] * 3))
    zero = ir.Constant(_VEC, None)
    for p in range(npix):
        for c in range(CB):
            builder.store(zero, acc_slots[p][c])
    pix = [builder.load(builder.gep(bases, [ir.Constant(i64, p)])) for p in range(npix)]
    undef = ir.Constant(_VEC, ir.Undefined)
    splat_mask = ir.Constant(_VEC, None)
    with cgutils.for_range(builder, n_runs) as run_loop:
        r = run_loop.index
        roff = builder.load(builder.gep(runs, [r]))
        xrow = [builder.gep(xbase, [builder.add(pix[p], roff)]) for p in range(npix)]
        wrun = builder.gep(wbase, [builder.mul(builder.mul(r, run_len), ir.Constant(i64, LANES))])
        with cgutils.for_range(builder, run_len) as k_loop:
            i = k_loop.index
            wk = builder.gep(wrun, [builder.mul(i, ir.Constant(i64, LANES))])
            wv = [builder.load(builder.bitcast(builder.gep(wk, [ir.Constant(i64, 16 * c)]), _VEC.as_pointer()),
                               align=4) for c in range(CB)]
            for p in range(npix):
                xs = builder.load(builder.gep(xrow[p], [i]), align=4)
                xv = builder.shuffle_vector(builder.insert_element(undef, xs, ir.Constant(i32, 0)), undef,
                                            splat_mask)
                for c in range(CB):
                    builder.store(builder.call(dpw, [builder.load(acc_slots[p][c]), wv[c], xv]), acc_slots[p][c])


@intrinsic
def _vnni_tile(typingctx, wp, w0, xq, bases, b0, npix, runs, run_len, out):
    """out[p * LANES + lane] = sum over k2 of the pair-word dot of wp[w0 + k2 * LANES + lane] and
    xq[bases[b0 + p] + runs[r] + i] (k2 = r * run_len + i), for p < npix <= PMAX (all arrays int32)."""
    if any(a.dtype != t for a, t in ((wp, types.int32), (xq, types.int32), (bases, types.int64),
                                     (runs, types.int64), (out, types.int32))):
        return None  # the IR below addresses elements of exactly these types
    sig = types.void(wp, w0, xq, bases, b0, npix, runs, run_len, out)

    def codegen(context, builder, signature, args):
        wp_, w0_, xq_, bases_, b0_, npix_, runs_, run_len_, out_ = args
        wty, _, xty, bty, _, _, rty, _, oty = signature.args
        data = [context.make_array(t)(context, builder, v).data for t, v in
                ((wty, wp_), (xty, xq_), (bty, bases_), (rty, runs_), (oty, out_))]
        wdata, xdata, bdata, rdata, odata = data
        rarr = context.make_array(rty)(context, builder, runs_)
        n_runs = builder.extract_value(rarr.shape, 0)
        wbase = builder.gep(wdata, [w0_])
        pbase = builder.gep(bdata, [b0_])
        acc_slots = [[cgutils.alloca_once(builder, _VEC) for _ in range(CB)] for _ in range(PMAX)]
        end = builder.append_basic_block("tile_end")
        switch = builder.switch(npix_, end)
        for n in range(1, PMAX + 1):
            block = builder.append_basic_block(f"tile_{n}")
            switch.add_case(ir.Constant(npix_.type, n), block)
            builder.position_at_end(block)
            _emit_tile(builder, n, wbase, xdata, pbase, rdata, n_runs, run_len_, acc_slots)
            for p in range(n):
                for c in range(CB):
                    dst = builder.gep(odata, [ir.Constant(ir.IntType(64), p * LANES + 16 * c)])
                    builder.store(builder.load(acc_slots[p][c]), builder.bitcast(dst, _VEC.as_pointer()), align=4)
            builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _store_tile_t(typingctx, acc, npix, bias, b0, shift, lo, hi, y, d0, plane, rowmask):
    """Requantize one tile and store it transposed: y[d0 + lane * plane + p] = clamp(round_shift(acc[p * LANES
    + lane] + bias[b0 + lane], shift), lo, hi) for p < npix <= PMAX and every lane whose bit is set in rowmask
    (int32 arrays; 0 <= shift < 31, shift 0 with bias 0 and the int32 range is a plain transposed copy).

    Per 16 lanes: PMAX row loads, the round-half-even shift and clamp in int32 vectors (exact: acc + bias
    fits int32 on a fast channel, q << shift and the remainder stay in range), a 4-round shuffle transpose
    (rows padded to 16 with zeros) and one masked store of npix pixels per lane, instead of PMAX * 16
    scalar stores."""
    if acc.dtype != types.int32 or y.dtype != types.int32 or bias.dtype != types.int32:
        return None  # the IR below addresses int32 elements
    sig = types.void(acc, npix, bias, b0, shift, lo, hi, y, d0, plane, rowmask)

    def codegen(context, builder, signature, args):
        acc_, npix_, bias_, b0_, shift_, lo_, hi_, y_, d0_, plane_, rowmask_ = args
        i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
        ad = context.make_array(signature.args[0])(context, builder, acc_).data
        bd = builder.gep(context.make_array(signature.args[2])(context, builder, bias_).data, [b0_])
        yd = builder.gep(context.make_array(signature.args[7])(context, builder, y_).data, [d0_])
        vp = _VEC.as_pointer()
        undef = ir.Constant(_VEC, ir.Undefined)

        def splat(v):
            v = builder.trunc(v, i32) if v.type.width > 32 else builder.sext(v, i32) if v.type.width < 32 else v
            return builder.shuffle_vector(builder.insert_element(undef, v, ir.Constant(i32, 0)), undef,
                                          ir.Constant(_VEC, None))

        mask = builder.icmp_signed("<", ir.Constant(_VEC, list(range(16))), splat(npix_))
        sv, lov, hiv = splat(shift_), splat(lo_), splat(hi_)
        zero, one = ir.Constant(_VEC, None), ir.Constant(_VEC, [1] * 16)
        halfv = builder.ashr(builder.shl(one, sv), one)   # 2**(shift-1), 0 for shift 0
        mstore = builder.module.declare_intrinsic(
            "llvm.masked.store.v16i32.p0", fnty=ir.FunctionType(ir.VoidType(), [_VEC, vp, i32, ir.VectorType(i1, 16)]))
        rowmask64 = builder.sext(rowmask_, i64) if rowmask_.type.width < 64 else rowmask_

        def requantize(v):
            q = builder.ashr(v, sv)
            r = builder.sub(v, builder.shl(q, sv))
            tie = builder.and_(builder.and_(builder.icmp_signed("==", r, halfv), builder.icmp_signed("!=", r, zero)),
                               builder.icmp_signed("!=", builder.and_(q, one), zero))
            q = builder.add(q, builder.zext(builder.or_(builder.icmp_signed(">", r, halfv), tie), _VEC))
            q = builder.select(builder.icmp_signed("<", q, lov), lov, q)
            return builder.select(builder.icmp_signed(">", q, hiv), hiv, q)

        for c in range(CB):
            bv = builder.load(builder.bitcast(builder.gep(bd, [ir.Constant(i64, 16 * c)]), vp), align=4)
            v = [requantize(builder.add(builder.load(builder.bitcast(
                     builder.gep(ad, [ir.Constant(i64, p * LANES + 16 * c)]), vp), align=4), bv))
                 if p < PMAX else zero for p in range(16)]
            v = _transpose16(builder, v)
            for i in range(16):
                lane = 16 * c + i
                bit = builder.and_(builder.lshr(rowmask64, ir.Constant(i64, lane)), ir.Constant(i64, 1))
                with builder.if_then(builder.icmp_unsigned("!=", bit, ir.Constant(i64, 0))):
                    dst = builder.gep(yd, [builder.mul(plane_, ir.Constant(i64, lane))])
                    builder.call(mstore, [v[i], builder.bitcast(dst, vp), ir.Constant(i32, 4), mask])
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------------------------- layout

def pack_weights(w16: np.ndarray, cin_pad: int) -> np.ndarray:
    """w16 (Cout, kh, kw, cin_g) int16 -> wp (nblk, K2 * LANES) int32 pair words (see module docstring);
    channels beyond cin_g and output channels beyond Cout are zero."""
    Cout, kh, kw, cin_g = w16.shape
    nblk = -(-Cout // LANES)
    w = np.zeros((nblk * LANES, kh, kw, cin_pad), np.int16)
    w[:Cout, :, :, :cin_g] = w16
    k2 = kh * kw * cin_pad // 2
    pairs = w.reshape(nblk, LANES, k2, 2).transpose(0, 2, 1, 3)  # (nblk, K2, LANES, 2)
    return np.ascontiguousarray(pairs).view(np.int32).reshape(nblk, k2 * LANES)


def _transpose_masks(b: int) -> tuple[list[int], list[int]]:
    """Shuffle masks of one round of a 16 x 16 transpose: rows r, r + b (bit b of r clear) swap their
    off-diagonal b x b blocks, i.e. element (r, i) moves to (r with bit b of i, i with bit b of r)."""
    first = [i if i & b == 0 else 16 + i - b for i in range(16)]
    second = [i + b if i & b == 0 else 16 + i for i in range(16)]
    return first, second


def _transpose16(builder, v: list) -> list:
    """IR of a 16 x 16 int32 transpose of the rows v (16 vectors): 4 rounds of 8 two-source shuffle pairs."""
    for b in (1, 2, 4, 8):
        first, second = _transpose_masks(b)
        w = list(v)
        for r in range(16):
            if r & b == 0:
                w[r] = builder.shuffle_vector(v[r], v[r + b], ir.Constant(_VEC, first))
                w[r + b] = builder.shuffle_vector(v[r], v[r + b], ir.Constant(_VEC, second))
        v = w
    return v


@intrinsic
def _pairs_block(typingctx, x, x0, plane, nw, dst, d0, row):
    """16 channel pairs x nw <= 16 pixels: dst[d0 + i * row + j] = lo16(x[x0 + 2j * plane + i]) |
    x[x0 + (2j + 1) * plane + i] << 16 (int32 arrays): 32 masked row loads, a 4-round shuffle transpose
    (64 two-source shuffles) and nw row stores, instead of 256 scalar scattered stores."""
    if x.dtype != types.int32 or dst.dtype != types.int32:
        return None  # the IR below addresses int32 elements
    sig = types.void(x, x0, plane, nw, dst, d0, row)

    def codegen(context, builder, signature, args):
        x_, x0_, plane_, nw_, dst_, d0_, row_ = args
        i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
        xd = builder.gep(context.make_array(signature.args[0])(context, builder, x_).data, [x0_])
        dd = builder.gep(context.make_array(signature.args[4])(context, builder, dst_).data, [d0_])
        vp = _VEC.as_pointer()
        lanes = ir.Constant(_VEC, list(range(16)))
        nwv = builder.shuffle_vector(builder.insert_element(ir.Constant(_VEC, ir.Undefined), builder.trunc(nw_, i32),
                                                            ir.Constant(i32, 0)), ir.Constant(_VEC, ir.Undefined),
                                     ir.Constant(_VEC, None))
        mask = builder.icmp_signed("<", lanes, nwv)
        mload = builder.module.declare_intrinsic(
            "llvm.masked.load.v16i32.p0",
            fnty=ir.FunctionType(_VEC, [vp, i32, ir.VectorType(i1, 16), _VEC]))
        zero = ir.Constant(_VEC, None)

        def load(k):
            ptr = builder.bitcast(builder.gep(xd, [builder.mul(plane_, ir.Constant(i64, k))]), vp)
            return builder.call(mload, [ptr, ir.Constant(i32, 4), mask, zero])

        low16 = ir.Constant(_VEC, [0xFFFF] * 16)
        sixteen = ir.Constant(_VEC, [16] * 16)
        v = [builder.or_(builder.and_(load(2 * j), low16), builder.shl(load(2 * j + 1), sixteen)) for j in range(16)]
        v = _transpose16(builder, v)
        end = builder.append_basic_block("pairs_end")
        for i in range(16):
            store = builder.append_basic_block(f"pairs_store_{i}")
            builder.cbranch(builder.icmp_signed(">", nw_, ir.Constant(nw_.type, i)), store, end)
            builder.position_at_end(store)
            builder.store(v[i], builder.bitcast(builder.gep(dd, [builder.mul(row_, ir.Constant(i64, i))]), vp), align=4)
        builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, parallel=True)
def channels_last_pairs(x, ph, pw, c2):
    """x (B, C, H, W) int32, C-contiguous -> zero-padded channels-last pair words (B, H + 2ph, W + 2pw, c2) int32: the low
    half of word c is channel 2c, the high half channel 2c + 1 (zero beyond C); values must fit int16.

    Blocks of 16 channel pairs x 16 pixels are transposed in registers (_pairs_block); the channel tail
    (C not a multiple of 32) is copied with scalar code.
    """
    B, C, H, W = x.shape
    Hp, Wp = H + 2 * ph, W + 2 * pw
    xq = np.empty((B, Hp, Wp, c2), np.int32)
    xf = x.reshape(-1)
    qf = xq.reshape(-1)
    plane = H * W
    full = C // 32  # blocks of 16 complete pairs
    for item in prange(B * Hp):
        b = item // Hp
        hp = item % Hp
        h = hp - ph
        dst = xq[b, hp]
        if h < 0 or h >= H:
            dst[:, :] = 0
            continue
        dst[:pw, :] = 0
        dst[pw + W:, :] = 0
        for w0 in range(0, W, 16):
            nw = min(16, W - w0)
            for cb in range(full):
                _pairs_block(xf, (b * C + 32 * cb) * plane + h * W + w0, plane, nw, qf,
                             ((b * Hp + hp) * Wp + pw + w0) * c2 + 16 * cb, c2)
            for c in range(16 * full, C // 2):
                lo = x[b, 2 * c, h]
                hi = x[b, 2 * c + 1, h]
                for w in range(w0, w0 + nw):
                    dst[w + pw, c] = (lo[w] & 0xFFFF) | (hi[w] << 16)
            if C % 2:
                lo = x[b, C - 1, h]
                for w in range(w0, w0 + nw):
                    dst[w + pw, C // 2] = lo[w] & 0xFFFF
        for c in range(-(-C // 2), c2):
            for w in range(W):
                dst[w + pw, c] = 0
    return xq


# ----------------------------------------------------------------------------------------------- kernel

@njit(cache=True, inline="always")
def _requantize_tile(acc, n, bb, shift, out_lo, out_hi):
    """acc[p * LANES + lane] = clamp(round_shift(acc + bb[lane], shift)) for p < n. acc + bias fits int32 on
    a fast channel, and for 0 < shift < 31 the round-half-even shift is exact in int32 (q << shift and the
    remainder stay in range), so the common case runs 16 lanes per vector op; other shifts take int64."""
    if 0 < shift < 31:
        half = np.int32(1 << (shift - 1))
        lo = np.int32(out_lo)
        hi = np.int32(out_hi)
        for p in range(n):
            for lane in range(LANES):
                v = np.int32(acc[p * LANES + lane] + bb[lane])
                q = np.int32(v >> shift)
                r = np.int32(v - (q << shift))
                q = np.int32(q + np.int32((r > half) | ((r == half) & ((q & 1) == 1))))
                acc[p * LANES + lane] = min(max(q, lo), hi)
    else:
        for p in range(n):
            for lane in range(LANES):
                acc[p * LANES + lane] = shift_round_clamp(np.int32(acc[p * LANES + lane] + bb[lane]), shift, out_lo,
                                                          out_hi)


@njit(cache=True, parallel=True)
def conv2d_vnni_kernel(xq, wp, bias32, use, rowmask, bases, outs, runs, run_len, plane, shift, out_lo, out_hi, y):
    """y[o * plane + outs[pix]] for channels with use[o], on tiles of PMAX pixels x LANES channels.

    xq: flat int32 pair words of the padded channels-last input; wp (nblk, K2 * LANES) int32; bases: base
    pair word of every output pixel (b, oy, ox) flattened, outs: its offset in the flat y of channel 0;
    runs: start of each kernel run relative to the base; rowmask[blk]: bit lane set when channel
    blk * LANES + lane is used. Work items are (channel block, pixel tile), block-major so that one thread
    reuses a block's weights. A tile whose pixels are consecutive in y (all but tiles that straddle two
    images) is stored transposed by _store_tile_t.
    """
    npx = bases.size
    Cout = use.size
    n_tiles = (npx + PMAX - 1) // PMAX
    nblk = wp.shape[0]
    n_items = nblk * n_tiles
    n_chunks = (n_items + ITEMS_PER_CHUNK - 1) // ITEMS_PER_CHUNK
    fused = 0 < shift < 31  # _store_tile_t requantizes; other shifts take _requantize_tile's int64 path
    zero_bias = np.zeros(LANES, np.int32)
    for chunk in prange(n_chunks):
        acc = np.empty(PMAX * LANES, np.int32)  # one tile buffer per chunk of work items, not per tile
        for item in range(chunk * ITEMS_PER_CHUNK, min(n_items, (chunk + 1) * ITEMS_PER_CHUNK)):
            blk = item // n_tiles
            p0 = (item % n_tiles) * PMAX
            n = min(PMAX, npx - p0)
            _vnni_tile(wp[blk], 0, xq, bases, p0, n, runs, run_len, acc)
            d0 = outs[p0]
            contiguous = outs[p0 + n - 1] - d0 == n - 1
            if contiguous and fused:
                _store_tile_t(acc, n, bias32, blk * LANES, shift, out_lo, out_hi, y, blk * LANES * plane + d0, plane,
                              rowmask[blk])
                continue
            _requantize_tile(acc, n, bias32[blk * LANES:(blk + 1) * LANES], shift, out_lo, out_hi)
            if contiguous:
                _store_tile_t(acc, n, zero_bias, 0, 0, INT32_MIN, INT32_MAX, y, blk * LANES * plane + d0, plane,
                              rowmask[blk])
                continue
            for lane in range(LANES):  # scatter into the NCHW output
                o = blk * LANES + lane
                if o < Cout and use[o]:
                    yo = y[o * plane:]
                    for p in range(n):
                        yo[outs[p0 + p]] = acc[p * LANES + lane]


GEOMETRY_CACHE_SIZE = 256
_geometry_cache = LruCache(GEOMETRY_CACHE_SIZE)


def _tile_geometry(B, Cout, OH, OW, Hp, Wp, c2, kh, kw, stride, dilation) -> tuple:
    """(bases, outs, runs, run_len) of conv2d_vnni_kernel for one conv shape, cached: a network calls the same
    few shapes over and over, and rebuilding the index arrays costs more than a small layer's convolution."""
    key = (B, Cout, OH, OW, Hp, Wp, c2, kh, kw, stride, dilation)
    geometry = _geometry_cache.get(key)
    if geometry is not None:
        return geometry
    (sh, sw), (dh, dw) = stride, dilation
    b, oy, ox = np.meshgrid(np.arange(B), np.arange(OH), np.arange(OW), indexing="ij")
    bases = (((b * Hp + oy * sh) * Wp + ox * sw) * c2).reshape(-1).astype(np.int64)
    outs = ((b * Cout * OH + oy) * OW + ox).reshape(-1).astype(np.int64)
    if dw == 1:   # the kw taps of a kernel row are adjacent: one run per ky
        runs = (np.arange(kh) * dh * Wp * c2).astype(np.int64)
        run_len = kw * c2
    else:
        ky, kx = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
        runs = ((ky * dh * Wp + kx * dw) * c2).reshape(-1).astype(np.int64)
        run_len = c2
    for a in (bases, outs, runs):
        a.flags.writeable = False
    geometry = (bases, outs, runs, run_len)
    _geometry_cache.put(key, geometry)
    return geometry


def channel_args(wp: np.ndarray, bias_q: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """conv2d_vnni_kernel's per-channel arguments: the int32 bias of every used channel (0 elsewhere, padded to
    whole blocks) and each block's rowmask. They depend on the layer only, so callers may keep them."""
    Cout, nblk = use.size, wp.shape[0]
    bias32 = np.zeros(nblk * LANES, np.int32)
    bias32[:Cout] = np.where(use, bias_q, 0)  # |bias| of a fast channel fits int32
    lanes = np.zeros(nblk * LANES, np.int64)
    lanes[:Cout] = use
    rowmask = (lanes.reshape(-1, LANES) << np.arange(LANES, dtype=np.int64)).sum(axis=1)
    return bias32, rowmask


def conv2d_vnni(x, wp, cin_pad, bias_q, use, kh, kw, stride, padding, dilation, shift, out_lo, out_hi, y,
                channels: tuple[np.ndarray, np.ndarray] | None = None):
    """Channels with use[o] of a groups == 1 conv with alpha-folded int16 weights packed by pack_weights into
    y (B, Cout, OH, OW). channels: channel_args(wp, bias_q, use) if the caller kept them."""
    x = np.ascontiguousarray(x, np.int32)  # channels_last_pairs reads int32 rows (values fit int16 here)
    Cout, OH, OW = y.shape[1:]
    xq = channels_last_pairs(x, *padding, cin_pad // 2)
    B, Hp, Wp, c2 = xq.shape
    bases, outs, runs, run_len = _tile_geometry(B, Cout, OH, OW, Hp, Wp, c2, kh, kw, tuple(stride), tuple(dilation))
    bias32, rowmask = channels if channels is not None else channel_args(wp, bias_q, use)
    conv2d_vnni_kernel(xq.reshape(-1), wp, bias32, use, rowmask, bases, outs, runs, run_len, OH * OW, int(shift),
                       out_lo, out_hi, y.reshape(-1))
