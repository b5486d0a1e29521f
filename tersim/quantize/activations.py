"""Dynamic fixed-point (DFP) activations: ``real = code * 2**-frac`` with one ``frac`` per tensor.

Power-of-two scales keep every requantization in the integer datapath a rounding shift
(docs/ARCHITECTURE.md, "Numerics contract"). Ranges: signed ``[-2**(bits-1), 2**(bits-1)-1]``,
unsigned ``[0, 2**bits-1]``. Rounding is half to even everywhere (``np.rint`` / ``torch.round``).
Scaling uses ``ldexp`` so it is exact for any ``frac`` (no overflow of ``2.0**frac``).

numpy is the post-training path; ``fake_quant_act`` is the torch path for fine-tuning.
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]


def act_range(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range ``(lo, hi)`` of a ``bits``-bit activation code, e.g. (-128, 127) or (0, 15)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int, got {bits!r}")
    if not (2 if signed else 1) <= bits <= (32 if signed else 31):  # codes must fit int32
        raise ValueError(f"bits={bits} out of range for a {'signed' if signed else 'unsigned'} int32 code")
    if signed:
        return -(2 ** (int(bits) - 1)), 2 ** (int(bits) - 1) - 1
    return 0, 2 ** int(bits) - 1


def act_frac(max_abs: float, bits: int, signed: bool) -> int:
    """Calibrated fraction bits: ``floor(log2(qmax / max_abs))``, i.e. the largest ``frac`` with
    ``max_abs * 2**frac <= qmax`` (qmax = 2**(bits-1)-1 signed, 2**bits-1 unsigned).

    ``max_abs == 0`` (a tensor that is always zero) gives 0. The result may be negative (large
    activations) or large (tiny ones); it is computed exactly, not via a rounded ``log2``.
    """
    m = float(max_abs)
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"max_abs must be finite and >= 0, got {max_abs!r}")
    return largest_frac(m, act_range(bits, signed)[1])


def largest_frac(value: float, qmax: int) -> int:
    """The largest integer ``f`` with ``value * 2**f <= qmax`` (0 when value or qmax is 0).

    Equals ``floor(log2(qmax / value))`` but is exact for every finite float, including values
    that are powers of two, subnormal or huge (``ldexp`` is exact; ``log2`` only gives a first guess).
    Shared by activation calibration and the fixed-point alphas of fgq.
    """
    if value == 0.0 or qmax == 0:
        return 0
    mant, exp = math.frexp(value)  # value = mant * 2**exp, mant in [0.5, 1): no overflow in the guess
    frac = math.floor(math.log2(qmax / mant)) - exp
    while math.ldexp(value, frac) > qmax:
        frac -= 1
    while math.ldexp(value, frac + 1) <= qmax:
        frac += 1
    return frac


def quantize_act(x: Array, frac: int, bits: int, signed: bool) -> Array:
    """``clip(rint(x * 2**frac), lo, hi)`` as int32 (round half to even: 2.5 -> 2, 3.5 -> 4).

    numpy (or anything array-like) in -> int32 ndarray; torch in -> int32 tensor. NaN is rejected;
    +-inf saturate to the range ends.
    """
    if isinstance(x, torch.Tensor):  # one implementation: the numpy one
        return torch.from_numpy(quantize_act(x.detach().cpu().double().numpy(), frac, bits, signed))
    lo, hi = act_range(bits, signed)
    arr = np.asarray(x, dtype=np.float64)  # exact for float32/float16 input; holds int32 limits exactly
    if np.isnan(arr).any():
        raise ValueError("cannot quantize NaN activations")
    return np.clip(np.rint(np.ldexp(arr, int(frac))), lo, hi).astype(np.int32)


def dequantize_act(q: Array, frac: int) -> Array:
    """``q * 2**-frac`` as float (float64 ndarray for numpy, default float dtype for torch)."""
    if isinstance(q, torch.Tensor):
        return (q.to(torch.float64) * 2.0 ** -int(frac)).to(torch.get_default_dtype())
    return np.ldexp(np.asarray(q, dtype=np.float64), -int(frac))


class _FakeQuantAct(torch.autograd.Function):
    """Forward: quantize-dequantize. Backward: gradient passes where the rounded code lies in
    [lo, hi] and is zero where it was clamped (PyTorch's ``fake_quantize_per_tensor_affine`` rule)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, frac: int, lo: int, hi: int) -> torch.Tensor:
        # float32 (or float64) arithmetic; float64 when 2**frac would leave float32's range.
        cdtype = torch.float64 if x.dtype == torch.float64 or abs(frac) > 100 else torch.float32
        code = torch.round(x.to(cdtype) * 2.0 ** frac)
        inside = (code >= lo) & (code <= hi)
        ctx.save_for_backward(inside)
        return (code.clamp(lo, hi) * 2.0 ** -frac).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def fake_quant_act(x: torch.Tensor, frac: int, bits: int, signed: bool) -> torch.Tensor:
    """Quantize-dequantize ``x`` in DFP with a straight-through gradient, for fine-tuning.

    The forward value equals ``dequantize_act(quantize_act(x, frac, bits, signed), frac)`` (in x's
    dtype); the gradient is the identity where ``rint(x * 2**frac)`` lies inside the code range
    and zero where the value was clamped.
    """
    lo, hi = act_range(bits, signed)
    return _FakeQuantAct.apply(x, int(frac), lo, hi)
