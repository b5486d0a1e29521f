"""FGQ design-space variants: two scales per group (exact solver), the kernel group layout; their integer
kernels against plain references, the cycle engine against the kernels and the analytic model."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tersim.engine.cycle_engine import conv2d_engine, linear_engine
from tersim.kernels import conv2d_int, linear_int
from tersim.kernels import reference_torch as ref
from tersim.quantize.fgq import dequantize_variant, ternarize_variant
from tersim.quantize.layout import k_group_index, k_order
from tersim.timing.analytic import layer_timing, skip_plan, ternary_timing
from tests.test_cycle_engine import ACTS, DATAFLOWS, make_hw


# --------------------------------------------------------------------------- the two-scale solver
def brute_force_two_scales(w: np.ndarray) -> float:
    """Smallest ||w - w_q||^2 over all 3^n codes, each with its optimal alpha+ / alpha- (>= 0)."""
    best = np.inf
    for t in itertools.product((-1, 0, 1), repeat=w.size):
        t = np.array(t)
        err = 0.0
        for sign in (1, -1):
            sel = t == sign
            a = max(0.0, sign * w[sel].mean()) if sel.any() else 0.0
            err += float(((w[sel] - sign * a) ** 2).sum())
        err += float((w[t == 0] ** 2).sum())
        best = min(best, err)
    return best


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=1, max_size=7))
def test_two_scale_solver_is_optimal_against_brute_force(values):
    w = np.array(values, np.float64)[None, :]                       # one linear filter, one group
    codes, alpha = ternarize_variant(w, w.shape[1], "exact", scales="two")
    assert alpha.shape == (1, 1, 1, 1, 2) and (alpha >= 0).all()
    err = float(((w - dequantize_variant(codes, alpha, w.shape[1], scales="two")) ** 2).sum())
    assert err <= brute_force_two_scales(w[0]) + 1e-9 * (1 + float((w ** 2).sum()))
    assert ((codes[0] > 0) <= (w[0] > 0)).all() and ((codes[0] < 0) <= (w[0] < 0)).all()


def test_two_scales_use_their_own_alpha_per_sign():
    w = np.array([[3.0, 2.9, -0.5, -0.4, 0.01, 0.0]])
    codes, alpha = ternarize_variant(w, 6, "exact", scales="two")
    assert codes.tolist() == [[1, 1, -1, -1, 0, 0]]
    np.testing.assert_allclose(alpha.ravel(), [2.95, 0.45])
    codes, alpha = ternarize_variant(np.array([[1.0, 2.0, 0.0]]), 3, "exact", scales="two")
    assert alpha.ravel()[1] == 0 and (codes >= 0).all()           # no negative weight: alpha- = 0


@pytest.mark.parametrize("method", ["exact", "twn"])
def test_two_scales_never_worse_than_one(method):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 16, 3, 3))
    for layout in ("channel", "kernel"):
        c1, a1 = ternarize_variant(w, 4, method, layout, "one")
        c2, a2 = ternarize_variant(w, 4, method, layout, "two")
        e1 = ((w - dequantize_variant(c1, a1, 4, layout, "one")) ** 2).sum()
        e2 = ((w - dequantize_variant(c2, a2, 4, layout, "two")) ** 2).sum()
        assert e2 <= e1 + 1e-9 if method == "exact" else e2 < 1.2 * e1


def test_kernel_layout_groups_consecutive_weights_of_the_flattened_filter():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 5, 3, 3))
    codes, alpha = ternarize_variant(w, 4, "exact", "kernel")
    assert alpha.shape == (3, 12)                                   # ceil(45 / 4)
    flat_codes, flat_alpha = ternarize_variant(w.reshape(3, -1), 4, "exact")   # a linear layer, same groups
    np.testing.assert_array_equal(codes.reshape(3, -1), flat_codes)
    np.testing.assert_allclose(alpha, flat_alpha.reshape(3, -1))
    assert k_order(5, 3, 3, "kernel").tolist() == list(range(45))
    assert k_group_index(5, 3, 3, 4, "kernel").tolist() == [k // 4 for k in range(45)]
    ch = k_group_index(5, 3, 3, 4, "channel")                     # (ky, kx) outer, runs of 4 channels restart
    assert ch[:5].tolist() == [0, 0, 0, 0, 1] and ch[5] == 2


# --------------------------------------------------------------------------- integer kernels
def numpy_reference(x, codes, alpha_q, bias, *, n, stride, padding, groups, acc_bits, saturate, shift, lo, hi,
                    layout, scales):
    """Plain loops over every output element, in the layout's canonical order."""
    B, C, H, W = x.shape
    cout, cg, kh, kw = codes.shape
    OH, OW = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    alo, ahi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    if layout == "channel":
        order = [(c, ky, kx) for ky in range(kh) for kx in range(kw) for c in range(cg)]
        gid = [(ky * kw + kx) * -(-cg // n) + c // n for c, ky, kx in order]
    else:
        order = [(c, ky, kx) for c in range(cg) for ky in range(kh) for kx in range(kw)]
        gid = [i // n for i in range(len(order))]
    a = alpha_q.reshape(cout, -1, 2 if scales == "two" else 1).astype(np.int64)
    y, events = np.zeros((B, cout, OH, OW), np.int64), 0

    def keep(v):
        nonlocal events
        if alo <= v <= ahi:
            return v
        events += 1
        return min(max(v, alo), ahi) if saturate else (v - alo) % (ahi - alo + 1) + alo

    for b, o, oy, ox in itertools.product(range(B), range(cout), range(OH), range(OW)):
        acc, pos, neg = keep(int(bias[o])), 0, 0
        for i, (c, ky, kx) in enumerate(order):
            v = int(xp[b, (o // (cout // groups)) * cg + c, oy * stride + ky, ox * stride + kx]) * int(codes[o, c, ky, kx])
            if scales == "two" and codes[o, c, ky, kx] < 0:
                neg -= v
            else:
                pos += v
            if i + 1 == len(order) or gid[i + 1] != gid[i]:
                g = gid[i]
                step = pos * a[o, g, 0] - (neg * a[o, g, 1] if scales == "two" else 0)
                acc, pos, neg = keep(acc + step), 0, 0
        if shift > 0:
            q, r = divmod(acc, 2 ** shift)
            acc = q + (r > 2 ** (shift - 1) or (r == 2 ** (shift - 1) and q % 2 == 1))
        else:
            acc = acc * 2 ** -shift
        y[b, o, oy, ox] = min(max(acc, lo), hi)
    return y.astype(np.int32), events


variant_cases = st.fixed_dictionaries({
    "cin": st.integers(1, 6), "cout": st.integers(1, 4), "h": st.integers(1, 5), "w": st.integers(1, 5),
    "k": st.integers(1, 3), "stride": st.integers(1, 2), "padding": st.integers(0, 1), "depthwise": st.booleans(),
    "n": st.integers(1, 7), "act": st.sampled_from(sorted(ACTS)), "seed": st.integers(0, 2**16),
    "layout": st.sampled_from(["channel", "kernel"]), "scales": st.sampled_from(["one", "two"]),
    "acc_bits": st.sampled_from([10, 32]), "saturate": st.booleans(),
})


def random_variant_layer(case):
    rng = np.random.default_rng(case["seed"])
    cin, cout, groups = case["cin"], case["cout"], 1
    if case["depthwise"]:
        cout, groups = cin, cin
    k = case["k"]
    lo, hi = ACTS[case["act"]]
    x = rng.integers(lo, hi + 1, (2, cin, case["h"] + k - 1, case["w"] + k - 1)).astype(np.int32)
    x.flat[0] = lo
    w = rng.standard_normal((cout, cin // groups, k, k))
    w[rng.random(w.shape) < 0.2] = 0
    codes, alpha = ternarize_variant(w, case["n"], "exact", case["layout"], case["scales"])
    alpha_q = np.rint(alpha * 200).astype(np.int32)
    bias = rng.integers(-3000, 3000, cout).astype(np.int64)
    return x, codes, alpha_q, bias, groups


@settings(max_examples=60, deadline=None)
@given(variant_cases)
def test_variant_kernels_match_numpy_and_torch_references(case):
    x, codes, alpha_q, bias, groups = random_variant_layer(case)
    kw = dict(group_size=case["n"], stride=(case["stride"],) * 2, padding=(case["padding"],) * 2, dilation=(1, 1),
              groups=groups, acc_bits=case["acc_bits"], saturate=case["saturate"], shift=5, out_lo=-128, out_hi=127,
              group_layout=case["layout"], scales=case["scales"])
    y, ev = conv2d_int(x, codes, alpha_q, bias, **kw)
    y_t, ev_t = ref.conv2d_int(x, codes, alpha_q, bias, **kw)
    y_n, ev_n = numpy_reference(x, codes, alpha_q, bias, n=case["n"], stride=case["stride"], padding=case["padding"],
                                groups=groups, acc_bits=case["acc_bits"], saturate=case["saturate"], shift=5,
                                lo=-128, hi=127, layout=case["layout"], scales=case["scales"])
    np.testing.assert_array_equal(y, y_n)
    np.testing.assert_array_equal(y_t, y_n)
    assert ev == ev_n == ev_t


def test_variant_kernels_reject_a_wrong_alpha_shape():
    x = np.zeros((1, 4, 3, 3), np.int32)
    codes = np.zeros((2, 4, 3, 3), np.int8)
    kw = dict(group_size=4, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, acc_bits=32, saturate=True,
              shift=0, out_lo=-128, out_hi=127)
    with pytest.raises(ValueError, match="alpha_q must have shape"):
        conv2d_int(x, codes, np.zeros((2, 3, 3, 1), np.int32), np.zeros(2, np.int64), group_layout="kernel", **kw)
    with pytest.raises(ValueError, match="alpha_q must have shape"):
        conv2d_int(x, codes, np.zeros((2, 3, 3, 1), np.int32), np.zeros(2, np.int64), scales="two", **kw)


def test_linear_two_scales_match_the_reference():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (3, 10)).astype(np.int32)
    codes, alpha = ternarize_variant(rng.standard_normal((4, 10)), 4, "exact", scales="two")
    alpha_q = np.rint(alpha.reshape(4, -1, 2) * 100).astype(np.int32)
    kw = dict(group_size=4, acc_bits=32, saturate=True, shift=3, out_lo=-128, out_hi=127, scales="two")
    y, ev = linear_int(x, codes, alpha_q, np.zeros(4, np.int64), **kw)
    y_t, ev_t = ref.linear_int(x, codes, alpha_q, np.zeros(4, np.int64), **kw)
    np.testing.assert_array_equal(y, y_t)
    r = linear_engine(x[:1], codes, alpha_q, np.zeros(4, np.int64), hw=make_hw(), **kw)
    np.testing.assert_array_equal(r.y, y[:1])


# --------------------------------------------------------------------------- cycle engine and analytic model
variant_designs = st.fixed_dictionaries({
    "rows": st.integers(1, 5), "cols": st.integers(1, 4), "dataflow": st.sampled_from(DATAFLOWS),
    "placement": st.sampled_from(["per_column", "shared", "per_pe"]), "per_col": st.integers(1, 3),
    "acc_bits": st.sampled_from([10, 32]), "out_kib": st.sampled_from([0.02, 64.0]),
    "zero_weights": st.sampled_from(["gate", "skip"]),
})


@settings(max_examples=80, deadline=None)
@given(variant_cases, variant_designs)
def test_variant_engine_equals_kernels_and_analytic_model(case, design):
    x, codes, alpha_q, bias, groups = random_variant_layer(case)
    x = x[:1]
    hw = make_hw(**design, overflow="saturate" if case["saturate"] else "wrap")
    kw = dict(group_size=case["n"], stride=(case["stride"],) * 2, padding=(case["padding"],) * 2, dilation=(1, 1),
              groups=groups, acc_bits=design["acc_bits"], saturate=case["saturate"], shift=5, out_lo=-128,
              out_hi=127, group_layout=case["layout"], scales=case["scales"])
    y, events = conv2d_int(x, codes, alpha_q, bias, **kw)
    r = conv2d_engine(x, codes, alpha_q, bias, hw=hw, **kw)
    np.testing.assert_array_equal(r.y, y)
    assert r.overflow_events == events
    analytic = layer_timing(r.shape, hw)
    assert ternary_timing(r.shape, hw, r.cycles, plan=skip_plan(r.shape, hw)).as_dict() == analytic.as_dict()
    assert r.cycles.group_mults == analytic.group_multiplies
    assert r.shape.scales == (2 if case["scales"] == "two" else 1)


def test_two_scales_double_the_multiplies_and_stall_on_few_multipliers():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 16, 3, 3))
    x = rng.integers(0, 256, (1, 16, 6, 6)).astype(np.int32)
    bias = np.zeros(4, np.int64)
    hw = make_hw(rows=8, cols=2, per_col=1)                       # one multiplier per column
    kw = dict(group_size=4, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, acc_bits=32, saturate=True,
              shift=8, out_lo=-128, out_hi=127)
    runs = {}
    for scales in ("one", "two"):
        codes, alpha = ternarize_variant(w, 4, "exact", scales=scales)
        alpha_q = np.rint(alpha * 100).astype(np.int32)
        r = conv2d_engine(x, codes, alpha_q, bias, hw=hw, scales=scales, **kw)
        np.testing.assert_array_equal(r.y, conv2d_int(x, codes, alpha_q, bias, scales=scales, **kw)[0])
        assert ternary_timing(r.shape, hw, r.cycles).as_dict() == ternary_timing(r.shape, hw).as_dict()
        runs[scales] = r
    assert runs["two"].cycles.group_mults == 2 * runs["one"].cycles.group_mults
    assert runs["two"].cycles.group_stall > runs["one"].cycles.group_stall
    assert runs["two"].cycles.compute == runs["one"].cycles.compute
