"""FGQ weight quantization: exact/TWN ternarization vs naive references, int8 weights, fixed-point alphas, STE."""
import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from naive import best_any_pattern, best_topk, group_error, iter_groups, twn_group
from tersim.quantize import fgq
from tersim.quantize.activations import largest_frac
from tersim.quantize.fgq import (
    dequantize,
    fixed_point_alpha,
    quantize_int8_weights,
    ste_int8_weights,
    ste_ternarize,
    ternarize,
    weight_stats,
)

METHODS = ["exact", "twn"]
FAST = settings(max_examples=60, deadline=None)


def as_conv(w):
    return w[:, :, None, None] if w.ndim == 2 else w


def per_group_errors(w, codes, alpha, n):
    w4, c4 = as_conv(w), as_conv(codes)
    return np.array([group_error(w4[o, s, ky, kx], alpha[o, ky, kx, g], c4[o, s, ky, kx])
                     for o, ky, kx, g, s in iter_groups(w4, n)])


# ----------------------------------------------------------------------------- strategies

@st.composite
def weights_and_n(draw, max_cin=11):
    """A conv or linear float64 weight (with some exact zeros and repeats) and a group size."""
    conv = draw(st.booleans())
    cout = draw(st.integers(1, 3))
    cin = draw(st.integers(1, max_cin))
    shape = (cout, cin, draw(st.integers(1, 2)), draw(st.integers(1, 2))) if conv else (cout, cin)
    elems = st.one_of(st.floats(-4, 4, allow_subnormal=False), st.sampled_from([0.0, 1.0, -1.0, 0.5]))
    w = draw(hnp.arrays(np.float64, shape, elements=elems))
    n = draw(st.integers(1, cin + 2))
    return w, n


# ----------------------------------------------------------------------------- exact method

@FAST
@given(weights_and_n())
def test_exact_is_optimal_over_every_k(wn):
    w, n = wn
    codes, alpha = ternarize(w, n, "exact")
    w4, c4 = as_conv(w), as_conv(codes)
    for o, ky, kx, g, s in iter_groups(w4, n):
        wg = w4[o, s, ky, kx]
        err = group_error(wg, alpha[o, ky, kx, g], c4[o, s, ky, kx])
        best_err = best_topk(wg)[0]
        assert err <= best_err + 1e-9 * (1 + best_err)


@FAST
@given(hnp.arrays(np.float64, st.integers(1, 5), elements=st.floats(-3, 3, allow_subnormal=False)))
def test_exact_beats_every_ternary_pattern(wg):
    codes, alpha = ternarize(wg[None, :], len(wg), "exact")
    err = group_error(wg, alpha[0, 0, 0, 0], codes[0])
    assert err <= best_any_pattern(wg) + 1e-9 * (1 + float(wg @ wg))


@pytest.mark.parametrize("n", [1, 3, 4, 7, 16, 64])
def test_exact_matches_loop_reference_and_beats_twn(n):
    rng = np.random.default_rng(n)
    w = rng.standard_normal((4, 37, 3, 3)) * rng.uniform(0.1, 2, size=(4, 1, 1, 1))
    codes, alpha = ternarize(w, n, "exact")
    for o, ky, kx, g, s in iter_groups(w, n):
        _, ref_alpha, k = best_topk(w[o, s, ky, kx])
        assert alpha[o, ky, kx, g] == pytest.approx(ref_alpha, rel=1e-12)
        assert np.count_nonzero(codes[o, s, ky, kx]) == k
    err = per_group_errors(w, codes, alpha, n)
    other = per_group_errors(w, *ternarize(w, n, "twn"), n)
    assert np.all(err <= other + 1e-12)


def test_exact_ties_choose_smallest_k_and_keep_support_sign():
    # |w| = [2, 1]: k=1 gives 4/1 = 4, k=2 gives 9/2 = 4.5 -> k=2; [2, 0.5]: 4 vs 6.25/2 -> k=1
    codes, alpha = ternarize(np.array([[2.0, -1.0], [-2.0, 0.5]]), 2)
    np.testing.assert_array_equal(codes, [[1, -1], [-1, 0]])
    np.testing.assert_allclose(alpha.ravel(), [1.5, 2.0])
    # equal magnitudes: every k ties in |w| but the full support wins strictly
    codes, alpha = ternarize(np.array([[1.0, -1.0, 1.0]]), 3)
    np.testing.assert_array_equal(codes, [[1, -1, 1]])
    assert alpha.ravel().tolist() == [1.0]


def test_padding_of_short_last_group_is_never_counted():
    # Cin = 5, N = 4: last group is one weight; its alpha must be |w| (a padded mean would halve it)
    w = np.array([[1.0, 1.0, 1.0, 1.0, 3.0]])
    for method in METHODS:
        codes, alpha = ternarize(w, 4, method)
        assert alpha[0, 0, 0, 1] == 3.0 and codes[0, 4] == 1, method


@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_exact_is_scale_invariant_in_float32(scale):
    # (sum top-k)^2 would underflow/overflow float32 at these scales; the solver must not care.
    w = torch.randn(8, 24, 3, 3, generator=torch.Generator().manual_seed(5))
    codes, alpha = ternarize(w, 8)
    codes_s, alpha_s = ternarize(w * scale, 8)
    assert torch.equal(codes_s, codes)
    torch.testing.assert_close(alpha_s / scale, alpha, rtol=1e-5, atol=0)


@pytest.mark.parametrize("n", [1, 4, 5, 64])
def test_twn_matches_loop_reference(n):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((3, 21, 3, 1)) + 0.3  # asymmetric distribution
    codes, alpha = ternarize(w, n, "twn")
    for o, ky, kx, g, s in iter_groups(w, n):
        t, a = twn_group(w[o, s, ky, kx])
        np.testing.assert_array_equal(codes[o, s, ky, kx], t)
        assert alpha[o, ky, kx, g] == pytest.approx(a, rel=1e-12)


# ----------------------------------------------------------------------------- layout, dtypes, edge cases

@FAST
@given(weights_and_n(max_cin=20), st.sampled_from(METHODS))
def test_codes_alpha_shapes_and_support(wn, method):
    w, n = wn
    codes, alpha = ternarize(w, n, method)
    w4 = as_conv(w)
    cout, cin, kh, kw = w4.shape
    assert codes.shape == w.shape and codes.dtype == np.int8
    assert alpha.shape == (cout, kh, kw, math.ceil(cin / n)) and alpha.dtype == np.float64
    assert set(np.unique(codes)) <= {-1, 0, 1}
    assert np.all(np.sign(codes) * np.sign(w) >= 0)  # a kept weight keeps its sign; zeros stay 0
    c4 = as_conv(codes)
    for o, ky, kx, g, s in iter_groups(w4, n):
        has_support = np.any(c4[o, s, ky, kx] != 0)
        assert (alpha[o, ky, kx, g] > 0) == has_support
        if method == "exact":  # the optimum is empty only for an all-zero group
            assert has_support == np.any(w4[o, s, ky, kx] != 0)


@pytest.mark.parametrize("method", METHODS)
def test_group_size_one_is_sign_and_magnitude(method):
    w = np.random.default_rng(1).standard_normal((5, 6, 3, 3))
    w[0, 0, 0, 0] = 0.0
    codes, alpha = ternarize(w, 1, method)
    np.testing.assert_array_equal(codes, np.sign(w))
    np.testing.assert_array_equal(alpha, np.abs(w).transpose(0, 2, 3, 1))  # exactly |w|


@pytest.mark.parametrize("method", METHODS)
def test_group_size_at_least_cin_is_one_group(method):
    w = np.random.default_rng(2).standard_normal((4, 10, 3, 3))
    ref = ternarize(w, 10, method)
    for n in (11, 64, 10**9):  # a huge N must not allocate N-long padding
        codes, alpha = ternarize(w, n, method)
        assert alpha.shape == (4, 3, 3, 1)
        np.testing.assert_array_equal(codes, ref[0])
        np.testing.assert_array_equal(alpha, ref[1])


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_weights_give_zero_codes_and_alpha(method):
    for shape in [(3, 8, 3, 3), (5, 7)]:
        codes, alpha = ternarize(np.zeros(shape), 4, method)
        assert not codes.any() and not alpha.any()
    w = np.zeros((1, 8))
    w[0, 5] = -2.0  # second group non-zero only
    codes, alpha = ternarize(w, 4, method)
    assert alpha.ravel().tolist() == [0.0, 2.0] and codes[0, 5] == -1


def test_types_follow_the_input():
    w32 = np.random.default_rng(3).standard_normal((6, 9, 3, 3)).astype(np.float32)
    codes, alpha = ternarize(w32, 4)
    assert isinstance(codes, np.ndarray) and codes.dtype == np.int8 and alpha.dtype == np.float64
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        t = torch.from_numpy(w32).to(dtype)
        tc, ta = ternarize(t, 4)
        assert isinstance(tc, torch.Tensor) and tc.dtype == torch.int8 and ta.dtype == dtype
        if dtype != torch.bfloat16:
            np.testing.assert_array_equal(tc.numpy(), codes)
            np.testing.assert_allclose(ta.double().numpy(), alpha, rtol=1e-6)
    lc, la = ternarize(torch.randn(10, 33), 8)
    assert lc.shape == (10, 33) and la.shape == (10, 1, 1, 5)
    p = torch.randn(4, 8, requires_grad=True)
    assert not ternarize(p, 4)[1].requires_grad


def test_invalid_arguments():
    w = np.ones((2, 4, 3, 3))
    for bad in (0, -1):
        with pytest.raises(ValueError):
            ternarize(w, bad)
    with pytest.raises(TypeError):
        ternarize(w, 2.0)
    with pytest.raises(ValueError):
        ternarize(w, 2, "magic")
    with pytest.raises(ValueError):
        ternarize(np.ones((2, 3, 4)), 2)
    with pytest.raises(ValueError):
        ternarize(np.array([[1.0, np.nan]]), 2)
    with pytest.raises(ValueError):
        dequantize(np.ones((2, 4), np.int8), np.ones((2, 1, 1, 1)), 2)  # needs G = 2


# ----------------------------------------------------------------------------- dequantize

@FAST
@given(weights_and_n(), st.sampled_from(METHODS))
def test_dequantize_matches_loop_and_is_a_fixed_point(wn, method):
    w, n = wn
    codes, alpha = ternarize(w, n, method)
    wq = dequantize(codes, alpha, n)
    assert wq.shape == w.shape and wq.dtype == np.float64
    w4q, c4 = as_conv(wq), as_conv(codes)
    for o, ky, kx, g, s in iter_groups(c4, n):
        np.testing.assert_array_equal(w4q[o, s, ky, kx], c4[o, s, ky, kx] * alpha[o, ky, kx, g])
    if method == "exact":  # a ternary group is its own best ternary approximation
        codes2, alpha2 = ternarize(wq, n, method)
        np.testing.assert_array_equal(codes2, codes)
        np.testing.assert_allclose(alpha2, alpha, rtol=1e-12)


def test_dequantize_torch():
    w = torch.randn(8, 12, 3, 3)
    codes, alpha = ternarize(w, 5)
    wq = dequantize(codes, alpha, 5)
    assert isinstance(wq, torch.Tensor) and wq.dtype == torch.float32 and wq.shape == w.shape
    np.testing.assert_array_equal(wq.numpy(), dequantize(codes.numpy(), alpha.numpy(), 5))


# ----------------------------------------------------------------------------- int8 weights

def test_int8_weights_per_channel():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((6, 5, 3, 3)) * rng.uniform(0.01, 3, size=(6, 1, 1, 1))
    w[2] = 0.0
    codes, alpha = quantize_int8_weights(w)
    assert codes.dtype == np.int8 and codes.shape == w.shape and alpha.shape == (6, 3, 3, 1)
    s = np.abs(w).max(axis=(1, 2, 3)) / 127
    for o in range(6):
        assert np.all(alpha[o] == s[o])  # one scale per channel, repeated over (ky, kx)
        if o == 2:
            assert not codes[o].any() and s[o] == 0
            continue
        assert np.abs(codes[o]).max() == 127
        assert np.all(np.abs(w[o] - s[o] * codes[o]) <= s[o] / 2 * (1 + 1e-9))
    wq = dequantize(codes, alpha, w.shape[1])  # the ternary datapath with group size = Cin
    np.testing.assert_allclose(wq, codes * s[:, None, None, None])


def test_int8_weights_round_half_even_and_linear_torch():
    codes, alpha = quantize_int8_weights(np.array([[127.0, 2.5, -3.5, 0.5]]))  # s = 1
    assert codes.tolist() == [[127, 2, -4, 0]] and alpha.shape == (1, 1, 1, 1)
    tc, ta = quantize_int8_weights(torch.randn(10, 20))
    assert tc.dtype == torch.int8 and ta.dtype == torch.float32 and ta.shape == (10, 1, 1, 1)
    assert int(tc.abs().amax()) == 127


# ----------------------------------------------------------------------------- fixed-point alphas

@FAST
@given(hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(0, 1e6)), st.integers(1, 24))
def test_fixed_point_alpha_bounds_and_largest_frac(alpha, bits):
    q, frac = fixed_point_alpha(alpha, bits)
    qmax = 2**bits - 1
    assert q.dtype == np.int32 and q.shape == alpha.shape and isinstance(frac, int)
    assert q.min() >= 0 and q.max() <= qmax
    top = alpha.max()
    if top == 0:
        assert frac == 0 and not q.any()
        return
    assert math.ldexp(top, frac) <= qmax < math.ldexp(top, frac + 1)  # largest such frac
    np.testing.assert_array_equal(q, np.rint(np.ldexp(alpha, frac)))
    assert np.all(np.abs(np.ldexp(q.astype(float), -frac) - alpha) <= math.ldexp(0.5, -frac))


def numpy_fixed_point_alpha(alpha, bits):
    """The plain NumPy reference: ldexp, rint, clip."""
    a = np.asarray(alpha, np.float64)
    qmax = 2**bits - 1
    top = float(a.max()) if a.size else 0.0
    if top == 0.0:
        return np.zeros(a.shape, np.int32), 0
    frac = largest_frac(top, qmax)
    return np.clip(np.rint(np.ldexp(a, frac)), 0, qmax).astype(np.int32), frac


@FAST
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=7),
                  elements=st.floats(0, 1e6, allow_subnormal=True)), st.integers(1, 31),
       st.sampled_from([1.0, 1e-300, 5e-324, 1e300, 3.0]))
def test_fixed_point_alpha_equals_the_numpy_reference(alpha, bits, factor):
    """The Numba passes give the bits of the ldexp/rint/clip reference, ties and subnormal/huge ranges included
    (frac outside the normal exponents takes the NumPy path)."""
    alpha = np.concatenate([alpha.ravel(), np.arange(8) + 0.5]) * factor if factor != 3.0 else alpha
    q, frac = fixed_point_alpha(alpha, bits)
    ref_q, ref_frac = numpy_fixed_point_alpha(alpha, bits)
    assert frac == ref_frac and q.dtype == np.int32 and q.shape == alpha.shape
    np.testing.assert_array_equal(q, ref_q)


def test_fixed_point_alpha_rejects_inf_and_negative_zero_is_zero():
    with pytest.raises(ValueError):
        fixed_point_alpha(np.array([1.0, np.inf]), 8)
    q, frac = fixed_point_alpha(np.array([-0.0, 2.0, 1.0 / 256]), 8)
    assert q.tolist() == [0, 128, 0] and frac == 6   # 2 * 2**6 = 128 <= 255 < 256; 2**-8 * 2**6 rounds to 0


def test_fixed_point_alpha_exact_fit_and_errors():
    q, frac = fixed_point_alpha(np.array([255 / 8, 1 / 8, 0.0]), 8)  # 255/8 * 2**3 == 255 exactly
    assert frac == 3 and q.tolist() == [255, 1, 0]
    q, frac = fixed_point_alpha(torch.tensor([[1000.0]]), 4)  # large alpha -> negative frac
    assert frac == -7 and q.tolist() == [[8]]
    for bad in ([-1.0], [np.nan]):
        with pytest.raises(ValueError):
            fixed_point_alpha(np.array(bad), 8)
    with pytest.raises(ValueError):
        fixed_point_alpha(np.ones(2), 0)


# ----------------------------------------------------------------------------- stats

def test_weight_stats():
    w = np.array([[2.0, -1.5, 0.2, 0.0]])
    codes, alpha = ternarize(w, 4)  # k=2 (scores 4, 6.125, 4.56), alpha=1.75 -> [1.75, -1.75, 0, 0]
    st_ = weight_stats(w, codes, alpha, 4)
    assert st_["sparsity"] == 0.5
    assert st_["rel_error"] == pytest.approx(math.sqrt(0.0625 + 0.0625 + 0.04) / math.sqrt(4 + 2.25 + 0.04))
    zero = np.zeros((2, 3, 1, 1))
    assert weight_stats(zero, *ternarize(zero, 2), 2) == {"sparsity": 1.0, "rel_error": 0.0}
    wt = torch.randn(16, 32, 3, 3)
    c8, a8 = quantize_int8_weights(wt)
    s8 = weight_stats(wt, c8, a8, 32)
    assert s8["rel_error"] < 0.02
    c4, a4 = ternarize(wt, 4)
    assert weight_stats(wt, c4, a4, 4)["rel_error"] > s8["rel_error"]


# ----------------------------------------------------------------------------- straight-through estimators

@pytest.mark.parametrize("method", METHODS)
def test_ste_ternarize_forward_is_dequantized_and_gradient_is_identity(method):
    w = torch.randn(6, 10, 3, 3, dtype=torch.float64, requires_grad=True)
    out = ste_ternarize(w, 4, method)
    codes, alpha = ternarize(w, 4, method)
    assert torch.equal(out.detach(), dequantize(codes, alpha, 4))
    upstream = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, w, upstream)
    assert torch.equal(grad, upstream)


def test_ste_int8_weights_gradient_is_identity():
    w = torch.randn(5, 7, requires_grad=True)
    out = ste_int8_weights(w)
    assert out.dtype == torch.float32 and out.shape == w.shape
    assert torch.equal(out.detach(), dequantize(*quantize_int8_weights(w), 7))
    (out * 3).sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 3.0))


def test_ste_in_a_training_step_reduces_loss():
    torch.manual_seed(0)
    w = torch.randn(8, 16, requires_grad=True)
    x = torch.randn(64, 16)
    target = x @ torch.randn(16, 8)
    opt = torch.optim.SGD([w], lr=0.05)
    losses = []
    for _ in range(30):
        loss = ((x @ ste_ternarize(w, 4).T - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ----------------------------------------------------------------------------- docs

def test_module_doctests():
    result = doctest.testmod(fgq, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
