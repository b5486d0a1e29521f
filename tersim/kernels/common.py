"""Argument checks and shape arithmetic shared by the Numba kernels and the torch reference.

Both backends call these first, so a bad call fails the same way in both; the arithmetic itself is
implemented independently in each backend.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Hashable

import numpy as np

from tersim.kernels.arith import min_max
from tersim.quantize.layout import check_layout, groups_per_filter, scale_count

MAX_ACC_BITS = 48
# Products psum * alpha plus an accumulator of <= 48 bits must stay far from int64 overflow.
PRODUCT_LIMIT = 2**62 - 2**MAX_ACC_BITS


class LruCache:
    """The `size` most recently used entries of a memo (plans, keys, index arrays): a reading or a writing is
    a use; the least recently used entry goes when a new one would exceed `size`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        """The entry of `key` (now the most recent), or None."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def values(self):
        return self._entries.values()

    def clear(self) -> None:
        self._entries.clear()


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v!r}")
    return t


def int_array(a, name: str, ndim: int | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iu" and not (a.dtype == bool):
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def check_out_range(out_lo: int, out_hi: int) -> tuple[int, int]:
    lo, hi = int(out_lo), int(out_hi)
    if not (-(2**31) <= lo <= hi <= 2**31 - 1):
        raise ValueError(f"need -2**31 <= out_lo <= out_hi < 2**31, got [{lo}, {hi}]")
    return lo, hi


def acc_range(acc_bits: int) -> tuple[int, int]:
    if not (2 <= int(acc_bits) <= MAX_ACC_BITS):
        raise ValueError(f"acc_bits must be in [2, {MAX_ACC_BITS}], got {acc_bits}")
    return -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1


MIN_MAX_PARALLEL = 1 << 15  # elements: below this numpy's two passes cost less than a parallel launch
_MIN_MAX_TYPES = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64))


def max_abs(a: np.ndarray) -> int:
    """max |a| as a Python int (exact, no temporary copy)."""
    if not a.size:
        return 0
    if a.size >= MIN_MAX_PARALLEL and a.dtype in _MIN_MAX_TYPES and a.flags.c_contiguous:
        lo, hi = min_max(a.reshape(-1))
    else:
        lo, hi = a.min(), a.max()
    return max(-int(lo), int(hi))


def _int32_bound(a: np.ndarray) -> int:
    """max |a| for a range check against 2**31: 0 without a scan when the dtype itself fits int32."""
    fits = a.dtype == bool or (a.dtype.kind == "i" and a.dtype.itemsize <= 4) or (
        a.dtype.kind == "u" and a.dtype.itemsize <= 2)
    return 0 if fits else max_abs(a)


@dataclass(frozen=True)
class ConvSpec:
    """Every size a conv/linear kernel needs, checked once."""

    B: int
    Cin: int
    H: int
    W: int
    Cout: int
    cin_g: int      # input channels per conv group
    kh: int
    kw: int
    G: int          # FGQ groups per (o, ky, kx)
    OH: int
    OW: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    group_size: int
    acc_lo: int
    acc_hi: int
    out_lo: int
    out_hi: int
    group_layout: str = "channel"   # tersim.quantize.layout: which weights share alpha, and the K order
    scales: int = 1                 # multiplies per group: 1, or 2 (alpha+ for +1 codes, alpha- for -1 codes)
    xmax: int = field(default=0, compare=False)  # max |x| of the checked call (saves the kernels a rescan)

    @property
    def n_alpha_groups(self) -> int:
        """Alpha groups per output channel (all kernel positions)."""
        return groups_per_filter(self.cin_g, self.kh, self.kw, self.group_size, self.group_layout)

    @property
    def is_default_variant(self) -> bool:
        """The paper's recipe (channel layout, one scale): the fast kernels' layout."""
        return self.group_layout == "channel" and self.scales == 1

    @property
    def cout_g(self) -> int:
        return self.Cout // self.groups


def alpha_shape(cout: int, cin_g: int, kh: int, kw: int, group_size: int, group_layout: str = "channel",
                scales: int = 1) -> tuple[int, ...]:
    """alpha_q's shape: channel (Cout, kh, kw, G[, 2]), kernel (Cout, Gk[, 2]) (tersim.quantize.fgq)."""
    if group_layout == "channel":
        shape = (cout, kh, kw, math.ceil(cin_g / group_size))
    else:
        shape = (cout, groups_per_filter(cin_g, kh, kw, group_size, group_layout))
    return shape + ((2,) if scales == 2 else ())


def check_conv(x, codes, alpha_q, bias_q, *, group_size, stride, padding, dilation, groups, acc_bits,
               out_lo, out_hi, group_layout: str = "channel", scales: str | int = 1,
               weight_max: tuple[int, int] | None = None, x_max: int | None = None
               ) -> tuple[ConvSpec, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate a conv2d_int call; returns the spec and the arrays as (x, codes, alpha_q, bias_q).
    weight_max: (max|codes|, max|alpha_q|) when the caller already knows them for this content; x_max:
    max|x| likewise."""
    check_layout(group_layout)
    n_scales = scale_count(scales)
    x = int_array(x, "x", 4)
    codes = int_array(codes, "codes", 4)
    alpha_q = int_array(alpha_q, "alpha_q")
    bias_q = int_array(bias_q, "bias_q", 1)
    B, Cin, H, W = x.shape
    Cout, cin_g, kh, kw = codes.shape
    groups, group_size = int(groups), int(group_size)
    if groups < 1 or Cin % groups or Cout % groups or cin_g * groups != Cin:
        raise ValueError(f"codes {codes.shape} do not fit input {x.shape} with groups={groups}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    mx = max_abs(x) if x_max is None else x_max
    mc, ma = weight_max if weight_max is not None else (max_abs(codes), max_abs(alpha_q))  # weights are large
    if mc > 127:
        raise ValueError("codes must lie in [-127, 127]")
    G = math.ceil(cin_g / group_size)
    expected = alpha_shape(Cout, cin_g, kh, kw, group_size, group_layout, n_scales)
    if alpha_q.shape != expected:
        raise ValueError(f"alpha_q must have shape {expected}, got {alpha_q.shape}")
    if bias_q.shape != (Cout,):
        raise ValueError(f"bias_q must have shape {(Cout,)}, got {bias_q.shape}")
    if mx >= 2**31 or ma >= 2**31:
        raise ValueError("x and alpha_q must fit int32")
    if bias_q.size and max_abs(bias_q) >= 2**62:
        raise ValueError("bias_q must satisfy |bias_q| < 2**62")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0 or min(kh, kw) < 1:
        raise ValueError(f"bad conv geometry: kernel {(kh, kw)}, stride {stride}, padding {padding}, dilation {dilation}")
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if OH < 1 or OW < 1:
        raise ValueError(f"input {H}x{W} is too small for kernel {(kh, kw)} with padding {padding}, dilation {dilation}")
    acc_lo, acc_hi = acc_range(int(acc_bits))
    lo, hi = check_out_range(out_lo, out_hi)
    # psum * alpha must stay exact in int64 (the accumulator adds at most 2**47 to it).
    psum_bound = mx * mc * min(group_size, cin_g * (kh * kw if group_layout == "kernel" else 1))
    if n_scales * psum_bound * ma > PRODUCT_LIMIT:
        raise ValueError("psum * alpha_q may exceed int64: inputs, codes or alphas are far too large")
    spec = ConvSpec(B, Cin, H, W, Cout, cin_g, kh, kw, G, OH, OW, (sh, sw), (ph, pw), (dh, dw), groups,
                    group_size, acc_lo, acc_hi, lo, hi, group_layout, n_scales, mx)
    return spec, x, codes, alpha_q, bias_q


def linear_alpha_as_conv(alpha_q: np.ndarray) -> np.ndarray:
    """A linear layer's alpha (out, G[, 2]) as the 1x1 conv's (out, 1, 1, G[, 2]) (both layouts agree on 1x1)."""
    return alpha_q[:, None, None]


def check_linear(x, codes, alpha_q, bias_q, *, group_size, acc_bits, out_lo, out_hi, group_layout: str = "channel",
                 scales: str | int = 1):
    """Validate a linear_int call by viewing it as a 1x1 conv on a 1x1 image (the group layouts coincide
    there: the channel layout's alpha shape is used)."""
    check_layout(group_layout)
    n_scales = scale_count(scales)
    x = int_array(x, "x", 2)
    codes = int_array(codes, "codes", 2)
    alpha_q = int_array(alpha_q, "alpha_q", 2 + (n_scales == 2))
    if x.shape[1] != codes.shape[1]:
        raise ValueError(f"x {x.shape} and codes {codes.shape} disagree on in_features")
    spec, x4, c4, a4, b = check_conv(x[:, :, None, None], codes[:, :, None, None], linear_alpha_as_conv(alpha_q),
                                     bias_q, group_size=group_size, stride=1, padding=0, dilation=1, groups=1,
                                     acc_bits=acc_bits, out_lo=out_lo, out_hi=out_hi, scales=n_scales)
    return spec, x, codes, alpha_q, b


def pool_out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size, including ceil_mode's rule that the last window must start inside
    the input or the left padding."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


@dataclass(frozen=True)
class PoolSpec:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    OH: int
    OW: int


def check_pool(x, kernel, stride, padding, dilation, ceil_mode) -> tuple[PoolSpec, np.ndarray]:
    """Validate a pooling call the way PyTorch does (stride None/() means stride = kernel)."""
    x = int_array(x, "x", 4)
    k = _pair(kernel, "kernel")
    no_stride = stride is None or (not isinstance(stride, (int, np.integer)) and len(stride) == 0)
    s = k if no_stride else _pair(stride, "stride")
    p, d = _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(k) < 1 or min(s) < 1 or min(d) < 1 or min(p) < 0:
        raise ValueError(f"bad pool geometry: kernel {kernel}, stride {stride}, padding {padding}, dilation {dilation}")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"padding {p} must be at most half the kernel {k} (as in PyTorch)")
    OH = pool_out_size(x.shape[2], k[0], s[0], p[0], d[0], bool(ceil_mode))
    OW = pool_out_size(x.shape[3], k[1], s[1], p[1], d[1], bool(ceil_mode))
    if OH < 1 or OW < 1:
        raise ValueError(f"input {x.shape[2:]} is too small for pooling kernel {k}")
    return PoolSpec(k, s, p, d, OH, OW), x


def check_adaptive(x, output_size) -> tuple[tuple[int, int], np.ndarray]:
    x = int_array(x, "x", 4)
    if isinstance(output_size, (int, np.integer)) or output_size is None:
        output_size = (output_size, output_size)
    oh, ow = (x.shape[2] if output_size[0] is None else int(output_size[0]),
              x.shape[3] if output_size[1] is None else int(output_size[1]))
    if oh < 1 or ow < 1 or (x.size and (x.shape[2] < 1 or x.shape[3] < 1)):
        raise ValueError(f"bad adaptive pool output size {output_size} for input {x.shape}")
    return (oh, ow), x


def check_add(a, a_frac, b, b_frac, out_frac) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Validate add_int; returns (a, b, da, db, s) with a*2**da + b*2**db rounded by s bits."""
    a, b = int_array(a, "a"), int_array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"add_int needs equal shapes, got {a.shape} and {b.shape}")
    F = max(int(a_frac), int(b_frac))
    da, db, s = F - int(a_frac), F - int(b_frac), F - int(out_frac)
    if max(da, db) > 30:
        raise ValueError(f"fractional bits {a_frac} and {b_frac} are too far apart (> 30)")
    if max(_int32_bound(a), _int32_bound(b)) >= 2**31:
        raise ValueError("add_int inputs must fit int32")
    return a, b, da, db, s
