"""Fine-Grained Quantization (FGQ) of weights: ternary groups, 8-bit layers, fixed-point alphas.

FGQ (Mellempudi et al., 2017) splits a weight tensor into disjoint groups of N consecutive input
channels -- for a conv kernel, for each output channel ``o`` and kernel position ``(ky, kx)`` --
and approximates each group ``w_g`` by ``alpha_g * t_g`` with ``t_g`` in {-1, 0, +1} and one
scale ``alpha_g >= 0``. Group ``g`` holds input channels ``c`` with ``c // N == g``; there are
``G = ceil(Cin / N)`` groups and the last one may be shorter. A linear layer is a 1x1 conv.

One torch implementation serves both uses:

* post-training quantization (``ternarize``, ``quantize_int8_weights``): numpy in -> numpy out
  (computed in float64), torch in -> torch out (computed in the input's precision, at least float32);
* quantization-aware fine-tuning (``ste_ternarize``, ``ste_int8_weights``): the forward pass sees the
  dequantized weight, the backward pass is the identity (straight-through estimator).

Layouts (binding, see docs/ARCHITECTURE.md "Numerics contract"):

* ``codes``: int8 with the weight's shape; {-1, 0, 1} for ternary layers, [-127, 127] for 8-bit ones.
* ``alpha``: float, shape ``(Cout, kh, kw, G)`` (linear: ``(out, 1, 1, G)``). A group whose
  support is empty (e.g. all-zero weights) gets ``alpha == 0`` and all-zero codes; the integer
  datapath handles ``alpha_q == 0`` like any other scale.
"""
from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np
import torch

from tersim.quantize.activations import largest_frac

Array = Union[np.ndarray, torch.Tensor]

METHODS = ("exact", "twn")
TWN_FACTOR = 0.7  # TWN's threshold: delta = 0.7 * mean|w| (Li & Liu, 2016)
INT8_QMAX = 127  # symmetric 8-bit weights: codes in [-127, 127]


# ----------------------------------------------------------------------------- helpers

def _to_torch(x: Array) -> tuple[torch.Tensor, bool]:
    """Return (float tensor, came_from_numpy). numpy goes to float64 so PTQ is as exact as possible."""
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point tensor, got {x.dtype}")
        return x.detach(), False
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"expected a real numeric array, got dtype {arr.dtype}")
    return _as_tensor(arr.astype(np.float64, copy=False)), True


def _as_tensor(x: Array) -> torch.Tensor:
    """Any array as a tensor (no copy when possible), detached from autograd."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    arr = np.ascontiguousarray(x)
    if not arr.flags.writeable:
        arr = arr.copy()  # torch warns on read-only memory
    return torch.from_numpy(arr)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; half/bfloat16 are upcast so sums and sorts are accurate."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_conv(w: torch.Tensor) -> torch.Tensor:
    """View a linear weight (out, in) as a 1x1 conv weight (out, in, 1, 1)."""
    if w.ndim == 2:
        return w[:, :, None, None]
    if w.ndim == 4:
        return w
    raise ValueError(f"weight must be 2-D (out, in) or 4-D (Cout, Cin, kh, kw), got shape {tuple(w.shape)}")


def _check_group_size(group_size: int) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise TypeError(f"group_size must be an int, got {group_size!r}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    return int(group_size)


def _num_groups(cin: int, group_size: int) -> int:
    return -(-cin // group_size)


def to_groups(w4: torch.Tensor, n: int) -> torch.Tensor:
    """(Cout, Cin, kh, kw) -> (Cout, kh, kw, G, n), zero-padding the last group to length n."""
    cout, cin, kh, kw = w4.shape
    g = _num_groups(cin, n)
    wt = w4.permute(0, 2, 3, 1).contiguous()  # (Cout, kh, kw, Cin): a group is contiguous in memory
    if g * n != cin:
        wt = torch.nn.functional.pad(wt, (0, g * n - cin))
    return wt.reshape(cout, kh, kw, g, n)


def from_groups(x: torch.Tensor, cin: int) -> torch.Tensor:
    """Inverse of to_groups: (Cout, kh, kw, G, n) -> (Cout, Cin, kh, kw), padding dropped."""
    cout, kh, kw, g, n = x.shape
    return x.reshape(cout, kh, kw, g * n)[..., :cin].permute(0, 3, 1, 2).contiguous()


def _group_counts(cin: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Number of real (non-padding) weights in each group, shape (G,)."""
    counts = torch.full((_num_groups(cin, n),), float(n), dtype=dtype)
    counts[-1] = cin - (counts.numel() - 1) * n
    return counts


def _masked_mean(a: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of a over keep along the last axis; 0 where keep is empty."""
    total = (a * keep).sum(-1)
    count = keep.sum(-1)
    return torch.where(count > 0, total / count.clamp(min=1).to(a.dtype), torch.zeros_like(total))


def _out(codes: torch.Tensor, alpha: torch.Tensor, to_numpy: bool) -> tuple[Array, Array]:
    if to_numpy:
        return codes.numpy(), alpha.numpy()
    return codes, alpha


# ----------------------------------------------------------------------------- group solvers
# Each solver takes |groups| layout (Cout, kh, kw, G, n) plus the real length of every group and
# returns (keep: bool, same shape; alpha: (Cout, kh, kw, G)). Padding is zero and is never kept.

def _solve_exact(groups: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal support: the top-k |w| with k maximising (sum top-k |w|)^2 / k, ties -> smallest k.

    We maximise the equivalent S_k / sqrt(k) (S_k >= 0): it neither overflows nor underflows
    where S_k^2 would. Including a zero (real or padding) never increases S_k, so it is never chosen
    when S_k > 0; padding positions past a short last group are masked out explicitly anyway.
    """
    a = groups.abs()
    n = a.shape[-1]
    sorted_a, order = torch.sort(a, dim=-1, descending=True, stable=True)
    csum = sorted_a.cumsum(-1)
    ks = torch.arange(1, n + 1, dtype=a.dtype)
    score = csum * ks.rsqrt()
    n_last = int(counts[-1])
    if n_last < n:
        score[..., -1, n_last:] = -math.inf
    best = score.argmax(-1, keepdim=True)  # first maximum -> smallest k; k = best + 1
    alpha = (csum.gather(-1, best) / (best + 1).to(a.dtype)).squeeze(-1)
    keep_sorted = torch.arange(n) <= best
    keep = torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return keep, alpha


def _solve_twn(groups: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN: delta = 0.7 * mean|w_g| over the group's real weights; support |w| > delta."""
    a = groups.abs()
    delta = TWN_FACTOR * a.sum(-1) / counts
    keep = a > delta[..., None]
    return keep, _masked_mean(a, keep)


_SOLVERS: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "exact": _solve_exact,
    "twn": _solve_twn,
}


# ----------------------------------------------------------------------------- public API

def _checked_inputs(weight: Array, group_size: int, method: str) -> tuple[torch.Tensor, bool, int, torch.Tensor]:
    """The inputs every ternarizer checks the same way: (torch weight, came from numpy, N, weight as a conv)."""
    w, from_numpy = _to_torch(weight)
    n = _check_group_size(group_size)
    if method not in _SOLVERS:
        raise ValueError(f"unknown ternarization method {method!r}; choose one of {METHODS}")
    return w, from_numpy, n, _as_conv(w)


def ternarize(weight: Array, group_size: int, method: str = "exact") -> tuple[Array, Array]:
    """Ternarize a conv/linear weight with FGQ: each group of N input channels -> alpha_g * t_g.

    Args:
        weight: conv weight ``(Cout, Cin, kh, kw)`` or linear weight ``(out, in)``; a numpy array
            or a floating-point torch tensor (gradients are not tracked; see ``ste_ternarize``).
        group_size: N >= 1, input channels per group. Group ``g`` holds channels ``c // N == g``;
            ``G = ceil(Cin / N)``, the last group may be shorter; ``N >= Cin`` means one group.
        method: ``"exact"`` minimises ||w_g - alpha_g t_g||^2 exactly (sort |w|, pick the best
            top-k support, alpha = mean of kept |w|); ``"twn"`` uses the threshold
            0.7 * mean|w_g|. In both methods alpha is the mean |w| over the support. (Two scales
            per group and the kernel group layout: ``ternarize_variant``.)

    Returns:
        ``(codes, alpha)``: ``codes`` int8 in {-1, 0, 1} with the weight's shape;
        ``alpha`` of shape ``(Cout, kh, kw, G)`` (linear: ``(out, 1, 1, G)``), dtype of the input
        tensor (float64 for numpy input). A group with empty support (all zeros) has alpha 0.
        numpy in -> numpy out, torch in -> torch out.

    Examples:
        >>> import numpy as np
        >>> w = np.array([[0.9, -1.1, 0.1, 0.0, 2.0, 0.2]])   # linear (out=1, in=6)
        >>> codes, alpha = ternarize(w, group_size=4)         # groups: 4 channels + 2 channels
        >>> codes
        array([[ 1, -1,  0,  0,  1,  0]], dtype=int8)
        >>> alpha.shape, alpha.round(3).ravel().tolist()
        ((1, 1, 1, 2), [1.0, 2.0])
        >>> dequantize(codes, alpha, group_size=4)
        array([[ 1., -1.,  0.,  0.,  2.,  0.]])
    """
    if method == "exact" and not isinstance(weight, torch.Tensor):
        return _ternarize_exact_numpy(weight, group_size)[:2]
    w, from_numpy, n, w4 = _checked_inputs(weight, group_size, method)
    cout, cin, kh, kw = w4.shape
    if w4.numel() == 0:
        codes = torch.zeros(w.shape, dtype=torch.int8)
        return _out(codes, torch.zeros((cout, kh, kw, _num_groups(cin, n)), dtype=w.dtype), from_numpy)
    n_eff = min(n, cin)  # N >= Cin is one group; don't pad it to N
    if not bool(torch.isfinite(w4).all()):
        raise ValueError("weight contains NaN or infinite values")
    cdtype = _compute_dtype(w.dtype)
    groups = to_groups(w4.to(cdtype), n_eff)
    keep, alpha = _SOLVERS[method](groups, _group_counts(cin, n_eff, cdtype))
    codes = (torch.sign(groups) * keep).to(torch.int8)
    codes = from_groups(codes, cin).reshape(w.shape)
    return _out(codes, alpha.to(w.dtype).contiguous(), from_numpy)


def _ternarize_exact_numpy(weight: np.ndarray, group_size: int,
                           residual: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`ternarize(weight, group_size, "exact")` of a numpy weight: the torch solver's float64 arithmetic in Numba
    (bit-identical, tests/test_fgq_fast.py), reading float32 or float64 weights in place (each value is widened
    to float64 as it is read: no float64 copy of the tensor). With `residual` also w - codes * alpha as float64
    with the conv view's shape (what weight_stats measures), else None."""
    from tersim.quantize.fgq_kernels import exact_ternary

    arr = np.asarray(weight)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"expected a real numeric array, got dtype {arr.dtype}")
    n = _check_group_size(group_size)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    w4 = _as_conv(arr)
    cout, cin, kh, kw = w4.shape
    if w4.size == 0:
        return (np.zeros(arr.shape, np.int8), np.zeros((cout, kh, kw, _num_groups(cin, n)), np.float64),
                np.zeros(w4.shape, np.float64) if residual else None)
    # exact_ternary rejects NaN and infinite weights
    codes, alpha, res = exact_ternary(np.ascontiguousarray(w4), min(n, cin), residual)  # N >= Cin: one group
    return codes.reshape(arr.shape), alpha, res


def ternarize_with_stats(weight: Array, group_size: int, method: str = "exact", group_layout: str = "channel",
                         scales: str = "one",
                         norms: "WeightNorms | None" = None) -> tuple[Array, Array, dict[str, float]]:
    """``ternarize_variant`` and ``weight_stats_variant`` of the result. A numpy weight with the exact method and
    one scale is solved in one pass that also writes the residual the stats need (same bits as the two calls);
    `norms` then gives the weight's own norm (a sweep computes it once for every N)."""
    from tersim.quantize.layout import check_layout, scale_count

    check_layout(group_layout)
    if isinstance(weight, torch.Tensor) or method != "exact" or scale_count(scales) != 1:
        codes, alpha = ternarize_variant(weight, group_size, method, group_layout, scales)
        return codes, alpha, weight_stats_variant(weight, codes, alpha, group_size, group_layout, scales)
    arr = np.asarray(weight)
    kernel = group_layout == "kernel"
    flat = arr.reshape(arr.shape[0], -1) if kernel and arr.ndim == 4 else arr
    codes, alpha, residual = _ternarize_exact_numpy(flat, group_size, residual=True)
    if kernel:
        codes, alpha = codes.reshape(arr.shape), alpha.reshape(arr.shape[0], -1)
    return codes, alpha, _stats_of_residual(flat, codes, residual, norms)


def _stats_of_residual(weight: np.ndarray, codes: np.ndarray, residual: np.ndarray,
                       norms: "WeightNorms | None" = None) -> dict[str, float]:
    """weight_stats from the residual w - W_q: norms in torch (its summation order, as weight_stats)."""
    if not codes.size:
        return {"sparsity": 0.0, "rel_error": 0.0}
    sparsity = float((codes.size - np.count_nonzero(codes)) / codes.size)  # no boolean copy of the codes
    err = float(torch.linalg.vector_norm(torch.from_numpy(residual)))
    ref = norms(weight) if norms is not None else _norm64(weight)
    rel = 0.0 if err == 0.0 else (err / ref if ref > 0 else math.inf)
    return {"sparsity": sparsity, "rel_error": rel}


def _norm64(weight: np.ndarray) -> float:
    """The L2 norm of a numpy weight's float64 values, as torch sums them (weight_stats' reference norm)."""
    return float(torch.linalg.vector_norm(torch.from_numpy(np.ascontiguousarray(weight, np.float64))))


class WeightNorms:
    """`_norm64` of weight arrays, each computed once while the owner keeps this object: the stats' reference
    norm does not depend on N, so a sweep quantizing one graph at several N shares it. Keyed by the array's
    memory, shape, strides and dtype, and holding the array (its memory cannot be reused for other values
    meanwhile); the owner must not modify the arrays while it keeps this. A pickled copy (another process) starts
    empty: the arrays' memory is not theirs there."""

    def __init__(self) -> None:
        self._norms: dict[tuple, tuple[np.ndarray, float]] = {}

    def __reduce__(self):
        return WeightNorms, ()

    def __call__(self, weight: np.ndarray) -> float:
        key = (weight.__array_interface__["data"][0], weight.shape, weight.strides, weight.dtype.str)
        hit = self._norms.get(key)
        if hit is None:
            hit = self._norms[key] = (weight, _norm64(weight))
        return hit[1]


def _codes_and_float_alpha(codes: Array, alpha: Array) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Codes and alphas as tensors, integer (fixed-point) alphas widened to float64 for numpy callers and
    float32 for torch ones; and whether the caller passed numpy (it gets numpy back)."""
    from_numpy = not isinstance(codes, torch.Tensor)
    a = _as_tensor(alpha)
    if not a.is_floating_point():
        a = a.to(torch.float64 if from_numpy else torch.float32)
    return _as_tensor(codes), a, from_numpy


def dequantize(codes: Array, alpha: Array, group_size: int) -> Array:
    """Rebuild a float weight: each code times its group's alpha (alpha broadcast over the group).

    Works for ternary and 8-bit layers alike (8-bit: ``group_size = Cin``, ``G = 1``). The result
    has the codes' shape and alpha's float dtype; numpy in -> numpy out.
    """
    c, a, from_numpy = _codes_and_float_alpha(codes, alpha)
    n = _check_group_size(group_size)
    c4 = _as_conv(c)
    cout, cin, kh, kw = c4.shape
    expected = (cout, kh, kw, _num_groups(cin, n))
    if tuple(a.shape) != expected:
        raise ValueError(f"alpha shape {tuple(a.shape)} does not match codes {tuple(c.shape)} "
                         f"with group_size {n}: expected {expected}")
    per_channel = a[..., torch.arange(cin) // n]  # (Cout, kh, kw, Cin)
    w = c4.to(a.dtype) * per_channel.permute(0, 3, 1, 2)
    w = w.reshape(c.shape)
    return w.numpy() if from_numpy else w


def quantize_int8_weights(weight: Array) -> tuple[Array, Array]:
    """Symmetric 8-bit weights, one scale per output channel (used for first/last layers).

    ``s_o = max|w_o| / 127``; ``codes = round_half_even(w / s_o)`` clipped to [-127, 127]; an
    all-zero channel gets ``s_o = 0`` and zero codes. ``alpha`` has shape ``(Cout, kh, kw, 1)``
    (linear: ``(out, 1, 1, 1)``) filled with ``s_o``, so the ternary datapath with group size Cin
    runs the layer unchanged. Types follow ``ternarize`` (numpy in -> numpy out, float64 alpha).
    """
    if not isinstance(weight, torch.Tensor) and np.asarray(weight).size:
        return _quantize_int8_numpy(np.asarray(weight))[:2]
    w, from_numpy = _to_torch(weight)
    w4 = _as_conv(w)
    cout, cin, kh, kw = w4.shape
    if w4.numel() == 0:
        return _out(torch.zeros(w.shape, dtype=torch.int8), torch.zeros((cout, kh, kw, 1), dtype=w.dtype), from_numpy)
    if not bool(torch.isfinite(w4).all()):
        raise ValueError("weight contains NaN or infinite values")
    wc = w4.to(_compute_dtype(w.dtype))
    scale = wc.abs().amax(dim=(1, 2, 3)) / INT8_QMAX  # (Cout,)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # zero channel: w / 1 = 0
    codes = torch.round(wc / safe[:, None, None, None]).clamp(-INT8_QMAX, INT8_QMAX)
    codes = codes.to(torch.int8).reshape(w.shape)
    alpha = scale[:, None, None, None].expand(cout, kh, kw, 1).to(w.dtype).contiguous()
    return _out(codes, alpha, from_numpy)


def int8_with_stats(weight: np.ndarray,
                    norms: WeightNorms | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """``quantize_int8_weights`` and ``weight_stats_variant`` of its result (group size Cin) for a non-empty numpy
    weight: one pass writes the codes and the residual the stats need (the same bits as the two calls).
    `norms`: as for `ternarize_with_stats`."""
    arr = np.asarray(weight)
    codes, alpha, residual = _quantize_int8_numpy(arr, residual=True)
    return codes, alpha, _stats_of_residual(_as_conv(arr), codes, residual, norms)  # widened to float64 there


def _quantize_int8_numpy(arr: np.ndarray, residual: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quantize_int8_weights of a non-empty numpy weight in one Numba pass (no float64 tensor copies): the same
    float64 max, division and half-to-even rounding as the torch path, so the same codes and scales; with
    `residual` also w - codes * scale (float64, the conv view's shape), else an empty array."""
    from tersim.quantize.fgq_kernels import int8_channel_codes

    if arr.dtype.kind not in "fiub":
        raise TypeError(f"expected a real numeric array, got dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    w4 = _as_conv(arr)
    codes, scale, finite, res = int8_channel_codes(np.ascontiguousarray(w4), float(INT8_QMAX), residual)
    if not finite:
        raise ValueError("weight contains NaN or infinite values")
    cout, _, kh, kw = w4.shape
    alpha = np.broadcast_to(scale[:, None, None, None], (cout, kh, kw, 1)).copy()  # writable, as torch's
    return codes.reshape(arr.shape), alpha, res.reshape(w4.shape) if residual else res


def fixed_point_alpha(alpha: Array, scale_bits: int) -> tuple[np.ndarray, int]:
    """Convert float alphas of one layer to unsigned ``scale_bits``-bit integers with one power-of-two scale.

    ``alpha_frac`` is the largest integer with ``max(alpha) * 2**alpha_frac <= 2**scale_bits - 1``
    (0 when max(alpha) == 0), so the largest alpha uses the full range. Returns
    ``(alpha_q, alpha_frac)`` with ``alpha_q = rint(alpha * 2**alpha_frac)`` clipped to
    ``[0, 2**scale_bits - 1]``, an int32 numpy array of alpha's shape; ``alpha ~= alpha_q * 2**-alpha_frac``.
    """
    if isinstance(scale_bits, bool) or not isinstance(scale_bits, (int, np.integer)) or not 1 <= scale_bits <= 31:
        raise ValueError(f"scale_bits must be an int in [1, 31], got {scale_bits!r}")
    from tersim.quantize.fgq_kernels import scaled_alpha_codes

    a = alpha.detach().cpu().numpy() if isinstance(alpha, torch.Tensor) else np.asarray(alpha)
    a = np.ascontiguousarray(a, np.float64)  # no copy for the solvers' float64 alphas
    top = float(a.max()) if a.size else 0.0  # a NaN anywhere makes the max NaN
    if not math.isfinite(top) or (a.size and a.min() < 0):
        raise ValueError("alpha must be finite and non-negative")
    qmax = 2 ** int(scale_bits) - 1
    if top == 0.0:
        return np.zeros(a.shape, dtype=np.int32), 0
    frac = largest_frac(top, qmax)
    if -1022 <= frac <= 1023:  # 2**frac a normal float64: a * 2**frac is ldexp(a, frac), bit for bit
        return scaled_alpha_codes(a.reshape(-1), math.ldexp(1.0, frac), qmax).reshape(a.shape), frac
    return np.clip(np.rint(np.ldexp(a, frac)), 0, qmax).astype(np.int32), frac


def weight_stats(weight: Array, codes: Array, alpha: Array, group_size: int) -> dict[str, float]:
    """Quality of a quantized weight: ``sparsity`` (fraction of zero codes) and
    ``rel_error`` = ||W - W_q|| / ||W|| (Frobenius; 0 when both are 0, inf if only W is 0)."""
    if not any(isinstance(v, torch.Tensor) for v in (weight, codes, alpha)):
        return _weight_stats_numpy(np.asarray(weight), np.asarray(codes), np.asarray(alpha), group_size)
    w, c, a = _as_tensor(weight).double(), _as_tensor(codes), _as_tensor(alpha).double()
    wq = dequantize(c, a, group_size)
    if tuple(wq.shape) != tuple(w.shape):
        raise ValueError(f"codes shape {tuple(c.shape)} does not match weight shape {tuple(w.shape)}")
    sparsity = float((c == 0).double().mean()) if c.numel() else 0.0
    err = float(torch.linalg.vector_norm(w - wq))
    ref = float(torch.linalg.vector_norm(w))
    rel = 0.0 if err == 0.0 else (err / ref if ref > 0 else math.inf)
    return {"sparsity": sparsity, "rel_error": rel}


def _weight_stats_numpy(weight: np.ndarray, codes: np.ndarray, alpha: np.ndarray, group_size: int) -> dict[str, float]:
    """weight_stats for numpy arrays without dequantize's per-weight alpha copy: the residual w - code * alpha
    in Numba (the same float64 products), the norms in torch as before (same summation order)."""
    from tersim.quantize.fgq_kernels import dequantized_residual

    n = _check_group_size(group_size)
    w4 = np.asarray(weight, np.float64)
    w4 = w4[:, :, None, None] if w4.ndim == 2 else w4
    c4 = codes[:, :, None, None] if codes.ndim == 2 else codes
    if c4.shape != w4.shape:
        raise ValueError(f"codes shape {codes.shape} does not match weight shape {weight.shape}")
    expected = (c4.shape[0], c4.shape[2], c4.shape[3], _num_groups(c4.shape[1], n))
    if alpha.shape != expected:
        raise ValueError(f"alpha shape {alpha.shape} does not match codes {codes.shape} "
                         f"with group_size {n}: expected {expected}")
    if not codes.size:
        return {"sparsity": 0.0, "rel_error": 0.0}
    residual = dequantized_residual(np.ascontiguousarray(w4), np.ascontiguousarray(c4, np.int8),
                                    np.ascontiguousarray(alpha, np.float64), n)
    return _stats_of_residual(w4, codes, residual)


# ----------------------------------------------------------------------------- straight-through (fine-tuning)

class _StraightThrough(torch.autograd.Function):
    """Forward returns ``quantized`` exactly; backward passes the gradient to ``x`` unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:  # noqa: D401
        return quantized.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """``quantized`` in the forward pass, the identity's gradient to ``x`` in the backward pass (STE)."""
    return _StraightThrough.apply(x, quantized)


def ste_ternarize(weight: torch.Tensor, group_size: int, method: str = "exact") -> torch.Tensor:
    """Dequantized FGQ-ternary weight with a straight-through gradient (d out / d weight = I).

    For quantization-aware fine-tuning: the forward value is exactly
    ``dequantize(*ternarize(weight, group_size, method), group_size)`` in the weight's dtype.
    """
    with torch.no_grad():
        codes, alpha = ternarize(weight.detach(), group_size, method)
        wq = dequantize(codes, alpha, group_size).to(weight.dtype)
    return straight_through(weight, wq)


def ste_int8_weights(weight: torch.Tensor) -> torch.Tensor:
    """Dequantized 8-bit per-channel weight (see ``quantize_int8_weights``) with a straight-through gradient."""
    with torch.no_grad():
        codes, alpha = quantize_int8_weights(weight.detach())
        wq = dequantize(codes, alpha, max(1, _as_conv(weight).shape[1])).to(weight.dtype)
    return straight_through(weight, wq)


# ----------------------------------------------------------------------------- design-space variants
# Group layout (tersim.quantize.layout) and two scales per group. Alpha shapes:
#   channel layout: (Cout, kh, kw, G) one scale, (Cout, kh, kw, G, 2) two scales (linear: kh = kw = 1)
#   kernel layout:  (Cout, Gk) one scale,        (Cout, Gk, 2) two scales, Gk = ceil(Cin_g * kh * kw / N)
# With two scales [..., 0] is alpha+ (applied to the +1 codes) and [..., 1] alpha- (the -1 codes).

def _solve_signed_part(v: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best support and scale for the values v > 0 of each group (last axis): the top-k of them with k
    maximising (sum top-k)^2 / k, ties -> smallest k; no positive value -> empty support, scale 0."""
    pos = (v > 0) & valid
    a = torch.where(pos, v, torch.zeros_like(v))
    n = a.shape[-1]
    sorted_a, order = torch.sort(a, dim=-1, descending=True, stable=True)
    csum = sorted_a.cumsum(-1)
    ks = torch.arange(1, n + 1, dtype=a.dtype)
    score = csum * ks.rsqrt()                      # S_k / sqrt(k): same argmax as S_k^2 / k, S_k >= 0
    score = torch.where(sorted_a > 0, score, torch.full_like(score, -math.inf))
    best = score.argmax(-1, keepdim=True)
    any_pos = pos.any(-1, keepdim=True)
    alpha = torch.where(any_pos, csum.gather(-1, best) / (best + 1).to(a.dtype), torch.zeros_like(csum[..., :1]))
    keep_sorted = (torch.arange(n) <= best) & any_pos
    keep = torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return keep, alpha.squeeze(-1)


def _solve_two_scales_exact(groups: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact minimiser of ||w - (alpha+ [t = 1] - alpha- [t = -1])||^2 over t in {-1,0,1}^n, alpha+-, alpha- >= 0.

    Why it is exact: for fixed codes, with P = {t = +1} and M = {t = -1}, the error is
    ||w||^2 - 2 alpha+ S_P + |P| alpha+^2 + 2 alpha- S_M + |M| alpha-^2 (S = sum of w), minimised by
    alpha+ = max(0, S_P / |P|), alpha- = max(0, -S_M / |M|), leaving ||w||^2 - f(P) - f(M) with
    f(P) = max(0, S_P)^2 / |P| and f(M) = max(0, -S_M)^2 / |M|. The two terms share no variable, so P and M
    can be optimised separately, except that they must be disjoint: but an optimal P holds only w > 0
    (dropping a w_j <= 0 from P raises S_P and lowers |P|, so it raises f(P) or leaves it at 0) and an
    optimal M only w < 0, so they never compete. For a fixed |P| = k, f(P) is largest when P is the k
    largest positive weights; so the optimum is the best k over the sorted positive weights (and the same for
    the negative ones), which is what `_solve_signed_part` computes. tests/test_fgq_variants.py checks
    this against brute force over all 3^n codes.
    """
    keep_p, alpha_p = _solve_signed_part(groups, valid)
    keep_m, alpha_m = _solve_signed_part(-groups, valid)
    return keep_p, keep_m, torch.stack((alpha_p, alpha_m), dim=-1)


def _solve_two_scales_twn(groups: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TWN's support (|w| > 0.7 * mean|w| over the group's real weights), one mean per sign as its scale."""
    a = groups.abs() * valid
    delta = TWN_FACTOR * a.sum(-1) / valid.sum(-1).clamp(min=1)
    keep = (a > delta[..., None]) & valid
    keep_p, keep_m = keep & (groups > 0), keep & (groups < 0)
    return keep_p, keep_m, torch.stack((_masked_mean(a, keep_p), _masked_mean(a, keep_m)), dim=-1)


_TWO_SCALE_SOLVERS = {"exact": _solve_two_scales_exact, "twn": _solve_two_scales_twn}


def ternarize_variant(weight: Array, group_size: int, method: str = "exact", group_layout: str = "channel",
                      scales: str = "one") -> tuple[Array, Array]:
    """``ternarize`` with a group layout and one or two scales per group (alpha shapes: see above).

    ``group_layout="kernel"`` groups N consecutive weights of the flattened (Cin, kh, kw) filter: it is
    ``ternarize`` of the weight viewed as a (Cout, Cin * kh * kw) linear weight. ``scales="two"`` gives each
    group alpha+ for its +1 codes and alpha- for its -1 codes, solved exactly (`_solve_two_scales_exact`)
    or with TWN's threshold (``method="twn"``). channel + one is exactly ``ternarize``.
    """
    from tersim.quantize.layout import check_layout, scale_count

    check_layout(group_layout)
    two = scale_count(scales) == 2
    if group_layout == "channel" and not two:
        return ternarize(weight, group_size, method)
    w, from_numpy, n, w4 = _checked_inputs(weight, group_size, method)
    cout, cin, kh, kw = w4.shape
    wk = w4.reshape(cout, cin * kh * kw, 1, 1) if group_layout == "kernel" else w4
    if not two:
        codes, alpha = ternarize(wk, n, method)
        return _out(codes.reshape(w.shape), alpha.reshape(cout, -1), from_numpy)
    ck = wk.shape[1]
    g_count = _num_groups(ck, min(n, ck)) if ck else 0
    alpha_shape = (cout, g_count, 2) if group_layout == "kernel" else (cout, kh, kw, g_count, 2)
    if w4.numel() == 0:
        return _out(torch.zeros(w.shape, dtype=torch.int8), torch.zeros(alpha_shape, dtype=w.dtype), from_numpy)
    if not bool(torch.isfinite(w4).all()):
        raise ValueError("weight contains NaN or infinite values")
    n_eff = min(n, ck)
    groups = to_groups(wk.to(_compute_dtype(w.dtype)), n_eff)
    valid = to_groups(torch.ones((1, ck, wk.shape[2], wk.shape[3]), dtype=torch.bool), n_eff)
    keep_p, keep_m, alpha = _TWO_SCALE_SOLVERS[method](groups, valid)
    codes = keep_p.to(torch.int8) - keep_m.to(torch.int8)
    codes = from_groups(codes, ck).reshape(w.shape)
    return _out(codes, alpha.to(w.dtype).reshape(alpha_shape).contiguous(), from_numpy)


def per_weight_alpha(codes: Array, alpha: Array, group_size: int, group_layout: str = "channel",
                     scales: str = "one") -> Array:
    """The scale each weight is multiplied by (the codes' shape; 0 where the code is 0 is not implied):
    its group's alpha, or with two scales alpha+ / alpha- by the sign of its code."""
    from tersim.quantize.layout import groups_per_filter, k_group_index, k_order, scale_count

    c, a, from_numpy = _codes_and_float_alpha(codes, alpha)
    c4 = _as_conv(c)
    cout, cin, kh, kw = c4.shape
    s = scale_count(scales)
    n = _check_group_size(group_size)
    n_groups = groups_per_filter(cin, kh, kw, n, group_layout) if cin else 0
    if a.numel() != cout * n_groups * s:
        raise ValueError(f"alpha shape {tuple(a.shape)} does not match codes {tuple(c.shape)} with group_size {n}, "
                         f"{group_layout} layout and {scales} scale(s)")
    af = a.reshape(cout, n_groups, s)
    per_k = af[:, torch.from_numpy(k_group_index(cin, kh, kw, n, group_layout))]      # (Cout, K, s)
    per_flat = torch.empty_like(per_k)
    per_flat[:, torch.from_numpy(k_order(cin, kh, kw, group_layout))] = per_k        # filter (c, ky, kx) order
    per_flat = per_flat.reshape(cout, cin, kh, kw, s)
    if s == 2:
        out = torch.where(c4 < 0, per_flat[..., 1], per_flat[..., 0])
    else:
        out = per_flat[..., 0]
    out = out.reshape(c.shape)
    return out.numpy() if from_numpy else out


def dequantize_variant(codes: Array, alpha: Array, group_size: int, group_layout: str = "channel",
                       scales: str = "one") -> Array:
    """``dequantize`` for any group layout and scale count: each code times its own scale."""
    a = per_weight_alpha(codes, alpha, group_size, group_layout, scales)
    c = _as_tensor(codes)
    w = c.to(_as_tensor(a).dtype) * _as_tensor(a)
    return w.numpy() if not isinstance(codes, torch.Tensor) else w


def weight_stats_variant(weight: Array, codes: Array, alpha: Array, group_size: int, group_layout: str = "channel",
                         scales: str = "one") -> dict[str, float]:
    """``weight_stats`` for any group layout and scale count."""
    from tersim.quantize.layout import check_layout, scale_count

    check_layout(group_layout)
    if scale_count(scales) == 1 and not any(isinstance(v, torch.Tensor) for v in (weight, codes, alpha)):
        # one scale: numpy arrays take weight_stats' Numba residual (same float64 products and norms); the
        # kernel layout is the channel layout of the weight viewed as a (Cout, Cin * kh * kw) linear weight
        weight, codes, alpha = np.asarray(weight), np.asarray(codes), np.asarray(alpha)
        if group_layout == "kernel" and weight.ndim in (2, 4) and weight.shape == codes.shape:  # alpha (Cout, Gk)
            cout = weight.shape[0]
            weight, codes, alpha = weight.reshape(cout, -1), codes.reshape(cout, -1), alpha.reshape(cout, 1, 1, -1)
        return _weight_stats_numpy(weight, codes, alpha, group_size)
    w, c = _as_tensor(weight).double(), _as_tensor(codes)
    wq = _as_tensor(dequantize_variant(c, _as_tensor(alpha).double(), group_size, group_layout, scales))
    sparsity = float((c == 0).double().mean()) if c.numel() else 0.0
    err = float(torch.linalg.vector_norm(w - wq))
    ref = float(torch.linalg.vector_norm(w))
    rel = 0.0 if err == 0.0 else (err / ref if ref > 0 else math.inf)
    return {"sparsity": sparsity, "rel_error": rel}
