"""The Numba FGQ solver (numpy weights, method "exact") against the torch solver it replaces, bit for bit."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tersim.quantize import fgq

FAST = settings(max_examples=80, deadline=None)


def torch_exact(w, n):
    """The torch path (a float64 tensor takes it): the pre-Numba implementation."""
    codes, alpha = fgq.ternarize(torch.from_numpy(np.array(w, np.float64)), n)
    return codes.numpy(), alpha.numpy()


def torch_stats(w, codes, alpha, n):
    return fgq.weight_stats(torch.from_numpy(np.array(w)), torch.from_numpy(codes), torch.from_numpy(alpha), n)


def assert_same(w, n):
    codes, alpha = fgq.ternarize(w, n)
    ref_codes, ref_alpha = torch_exact(w, n)
    assert codes.dtype == np.int8 and alpha.dtype == np.float64
    np.testing.assert_array_equal(codes, ref_codes)
    assert alpha.shape == ref_alpha.shape
    assert np.array_equal(alpha.view(np.int64), ref_alpha.view(np.int64))  # bits, incl. the sign of zero
    n_eff = min(n, w.shape[1])
    assert fgq.weight_stats(w, codes, alpha, n_eff) == torch_stats(w, codes, alpha, n_eff)


@st.composite
def weights(draw):
    conv = draw(st.booleans())
    cout, cin = draw(st.integers(1, 4)), draw(st.integers(1, 40))
    shape = (cout, cin, draw(st.integers(1, 3)), draw(st.integers(1, 3))) if conv else (cout, cin)
    elems = st.one_of(st.floats(-4, 4, allow_subnormal=False, width=32),
                      st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, -0.5]))  # many ties and zeros
    w = draw(hnp.arrays(draw(st.sampled_from([np.float32, np.float64])), shape, elements=elems))
    return w, draw(st.integers(1, cin + 3))


@FAST
@given(weights())
def test_numba_exact_equals_torch_exact(wn):
    assert_same(*wn)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16, 32, 33, 64, 200])
def test_edge_cases(n):
    rng = np.random.default_rng(n)
    ties = np.round(rng.standard_normal((6, 70, 3, 3)) * 2) / 2          # many equal |w|, short last group
    assert_same(ties, n)
    zeros = rng.standard_normal((4, 70, 1, 1))
    zeros[:, :35] = 0.0                                                  # all-zero groups
    zeros[1] = 0.0
    assert_same(zeros, n)
    assert_same(np.zeros((3, 5)), n)                                     # all zero: alpha 0, codes 0
    assert_same(np.full((2, 9, 1, 1), -0.25), n)                         # every weight tied
    assert_same(rng.standard_normal((5, 1, 3, 3)), n)                    # Cin = 1
    assert_same(rng.standard_normal((2, 300)).astype(np.float32), n)     # long groups (merge sort path)


def test_long_single_group_and_huge_values():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 2048)) * 1e150                           # N > Cin, values far from 1
    assert_same(w, 4096)
    assert_same(w, 2048)
    assert_same(rng.standard_normal((2, 40)) * 1e-150, 8)


def test_bad_input_still_rejected():
    with pytest.raises(ValueError, match="NaN"):
        fgq.ternarize(np.array([[1.0, np.nan]]), 2)
    with pytest.raises(ValueError, match="does not match"):
        fgq.weight_stats(np.ones((2, 4)), np.ones((2, 3), np.int8), np.ones((2, 1, 1, 1)), 4)


@st.composite
def kernel_cases(draw):
    cout, cin, kh, kw = (draw(st.integers(1, 3)), draw(st.integers(1, 90)), draw(st.integers(1, 3)),
                         draw(st.integers(1, 3)))
    elems = st.one_of(st.floats(-4, 4, allow_subnormal=False, width=32), st.sampled_from([0.0, -0.0, 0.5, -0.5]))
    w = draw(hnp.arrays(draw(st.sampled_from([np.float32, np.float64])), (cout, cin, kh, kw), elements=elems))
    return w, draw(st.integers(1, cin))


@FAST
@given(kernel_cases())
def test_lane_kernel_equals_group_kernel(case):
    """Group sizes up to LANES_MAX solve a filter's groups side by side (zero-padded short last group), longer
    ones group by group: both kernels give the same bits, on either side of the switch, and the residual the
    lane kernel writes with its codes is dequantized_residual's."""
    from tersim.quantize import fgq_kernels as k

    w, n = case
    lanes, groups = k._exact_ternary_lanes(w, n, True), k._exact_ternary_groups(w, n)
    np.testing.assert_array_equal(lanes[0], groups[0])
    assert np.array_equal(lanes[1].view(np.int64), groups[1].view(np.int64))
    residual = k.dequantized_residual(w.astype(np.float64), groups[0], groups[1], n)  # the residual it writes too
    assert np.array_equal(lanes[2].view(np.int64), residual.view(np.int64))
    assert lanes[3].all() and lanes[3].shape == (w.shape[0],)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("n", [1, 3, 64, 65])
def test_nonfinite_weights_are_rejected_by_both_solvers(bad, n):
    """The lane solver checks finiteness as it reads the weights (per output channel), the group solver
    before: a NaN/inf anywhere, in any channel, is one ValueError, float32 or float64."""
    for dtype in (np.float32, np.float64):
        for where in [(0, 0, 0, 0), (2, 69, 1, 0), (1, 33, 0, 1)]:
            w = np.ones((3, 70, 2, 2), dtype)
            w[where] = bad
            with pytest.raises(ValueError, match="NaN or infinite"):
                fgq.ternarize(w, n)
            with pytest.raises(ValueError, match="NaN or infinite"):
                fgq.ternarize_with_stats(w, n)


def test_float32_weights_are_read_in_place():
    """float32 weights go to the solver without a float64 copy and give the bits of their float64 widening."""
    w = np.random.default_rng(3).standard_normal((8, 24, 3, 3)).astype(np.float32)
    codes, alpha = fgq.ternarize(w, 4)
    codes64, alpha64 = fgq.ternarize(w.astype(np.float64), 4)
    np.testing.assert_array_equal(codes, codes64)
    assert np.array_equal(alpha.view(np.int64), alpha64.view(np.int64))


@pytest.mark.parametrize("layout", ["channel", "kernel"])
@pytest.mark.parametrize("n", [1, 4, 5, 64, 65, 300])
def test_ternarize_with_stats_equals_the_separate_calls(layout, n):
    """One pass (solver + residual) gives the codes, alphas and stats of ternarize_variant then the torch
    weight_stats_variant, bit for bit, in both group layouts and on both solvers (n <= / > LANES_MAX)."""
    rng = np.random.default_rng(n)
    for w in (rng.standard_normal((6, 70, 3, 3)).astype(np.float32), np.round(rng.standard_normal((5, 130)) * 2) / 2):
        codes, alpha, stats = fgq.ternarize_with_stats(w, n, "exact", layout, "one")
        ref_codes, ref_alpha = fgq.ternarize_variant(torch.from_numpy(w.astype(np.float64)), n, "exact", layout)
        np.testing.assert_array_equal(codes, ref_codes.numpy())
        assert np.array_equal(alpha.view(np.int64), ref_alpha.numpy().view(np.int64))
        k = w.shape[1] * (9 if layout == "kernel" and w.ndim == 4 else 1)
        ref_stats = fgq.weight_stats_variant(torch.from_numpy(w), torch.from_numpy(codes), torch.from_numpy(alpha),
                                             min(n, k), layout)
        assert stats == ref_stats
        twn_codes, twn_alpha, twn_stats = fgq.ternarize_with_stats(w, n, "twn", layout, "one")  # numpy stats path
        assert twn_stats == fgq.weight_stats_variant(torch.from_numpy(w), torch.from_numpy(twn_codes),
                                                     torch.from_numpy(twn_alpha), min(n, k), layout)


@FAST
@given(hnp.arrays(st.sampled_from([np.float32, np.float64]),
                  st.sampled_from([(3, 5), (4, 3, 3, 3), (1, 1), (2, 7, 1, 2), (5, 1, 3, 1)]),
                  elements=st.floats(-1e6, 1e6, width=32)),
       st.sampled_from([1.0, 1e-30, 127.0, 0.0]))
def test_int8_numba_equals_the_torch_path(w, factor):
    """quantize_int8_weights of a numpy weight (one Numba pass) gives the torch path's codes and scales bit for
    bit: ties (x.5 after the division), zero channels, float32 read as float64."""
    w = (w * w.dtype.type(factor)).astype(w.dtype)
    w.reshape(w.shape[0], -1)[0, :2] = [127.0, 2.5][:w.reshape(w.shape[0], -1).shape[1]]  # ties at scale 1
    codes, alpha = fgq.quantize_int8_weights(w)
    ref_codes, ref_alpha = fgq.quantize_int8_weights(torch.from_numpy(w.astype(np.float64)))
    assert codes.dtype == np.int8 and alpha.dtype == np.float64 and codes.shape == w.shape and alpha.flags.writeable
    np.testing.assert_array_equal(codes, ref_codes.numpy())
    assert alpha.shape == tuple(ref_alpha.shape)
    assert np.array_equal(alpha.view(np.int64), ref_alpha.numpy().view(np.int64))


def test_int8_numba_rejects_nonfinite_and_takes_integers():
    with pytest.raises(ValueError, match="NaN or infinite"):
        fgq.quantize_int8_weights(np.array([[1.0, np.inf]], np.float32))
    codes, alpha = fgq.quantize_int8_weights(np.array([[254, -1, 0]], np.int64))
    assert codes.tolist() == [[127, 0, 0]] and alpha.ravel().tolist() == [2.0]   # -1/2 = -0.5 rounds to -0


@FAST
@given(hnp.arrays(st.sampled_from([np.float32, np.float64]), st.sampled_from([(3, 5), (4, 3, 3, 3), (1, 1), (6, 2, 1, 3)]),
                  elements=st.floats(-1e3, 1e3, width=32)))
def test_int8_with_stats_equals_the_separate_calls(w):
    """The int8 layers' one pass (codes, scales and the residual) gives the two calls' stats bit for bit."""
    codes, alpha, stats = fgq.int8_with_stats(w)
    ref_codes, ref_alpha = fgq.quantize_int8_weights(w)
    np.testing.assert_array_equal(codes, ref_codes)
    assert np.array_equal(alpha.view(np.int64), ref_alpha.view(np.int64))
    assert stats == fgq.weight_stats_variant(w, ref_codes, ref_alpha, w.shape[1], "channel", "one")
    assert stats == torch_stats(w.astype(np.float64), ref_codes, ref_alpha, w.shape[1])


def test_weight_norms_are_computed_once_per_array_and_equal_the_uncached_stats(monkeypatch):
    """fgq.WeightNorms (a sweep shares it across N): the stats with it equal the stats without it, bit for bit,
    for every N and layout, on ternary and int8 layers; each array view (memory, shape, strides, dtype) is
    normed once; views of other shapes or strides, and other arrays with equal shapes, get their own norm."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 70, 3, 3)).astype(np.float32)
    other = (w * 2).astype(np.float32)
    calls = []
    real = fgq._norm64
    monkeypatch.setattr(fgq, "_norm64", lambda a: calls.append(a.shape) or real(a))
    norms = fgq.WeightNorms()
    for n in (1, 4, 16, 100):
        for layout in ("channel", "kernel"):
            shared = fgq.ternarize_with_stats(w, n, "exact", layout, "one", norms)[2]
            assert shared == fgq.ternarize_with_stats(w, n, "exact", layout, "one")[2]
    assert fgq.int8_with_stats(w, norms)[2] == fgq.int8_with_stats(w)[2]
    calls.clear()
    for n in (2, 8):
        fgq.ternarize_with_stats(w, n, "exact", "channel", "one", norms)
        fgq.ternarize_with_stats(w, n, "exact", "kernel", "one", norms)
        fgq.int8_with_stats(w, norms)
    assert calls == []   # every view was normed in the first round
    for view in (other, w[:, ::2], w.transpose(1, 0, 2, 3), w.astype(np.float64)):
        assert norms(view) == real(view)
    assert len(calls) == 4
    assert norms(other) != norms(w)
    import pickle

    assert pickle.loads(pickle.dumps(norms))._norms == {}   # another process: its own norms
