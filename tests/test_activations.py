"""Dynamic fixed-point activations: ranges, calibration frac, round-half-even quantization, fake-quant STE."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tersim.quantize.activations import act_frac, act_range, dequantize_act, fake_quant_act, quantize_act

FAST = settings(max_examples=80, deadline=None)
FORMATS = [(8, True), (8, False), (4, True), (4, False)]


@pytest.mark.parametrize("bits, signed, expected", [
    (8, True, (-128, 127)), (8, False, (0, 255)), (4, True, (-8, 7)), (4, False, (0, 15)),
    (16, True, (-32768, 32767)), (1, False, (0, 1)),
])
def test_act_range(bits, signed, expected):
    assert act_range(bits, signed) == expected


@pytest.mark.parametrize("bits, signed", [(0, False), (1, True), (33, True), (32, False)])
def test_act_range_rejects_bad_bits(bits, signed):
    with pytest.raises(ValueError):
        act_range(bits, signed)


# ----------------------------------------------------------------------------- act_frac

@pytest.mark.parametrize("max_abs, bits, signed, expected", [
    (1.0, 8, True, 6),            # 127 / 1 -> log2 = 6.99
    (1.0, 8, False, 7),           # 255
    (127 / 64, 8, True, 6),       # qmax / max_abs == 64 exactly: a rounded log2 must not give 5
    (255 / 32, 8, False, 5),      # same, unsigned
    (15 / 4, 4, False, 2),        # 4-bit unsigned exact fit
    (7.0, 4, True, 0),            # 4-bit signed exact fit
    (0.5, 8, True, 7),            # power of two: 127 / 0.5 = 254 -> 7
    (128.0, 8, True, -1),         # needs a negative frac: 128 * 2**-1 = 64 <= 127
    (1000.0, 8, True, -3),
    (0.0, 8, True, 0),            # never-nonzero tensor
])
def test_act_frac_cases(max_abs, bits, signed, expected):
    assert act_frac(max_abs, bits, signed) == expected


def assert_largest_frac(max_abs, frac, qmax):
    """Exact rational check of: max_abs * 2**frac <= qmax < max_abs * 2**(frac + 1)."""
    m = Fraction(max_abs)
    assert m * Fraction(2) ** frac <= qmax < m * Fraction(2) ** (frac + 1)


@pytest.mark.parametrize("max_abs", [5e-324, 1e-310, 1e-30, 2.0**-60, 1e30, 2.0**100, 1e300, 1.7e308])
@pytest.mark.parametrize("bits, signed", FORMATS)
def test_act_frac_tiny_and_huge(max_abs, bits, signed):
    frac = act_frac(max_abs, bits, signed)
    assert isinstance(frac, int)
    assert_largest_frac(max_abs, frac, act_range(bits, signed)[1])


@FAST
@given(st.floats(min_value=0, exclude_min=True, allow_infinity=False), st.sampled_from(FORMATS))
def test_act_frac_is_floor_log2(max_abs, fmt):
    bits, signed = fmt
    assert_largest_frac(max_abs, act_frac(max_abs, bits, signed), act_range(bits, signed)[1])


def test_act_frac_rejects_bad_values():
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            act_frac(bad, 8, True)


def test_act_frac_accepts_numpy_and_torch_scalars():
    assert act_frac(np.float32(1.0), 8, True) == 6
    assert act_frac(torch.tensor(1.0), 8, False) == 7


# ----------------------------------------------------------------------------- quantize / dequantize

def test_round_half_to_even():
    x = np.array([2.5, 3.5, -2.5, 0.5, 1.5, -0.5, 2.4999, 2.5001])
    assert quantize_act(x, 0, 8, True).tolist() == [2, 4, -2, 0, 2, 0, 2, 3]
    assert quantize_act(np.array([1.25, 0.75]), 1, 8, True).tolist() == [2, 2]  # 2.5 -> 2, 1.5 -> 2


def test_clamping_and_ranges():
    x = np.array([-1000.0, -128.0, -128.6, 127.4, 127.6, 1e9, -np.inf, np.inf])
    assert quantize_act(x, 0, 8, True).tolist() == [-128, -128, -128, 127, 127, 127, -128, 127]
    u8 = quantize_act(np.array([-3.0, 0.0, 254.5, 255.4, 300.0]), 0, 8, False)
    assert u8.tolist() == [0, 0, 254, 255, 255]
    u4 = quantize_act(np.array([-0.1, 0.4, 7.5, 15.4, 15.5, 99.0]), 0, 4, False)
    assert u4.tolist() == [0, 0, 8, 15, 15, 15]
    s4 = quantize_act(np.array([-9.0, -8.0, 6.5, 7.49, 8.0]), 0, 4, True)
    assert s4.tolist() == [-8, -8, 6, 7, 7]


def test_frac_scales_by_powers_of_two():
    x = np.array([0.3, -1.7, 2.0])
    assert quantize_act(x, 4, 8, True).tolist() == [5, -27, 32]   # 4.8, -27.2, 32
    assert quantize_act(np.array([300.0, -200.0]), -2, 8, True).tolist() == [75, -50]
    # 2.0**1070 overflows a float; ldexp scales the subnormal 3 * 2**-1070 back to exactly 3
    assert quantize_act(np.array([np.ldexp(3.0, -1070)]), 1070, 8, True).tolist() == [3]


def test_types():
    q = quantize_act([0.5, 1.5], 0, 8, True)  # array-like in
    assert isinstance(q, np.ndarray) and q.dtype == np.int32
    qf32 = quantize_act(np.array([0.3, 1.7], dtype=np.float32), 3, 8, True)
    assert qf32.dtype == np.int32
    qt = quantize_act(torch.tensor([0.5, 1.5, 300.0]), 0, 8, False)
    assert isinstance(qt, torch.Tensor) and qt.dtype == torch.int32 and qt.tolist() == [0, 2, 255]
    d = dequantize_act(np.array([3, -4], dtype=np.int32), 2)
    assert d.dtype == np.float64 and d.tolist() == [0.75, -1.0]
    dt = dequantize_act(torch.tensor([3, -4], dtype=torch.int32), -3)
    assert dt.dtype == torch.float32 and dt.tolist() == [24.0, -32.0]
    with pytest.raises(ValueError):
        quantize_act(np.array([np.nan]), 0, 8, True)


@FAST
@given(hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(-1e4, 1e4)),
       st.integers(-6, 12), st.sampled_from(FORMATS))
def test_roundtrip_error_is_half_a_step_inside_the_range(x, frac, fmt):
    bits, signed = fmt
    lo, hi = act_range(bits, signed)
    q = quantize_act(x, frac, bits, signed)
    assert q.dtype == np.int32 and q.min() >= lo and q.max() <= hi
    xr = dequantize_act(q, frac)
    step = 2.0**-frac
    inside = (x >= lo * step) & (x <= hi * step)
    assert np.all(np.abs(xr - x)[inside] <= step / 2)
    assert np.all(xr[~inside] == np.where(x[~inside] > 0, hi, lo) * step)  # clamped to an end


# ----------------------------------------------------------------------------- fake quantization

@pytest.mark.parametrize("bits, signed", FORMATS)
@pytest.mark.parametrize("frac", [-2, 0, 3, 7])
def test_fake_quant_matches_integer_path_and_torch(bits, signed, frac):
    lo, hi = act_range(bits, signed)
    torch.manual_seed(frac + bits)
    x = (torch.randn(500) * (hi - lo) * 0.6 * 2.0**-frac).requires_grad_()
    y = fake_quant_act(x, frac, bits, signed)
    expected = dequantize_act(quantize_act(x.detach().numpy(), frac, bits, signed), frac)
    np.testing.assert_array_equal(y.detach().numpy(), expected.astype(np.float32))
    upstream = torch.randn(500)
    (grad,) = torch.autograd.grad(y, x, upstream)

    x2 = x.detach().clone().requires_grad_()
    y2 = torch.fake_quantize_per_tensor_affine(x2, 2.0**-frac, 0, lo, hi)
    (grad2,) = torch.autograd.grad(y2, x2, upstream)
    assert torch.equal(y.detach(), y2.detach())
    assert torch.equal(grad, grad2)


def test_fake_quant_gradient_is_identity_inside_and_zero_outside():
    x = torch.tensor([-200.0, -128.0, -128.6, -3.2, 0.0, 2.5, 127.0, 127.4, 127.6, 500.0], requires_grad=True)
    y = fake_quant_act(x, 0, 8, True)
    assert y.tolist() == [-128, -128, -128, -3, 0, 2, 127, 127, 127, 127]
    y.sum().backward()
    assert x.grad.tolist() == [0, 1, 0, 1, 1, 1, 1, 1, 0, 0]
    xu = torch.tensor([-1.0, -0.4, 0.0, 15.0, 15.6], requires_grad=True)
    fake_quant_act(xu, 0, 4, False).sum().backward()
    assert xu.grad.tolist() == [0, 1, 1, 1, 0]


def test_fake_quant_keeps_dtype():
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.randn(10, dtype=dtype, requires_grad=True)
        y = fake_quant_act(x, 5, 8, True)
        assert y.dtype == dtype
        y.sum().backward()
        assert x.grad.dtype == dtype
