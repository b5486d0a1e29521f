"""Integer kernels: the Numba backend against the torch reference (and, for conv/linear, naive Python loops).

One helper per op family runs the same inputs through every implementation and compares shape, dtype,
values and overflow-event counts; each test is a short call on it (tinygrad test_ops style).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tersim.kernels as K
import tersim.kernels.conv as kconv
import tersim.kernels.reference_torch as R
import tersim.kernels.simd as ksimd
from naive import naive_conv
from tersim.kernels import round_shift

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ACT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "uint4": (0, 15), "int4": (-8, 7)}
OUT_RANGES = [(-128, 127), (0, 127), (0, 255), (0, 15), (-(2**31), 2**31 - 1)]


@contextmanager
def conv_strategy(name):
    old, kconv.STRATEGY = kconv.STRATEGY, name
    try:
        yield
    finally:
        kconv.STRATEGY = old


# ------------------------------------------------------------------------------------------ helpers

def helper_conv(x, codes, alpha, bias, naive=True, **kw):
    """Numba (every fast-path strategy) == torch reference (== naive loops); returns (y, events)."""
    yr, er = R.conv2d_int(x, codes, alpha, bias, **kw)
    assert yr.dtype == np.int32
    for strategy in ("auto", "simd", "dot", "grid"):
        with conv_strategy(strategy):
            y, e = K.conv2d_int(x, codes, alpha, bias, **kw)
        assert y.dtype == np.int32 and y.shape == yr.shape, strategy
        np.testing.assert_array_equal(y, yr, err_msg=strategy)
        assert e == er, (strategy, e, er)
    if naive:
        yn, en = naive_conv(x, codes, alpha, bias, **kw)
        np.testing.assert_array_equal(yr, yn)
        assert er == en
    return yr, er


def helper_linear(x, codes, alpha, bias, naive=True, **kw):
    y, e = K.linear_int(x, codes, alpha, bias, **kw)
    yr, er = R.linear_int(x, codes, alpha, bias, **kw)
    assert y.dtype == yr.dtype == np.int32 and y.shape == yr.shape == (x.shape[0], codes.shape[0])
    np.testing.assert_array_equal(y, yr)
    assert e == er
    if naive:
        yn, en = naive_conv(x[:, :, None, None], codes[:, :, None, None], alpha[:, None, None, :], bias,
                            stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, **kw)
        np.testing.assert_array_equal(y, yn.reshape(y.shape))
        assert e == en
    return y, e


def helper_pool(name, x, torch_fn=None, **kw):
    """Numba == reference for pool `name`; returns y. torch_fn (float) gives the expected shape."""
    y = getattr(K, name)(x, **kw)
    yr = getattr(R, name)(x, **kw)
    assert y.dtype == yr.dtype == np.int32
    np.testing.assert_array_equal(y, yr)
    if torch_fn is not None:
        assert y.shape == tuple(torch_fn(torch.from_numpy(x.astype(np.float64))).shape)
    return y


def random_conv_inputs(rng, B, Cin, H, W, Cout, cin_g, kh, kw, group_size, act, code_kind, scale_bits=8,
                       bias_mag=1000):
    lo, hi = ACT_RANGES[act]
    x = rng.integers(lo, hi + 1, (B, Cin, H, W)).astype(np.int32)
    codes = (rng.integers(-1, 2, (Cout, cin_g, kh, kw)) if code_kind == "ternary"
             else rng.integers(-127, 128, (Cout, cin_g, kh, kw))).astype(np.int8)
    alpha = rng.integers(0, 2**scale_bits, (Cout, kh, kw, math.ceil(cin_g / group_size))).astype(np.int32)
    bias = rng.integers(-bias_mag, bias_mag + 1, Cout).astype(np.int64)
    return x, codes, alpha, bias


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin_g = draw(st.integers(1, 6))
    depthwise = draw(st.booleans()) and groups > 1
    cin_g, cout_g = (1, 1) if depthwise else (cin_g, draw(st.integers(1, 3)))
    if depthwise:
        groups = draw(st.integers(2, 5))
    kh, kw = draw(st.sampled_from([(1, 1), (3, 3), (5, 1), (1, 3), (2, 2)]))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h0, w0 = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    H, W = draw(st.integers(h0, max(h0, 7))), draw(st.integers(w0, max(w0, 7)))
    return dict(
        B=draw(st.integers(0, 2)), groups=groups, cin_g=cin_g, cout_g=cout_g, kh=kh, kw=kw, H=H, W=W,
        stride=stride, padding=padding, dilation=dilation, group_size=draw(st.integers(1, cin_g + 3)),
        act=draw(st.sampled_from(list(ACT_RANGES))), code_kind=draw(st.sampled_from(["ternary", "int8"])),
        scale_bits=draw(st.sampled_from([1, 4, 8, 12])), acc_bits=draw(st.sampled_from([8, 10, 12, 16, 24, 32, 48])),
        saturate=draw(st.booleans()), shift=draw(st.integers(-4, 14)), out=draw(st.sampled_from(OUT_RANGES)),
        bias_mag=draw(st.sampled_from([0, 100, 5000, 2**40])), seed=draw(st.integers(0, 2**32 - 1)))


def run_conv_case(c, naive=True):
    rng = np.random.default_rng(c["seed"])
    Cin, Cout = c["cin_g"] * c["groups"], c["cout_g"] * c["groups"]
    x, codes, alpha, bias = random_conv_inputs(rng, c["B"], Cin, c["H"], c["W"], Cout, c["cin_g"], c["kh"], c["kw"],
                                               c["group_size"], c["act"], c["code_kind"], c["scale_bits"],
                                               c["bias_mag"])
    return helper_conv(x, codes, alpha, bias, naive=naive, group_size=c["group_size"], stride=c["stride"],
                       padding=c["padding"], dilation=c["dilation"], groups=c["groups"], acc_bits=c["acc_bits"],
                       saturate=c["saturate"], shift=c["shift"], out_lo=c["out"][0], out_hi=c["out"][1])


def conv_kw(**over):
    kw = dict(group_size=4, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, acc_bits=32, saturate=True,
              shift=4, out_lo=-128, out_hi=127)
    kw.update(over)
    return kw


# ------------------------------------------------------------------------------------------ round_shift

@settings(deadline=None)
@given(st.integers(-(2**70), 2**70), st.integers(-5, 80))
def test_round_shift_is_round_half_even_of_the_exact_quotient(v, s):
    assert round_shift(v, s) == (round(Fraction(v, 2**s)) if s > 0 else v * 2**-s)


def test_round_shift_ties_go_to_even():
    assert [round_shift(v, 1) for v in range(-5, 6)] == [-2, -2, -2, -1, 0, 0, 0, 1, 2, 2, 2]
    assert [round_shift(v, 2) for v in (-10, -6, -2, 2, 6, 10)] == [-2, -2, 0, 0, 2, 2]


@SETTINGS
@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=40), st.integers(-40, 64), st.sampled_from(OUT_RANGES))
def test_requantize_int(values, shift, out):
    x = np.array(values, np.int64)
    expected = np.array([min(max(round_shift(v, shift), out[0]), out[1]) for v in values], np.int32)
    for backend in (K, R):
        np.testing.assert_array_equal(backend.requantize_int(x, shift=shift, out_lo=out[0], out_hi=out[1]), expected)


def test_requantize_relu_and_shape():
    x = np.arange(-8, 8, dtype=np.int32).reshape(2, 2, 2, 2)
    for backend in (K, R):
        y = backend.requantize_int(x, shift=0, out_lo=0, out_hi=127)
        assert y.shape == x.shape and y.dtype == np.int32
        np.testing.assert_array_equal(y, np.maximum(x, 0))


# ------------------------------------------------------------------------------------------ add

@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(-4, 10), st.integers(-4, 10), st.integers(-6, 12),
       st.sampled_from(OUT_RANGES), st.sampled_from(list(ACT_RANGES)))
def test_add_int(seed, fa, fb, fo, out, act):
    rng = np.random.default_rng(seed)
    a = rng.integers(*ACT_RANGES[act], (2, 3, 4, 5), endpoint=True).astype(np.int32)
    b = rng.integers(*ACT_RANGES[act], (2, 3, 4, 5), endpoint=True).astype(np.int32)
    F_ = max(fa, fb)
    expected = np.array([min(max(round_shift(int(p) * 2 ** (F_ - fa) + int(q) * 2 ** (F_ - fb), F_ - fo), out[0]), out[1])
                         for p, q in zip(a.ravel(), b.ravel())], np.int32).reshape(a.shape)
    for backend in (K, R):
        y = backend.add_int(a, fa, b, fb, out_frac=fo, out_lo=out[0], out_hi=out[1])
        assert y.dtype == np.int32
        np.testing.assert_array_equal(y, expected)


def test_add_int_rounds_once_half_to_even():
    # a = 1 at frac 1 (0.5) plus b = 1 at frac 2 (0.25) is 0.75 -> frac 1: 1.5 -> 2; rounding a and b
    # separately would give 0 + 0 (0.5 -> 0 and 0.25 -> 0 at frac 0) instead of round(0.75) = 1 at frac 0.
    for backend in (K, R):
        assert backend.add_int(np.array([1]), 1, np.array([1]), 2, out_frac=1, out_lo=-8, out_hi=7)[0] == 2
        assert backend.add_int(np.array([1]), 1, np.array([1]), 2, out_frac=0, out_lo=-8, out_hi=7)[0] == 1
        assert backend.add_int(np.array([3]), 1, np.array([0]), 1, out_frac=0, out_lo=-8, out_hi=7)[0] == 2
        assert backend.add_int(np.array([5]), 1, np.array([0]), 1, out_frac=0, out_lo=-8, out_hi=7)[0] == 2
        assert backend.add_int(np.array([-100]), 0, np.array([-100]), 0, out_frac=0, out_lo=0, out_hi=7)[0] == 0


# ------------------------------------------------------------------------------------------ conv

@SETTINGS
@given(conv_cases())
def test_conv_random(case):
    run_conv_case(case)


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("acc_bits", [8, 10, 12])
def test_conv_overflow_events(saturate, acc_bits):
    rng = np.random.default_rng(acc_bits)
    x, codes, alpha, bias = random_conv_inputs(rng, 2, 6, 5, 6, 4, 6, 3, 3, 2, "uint8", "ternary", bias_mag=300)
    _, events = helper_conv(x, codes, alpha, bias, **conv_kw(group_size=2, acc_bits=acc_bits, saturate=saturate))
    assert events > 0


@pytest.mark.parametrize("saturate", [True, False])
def test_conv_bias_out_of_range_counts_one_event_per_output(saturate):
    x = np.zeros((2, 3, 4, 4), np.int32)
    codes = np.ones((2, 3, 1, 1), np.int8)
    alpha = np.ones((2, 1, 1, 1), np.int32)
    bias = np.array([200, -5], np.int64)  # channel 0 does not fit 8 bits; x == 0 adds nothing more
    y, events = helper_conv(x, codes, alpha, bias, **conv_kw(padding=(0, 0), acc_bits=8, saturate=saturate, shift=0))
    assert events == 2 * 4 * 4
    assert (y[:, 0] == (127 if saturate else 200 - 256)).all() and (y[:, 1] == -5).all()


def test_conv_round_half_even_ties():
    # 1x1 identity conv with shift 1: acc = x, and every odd x lands exactly on .5
    x = np.arange(-9, 9, dtype=np.int32).reshape(1, 1, 2, 9)
    ones = dict(codes=np.ones((1, 1, 1, 1), np.int8), alpha=np.ones((1, 1, 1, 1), np.int32), bias=np.zeros(1, np.int64))
    y, _ = helper_conv(x, **ones, **conv_kw(group_size=1, padding=(0, 0), shift=1))
    np.testing.assert_array_equal(y, np.rint(x / 2).astype(np.int32))  # np.rint rounds half to even
    y, _ = helper_conv(x * 2 + 2, **ones, **conv_kw(group_size=1, padding=(0, 0), shift=2))  # (x+1)/2, ties on odd x
    np.testing.assert_array_equal(y, np.rint((x + 1) / 2).astype(np.int32))


@pytest.mark.parametrize("shift", [-3, 0, 5])
def test_conv_relu_fused_clamp_and_shifts(shift):
    rng = np.random.default_rng(shift + 10)
    x, codes, alpha, bias = random_conv_inputs(rng, 1, 5, 6, 6, 3, 5, 3, 3, 4, "int8", "ternary")
    y, _ = helper_conv(x, codes, alpha, bias, **conv_kw(shift=shift, out_lo=0, out_hi=255))
    assert y.min() >= 0 and y.max() <= 255 and (y == 0).any()


@pytest.mark.parametrize("B, Cout, Cin", [(0, 4, 3), (2, 0, 3), (0, 0, 3), (2, 3, 0)])
def test_conv_empty_dims(B, Cout, Cin):
    x = np.zeros((B, Cin, 5, 5), np.int32)
    codes = np.ones((Cout, Cin, 3, 3), np.int8)
    alpha = np.ones((Cout, 3, 3, math.ceil(Cin / 4)), np.int32)
    y, events = helper_conv(x, codes, alpha, np.full(Cout, 7, np.int64), **conv_kw(shift=0))
    assert y.shape == (B, Cout, 5, 5) and events == 0
    assert (y == 7).all()


@pytest.mark.parametrize("groups, cin_g, cout_g", [(1, 16, 8), (4, 8, 2), (12, 1, 1)])
@pytest.mark.parametrize("stride, dilation", [((1, 1), (1, 1)), ((2, 1), (1, 2))])
def test_conv_matches_float_conv(groups, cin_g, cout_g, stride, dilation):
    """With a wide accumulator and no shift the datapath is an exact conv with weights code * alpha:
    checks the geometry (stride, padding, dilation, groups) against torch's own conv2d."""
    rng = np.random.default_rng(groups)
    Cin, Cout, N = cin_g * groups, cout_g * groups, 3
    x, codes, alpha, bias = random_conv_inputs(rng, 2, Cin, 9, 8, Cout, cin_g, 3, 3, N, "int8", "ternary")
    kw = conv_kw(group_size=N, stride=stride, dilation=dilation, groups=groups, padding=(1, 2), acc_bits=48, shift=0,
                 out_lo=-(2**31), out_hi=2**31 - 1)
    y, events = helper_conv(x, codes, alpha, bias, naive=False, **kw)
    w = codes.astype(np.float64) * np.repeat(alpha, N, axis=3)[..., :cin_g].transpose(0, 3, 1, 2)
    expected = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w), torch.from_numpy(bias).double(),
                        stride=stride, padding=(1, 2), dilation=dilation, groups=groups)
    np.testing.assert_array_equal(y, expected.numpy().astype(np.int64))
    assert events == 0


@pytest.mark.parametrize("act", ["uint8", "int8", "wide"])
@pytest.mark.parametrize("acc_bits, saturate", [(32, True), (16, True), (18, False)])
def test_conv_layer_sized(act, acc_bits, saturate):
    """ResNet-like shapes through both fast kernels and the exact one, with int16, int32 and int64 psums."""
    rng = np.random.default_rng(acc_bits)
    x, codes, alpha, bias = random_conv_inputs(rng, 2, 40, 12, 11, 24, 40, 3, 3, 8, "uint8" if act == "wide" else act,
                                               "ternary")
    if act == "wide":  # |x| * 8 ones overflow int16 psums; 2**28 * 8 overflows int32 psums
        x = x * rng.integers(1, 2**20, x.shape).astype(np.int32)
        alpha = alpha % 16
    bias[:3] = [2**40, -(2**40), 2**14]  # a few channels that must take the exact path
    y, events = helper_conv(x, codes, alpha, bias, naive=False,
                            **conv_kw(group_size=8, acc_bits=acc_bits if act != "wide" else 48, saturate=saturate))
    assert events > 0 if act != "wide" else True


def test_conv_int8_weight_layer_stem():
    """First layer: 8-bit codes, group = all input channels, 7x7 stride 2 on a 3-channel image."""
    rng = np.random.default_rng(7)
    x, codes, alpha, bias = random_conv_inputs(rng, 1, 3, 20, 17, 8, 3, 7, 7, 3, "int8", "int8")
    helper_conv(x, codes, alpha, bias, naive=False, **conv_kw(group_size=3, stride=(2, 2), padding=(3, 3), shift=10))


def test_conv_weight_cache_sees_in_place_changes():
    """Folded weights are cached by content: editing codes/alphas in place must not reuse a stale plan."""
    rng = np.random.default_rng(11)
    x, codes, alpha, bias = random_conv_inputs(rng, 1, 32, 6, 6, 8, 32, 3, 3, 4, "uint8", "ternary")
    helper_conv(x, codes, alpha, bias, naive=False, **conv_kw())
    codes[0] = -codes[0]
    alpha[3, 1, 1, 2] += 1
    helper_conv(x, codes, alpha, bias, naive=False, **conv_kw())


@pytest.mark.parametrize("B, C, H, W, ph, pw", [(1, 64, 56, 56, 1, 1), (2, 33, 5, 19, 2, 0), (1, 96, 7, 7, 1, 1),
                                               (1, 3, 9, 9, 3, 3), (1, 64, 3, 40, 0, 2), (2, 1, 1, 1, 0, 0)])
def test_channels_last_pairs(B, C, H, W, ph, pw):
    """The VNNI path's input layout: register-transposed 16 x 16 blocks plus scalar tails, int16 extremes."""
    rng = np.random.default_rng(C + W)
    x = rng.integers(-(2**15), 2**15, (B, C, H, W)).astype(np.int32)
    x.reshape(-1)[:2] = [-(2**15), 2**15 - 1]
    c2 = (C + 1) // 2 + 1  # one spare all-zero pair word
    expected = np.zeros((B, H + 2 * ph, W + 2 * pw, 2 * c2), np.int16)
    expected[:, ph:ph + H, pw:pw + W, :C] = x.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(ksimd.channels_last_pairs(x, ph, pw, c2), expected.view(np.int32))


@pytest.mark.skipif(not ksimd.HAVE_VNNI, reason="host CPU has no AVX-512 VNNI")
@pytest.mark.parametrize("act", ["uint8", "int8", "uint4", "int4"])
@pytest.mark.parametrize("Cout, Cin, k, stride, dilation, padding", [
    (40, 37, 3, (1, 1), (1, 1), (1, 1)),     # odd Cin (padded pair), Cout not a multiple of LANES
    (70, 64, 1, (2, 2), (1, 1), (0, 0)),     # 1x1 stride 2, full 16-pair transpose blocks
    (33, 48, 3, (2, 1), (1, 2), (2, 1)),     # dilation along x: one run per tap
    (16, 3, 7, (2, 2), (1, 1), (3, 3)),      # stem-like
])
def test_conv_simd_tiles(act, Cout, Cin, k, stride, dilation, padding):
    """The VNNI kernel on every tile remainder (pixels mod PMAX), with channels forced onto the exact path
    and int8 -128 / 4-bit extremes in the input."""
    rng = np.random.default_rng(Cout * Cin + k)
    H, W = 9, 2 * ksimd.PMAX + 5
    x, codes, alpha, bias = random_conv_inputs(rng, 2, Cin, H, W, Cout, Cin, k, k, 4, act, "ternary")
    x.reshape(-1)[::7] = ACT_RANGES[act][0]
    bias[:2] = [2**33, -(2**33)]   # these two channels cannot be proven overflow-free
    calls = []
    original = ksimd.conv2d_vnni
    ksimd.conv2d_vnni = lambda *a: calls.append(1) or original(*a)
    try:
        for out_w in range(W - ksimd.PMAX, W + 1):  # every pixel count mod PMAX
            kw = conv_kw(stride=stride, dilation=dilation, padding=padding, shift=9, out_lo=0, out_hi=255)
            helper_conv(x[..., :out_w], codes, alpha, bias, naive=False, **kw)
    finally:
        ksimd.conv2d_vnni = original
    assert calls  # the simd strategy (and auto) really ran the VNNI kernel


@pytest.mark.skipif(not ksimd.HAVE_VNNI, reason="host CPU has no AVX-512 VNNI")
@pytest.mark.parametrize("shift", [-3, 0, 1, 9, 30, 31, 45])
@pytest.mark.parametrize("B, H, W, Cout", [(1, 6, 6, 64), (3, 5, 5, 50), (2, 1, 1, 33), (1, 13, 11, 96)])
def test_conv_simd_epilogue(shift, B, H, W, Cout):
    """The VNNI tile epilogue: the int32 round-half-even shift (0 < shift < 31) and the int64 one for other
    shifts, the transposed store of tiles inside one image and the scalar scatter of tiles that straddle
    images (B > 1 with H * W not a multiple of PMAX), 1-pixel outputs, partial channel blocks, channels on
    the exact path left to the grid; wide and narrow output ranges."""
    rng = np.random.default_rng(B * 1000 + H * W + Cout + shift)
    x, codes, alpha, bias = random_conv_inputs(rng, B, 40, H, W, Cout, 40, 3, 3, 4, "int8", "ternary",
                                               bias_mag=2**20)
    x.reshape(-1)[::5] = -128
    bias[1] = 2**33   # exact path: this lane is masked out of the transposed store
    for out_lo, out_hi in [(-128, 127), (-(2**31), 2**31 - 1)]:
        helper_conv(x, codes, alpha, bias, naive=False, **conv_kw(shift=shift, out_lo=out_lo, out_hi=out_hi))


def test_conv_rejects_bad_arguments():
    x = np.zeros((1, 4, 5, 5), np.int32)
    codes, alpha, bias = np.ones((2, 4, 3, 3), np.int8), np.ones((2, 3, 3, 1), np.int32), np.zeros(2, np.int64)
    for backend in (K, R):
        with pytest.raises(ValueError):
            backend.conv2d_int(x, codes, alpha[..., :0], bias, **conv_kw())              # wrong G
        with pytest.raises(ValueError):
            backend.conv2d_int(x, codes, alpha, bias, **conv_kw(groups=3))              # groups do not divide
        with pytest.raises(ValueError):
            backend.conv2d_int(x, codes, alpha, bias, **conv_kw(acc_bits=64))
        with pytest.raises(TypeError):
            backend.conv2d_int(x.astype(np.float32), codes, alpha, bias, **conv_kw())


# ------------------------------------------------------------------------------------------ linear

@SETTINGS
@given(st.integers(0, 3), st.integers(0, 20), st.integers(0, 6), st.integers(1, 23), st.sampled_from(list(ACT_RANGES)),
       st.sampled_from(["ternary", "int8"]), st.sampled_from([8, 12, 16, 32]), st.booleans(), st.integers(-3, 12),
       st.sampled_from(OUT_RANGES), st.integers(0, 2**32 - 1))
def test_linear_random(B, n_in, n_out, group_size, act, code_kind, acc_bits, saturate, shift, out, seed):
    rng = np.random.default_rng(seed)
    x, codes, alpha, bias = random_conv_inputs(rng, B, n_in, 1, 1, n_out, n_in, 1, 1, group_size, act, code_kind)
    helper_linear(x[:, :, 0, 0], codes[:, :, 0, 0], alpha[:, 0, 0, :], bias, group_size=group_size,
                  acc_bits=acc_bits, saturate=saturate, shift=shift, out_lo=out[0], out_hi=out[1])


@pytest.mark.parametrize("saturate", [True, False])
def test_linear_overflow_events(saturate):
    rng = np.random.default_rng(3)
    x, codes, alpha, bias = random_conv_inputs(rng, 3, 64, 1, 1, 10, 64, 1, 1, 4, "uint8", "ternary")
    _, events = helper_linear(x[:, :, 0, 0], codes[:, :, 0, 0], alpha[:, 0, 0, :], bias, group_size=4, acc_bits=12,
                              saturate=saturate, shift=3, out_lo=-128, out_hi=127)
    assert events > 0


# ------------------------------------------------------------------------------------------ pools

@st.composite
def pool_cases(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return dict(kernel=k, stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                padding=(draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))),
                ceil_mode=draw(st.booleans()), H=draw(st.integers(4, 9)), W=draw(st.integers(4, 9)),
                act=draw(st.sampled_from(list(ACT_RANGES))), seed=draw(st.integers(0, 2**32 - 1)))


def pool_input(c, B=2, C=3):
    return np.random.default_rng(c["seed"]).integers(*ACT_RANGES[c["act"]], (B, C, c["H"], c["W"]), endpoint=True
                                                     ).astype(np.int32)


@SETTINGS
@given(pool_cases(), st.sampled_from([(1, 1), (2, 1), (2, 2)]))
def test_max_pool_matches_torch_exactly(c, dilation):
    x = pool_input(c)
    kw = dict(kernel=c["kernel"], stride=c["stride"], padding=c["padding"], dilation=dilation, ceil_mode=c["ceil_mode"])
    try:
        expected = F.max_pool2d(torch.from_numpy(x).double(), c["kernel"], c["stride"], c["padding"], dilation,
                                c["ceil_mode"])
    except RuntimeError:  # torch rejects the geometry (output too small): so must we
        with pytest.raises(ValueError):
            K.max_pool2d_int(x, **kw)
        return
    y = helper_pool("max_pool2d_int", x, **kw)
    np.testing.assert_array_equal(y, expected.numpy().astype(np.int32))


def rounded_float_pool(f: torch.Tensor, out) -> tuple[np.ndarray, np.ndarray]:
    """np.rint of torch's float result, clamped, and a mask of the outputs that are not .5 ties."""
    f = f.numpy()
    return np.clip(np.rint(f), *out).astype(np.int32), np.abs(f - np.floor(f) - 0.5) > 1e-9


@SETTINGS
@given(pool_cases(), st.booleans(), st.sampled_from([None, 1, 3, 7]), st.sampled_from(OUT_RANGES))
def test_avg_pool_matches_torch_rounded(c, count_include_pad, divisor_override, out):
    x = pool_input(c)
    kw = dict(kernel=c["kernel"], stride=c["stride"], padding=c["padding"], ceil_mode=c["ceil_mode"],
              count_include_pad=count_include_pad, divisor_override=divisor_override)
    fn = lambda t: F.avg_pool2d(t, c["kernel"], c["stride"], c["padding"], c["ceil_mode"], count_include_pad,
                                divisor_override)
    y = helper_pool("avg_pool2d_int", x, fn, **kw, out_lo=out[0], out_hi=out[1])
    expected, not_tie = rounded_float_pool(fn(torch.from_numpy(x).double()), out)
    np.testing.assert_array_equal(y[not_tie], expected[not_tie])


def test_avg_pool_ceil_mode_last_window_and_ties():
    # H = 5, k = 2, s = 2, ceil: 3 windows, the last one covers only row 4 (divisor 1 without padding)
    x = np.arange(25, dtype=np.int32).reshape(1, 1, 5, 5)
    y = helper_pool("avg_pool2d_int", x, kernel=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=True,
                    count_include_pad=True, divisor_override=None, out_lo=0, out_hi=255)
    assert y.shape == (1, 1, 3, 3) and y[0, 0, 2, 2] == 24
    assert y[0, 0, 0, 0] == 3  # (0 + 1 + 5 + 6) / 4 = 3
    assert y[0, 0, 0, 2] == 6  # (4 + 9) / 2 = 6.5 -> 6 (half to even)
    assert y[0, 0, 2, 0] == 20  # (20 + 21) / 2 = 20.5 -> 20
    ties = np.array([[[[1, 2], [-3, -4]]]], np.int32)  # sums 1+2=3 -> 1.5 -> 2; -7 -> -3.5 -> -4
    y = helper_pool("avg_pool2d_int", ties, kernel=(1, 2), stride=(1, 2), padding=(0, 0), ceil_mode=False,
                    count_include_pad=True, divisor_override=None, out_lo=-128, out_hi=127)
    np.testing.assert_array_equal(y.ravel(), [2, -4])


@SETTINGS
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 5), st.sampled_from([1, 2, 4, 7, None]),
       st.sampled_from(list(ACT_RANGES)), st.sampled_from(OUT_RANGES), st.integers(0, 2**32 - 1))
def test_adaptive_avg_pool_matches_torch_rounded(H, W, oh, ow, act, out, seed):
    x = np.random.default_rng(seed).integers(*ACT_RANGES[act], (2, 3, H, W), endpoint=True).astype(np.int32)
    fn = lambda t: F.adaptive_avg_pool2d(t, (oh, ow))
    y = helper_pool("adaptive_avg_pool2d_int", x, fn, output_size=(oh, ow), out_lo=out[0], out_hi=out[1])
    expected, not_tie = rounded_float_pool(fn(torch.from_numpy(x).double()), out)
    np.testing.assert_array_equal(y[not_tie], expected[not_tie])


def test_global_avg_pool_and_empty_batch():
    x = np.full((2, 4, 7, 7), 3, np.int32)
    x[0, 0, 0, 0] = 3 + 49 // 2 + 1  # mean 3.5102... -> 4
    y = helper_pool("adaptive_avg_pool2d_int", x, output_size=1, out_lo=0, out_hi=255)
    assert y.shape == (2, 4, 1, 1) and y[0, 0, 0, 0] == 4 and (y.ravel()[1:] == 3).all()
    for name, kw in [("max_pool2d_int", dict(kernel=3, stride=2, padding=1)),
                     ("avg_pool2d_int", dict(kernel=3, stride=2, padding=1, out_lo=0, out_hi=255)),
                     ("adaptive_avg_pool2d_int", dict(output_size=(2, 2), out_lo=0, out_hi=255))]:
        assert helper_pool(name, np.zeros((0, 4, 7, 7), np.int32), **kw).shape[:2] == (0, 4)
