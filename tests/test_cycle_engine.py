"""Cycle-stepped engine: outputs bit-identical to the integer kernels, cycles identical to the analytic model."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tersim.config import Accelerator
from tersim.engine.cycle_engine import baseline_gemm, conv2d_engine, im2col, linear_engine  # noqa: F401 (im2col re-exported)
from tersim.errors import EngineError
from tersim.kernels import conv2d_int, linear_int
from tersim.timing.analytic import baseline_layer_timing, layer_timing, skip_plan, ternary_timing

DATAFLOWS = ["weight_stationary", "input_stationary", "output_stationary"]
ACTS = {"int8": (-128, 127), "uint8": (0, 255), "uint4": (0, 15)}


def make_hw(rows=4, cols=3, dataflow="weight_stationary", placement="per_column", per_col=1, acc_bits=32,
            overflow="saturate", out_kib=64.0, zero_weights="gate") -> Accelerator:
    multipliers = {"per_column": cols * per_col, "shared": per_col, "per_pe": rows * cols}[placement]
    array = {"rows": rows, "cols": cols, "dataflow": dataflow}
    return Accelerator.model_validate({
        "array": array, "group_scaling": {"multipliers": multipliers, "placement": placement},
        "pe": {"zero_weights": zero_weights},
        "accumulator": {"bits": acc_bits, "overflow": overflow},
        "memory": {"output_buffer_kib": out_kib},
        "baseline": {"array": array, "memory": {"output_buffer_kib": out_kib}},
    })


def random_layer(rng, cin, cout, h, w, k, groups, n, act, weights, zeros=0.0):
    lo, hi = ACTS[act]
    cin_g = cin // groups
    x = rng.integers(lo, hi + 1, (1, cin, h, w)).astype(np.int32)
    x.flat[0] = lo                                          # int8 -128 always present when signed
    codes = (rng.integers(-1, 2, (cout, cin_g, k, k)) if weights == "ternary"
             else rng.integers(-127, 128, (cout, cin_g, k, k))).astype(np.int8)
    g = -(-cin_g // n)
    alpha = rng.integers(0, 256, (cout, k, k, g)).astype(np.int32)
    codes[rng.random(codes.shape) < zeros] = 0              # sparser layers: skip finds K indices to drop
    if weights == "int8":                                   # one scale per output channel, at every (ky, kx)
        alpha[:] = alpha[:, :1, :1, :1]
    bias = rng.integers(-3000, 3000, cout).astype(np.int64)
    return x, codes, alpha, bias


def check_engine(x, codes, alpha, bias, hw, *, n, stride=1, padding=0, dilation=1, groups=1, shift=4,
                 weights="ternary", saturate=True):
    kw = dict(group_size=n, stride=(stride, stride), padding=(padding, padding), dilation=(dilation, dilation),
              groups=groups, acc_bits=hw.accumulator.bits, saturate=saturate, shift=shift, out_lo=-128, out_hi=127)
    y, events = conv2d_int(x, codes, alpha, bias, **kw)
    r = conv2d_engine(x, codes, alpha, bias, hw=hw, weight_kind=weights, **kw)
    assert r.y.dtype == y.dtype and r.y.shape == y.shape
    np.testing.assert_array_equal(r.y, y)
    assert r.overflow_events == events
    analytic = layer_timing(r.shape, hw)                    # skip: the compressor's schedule
    assert ternary_timing(r.shape, hw, r.cycles, plan=skip_plan(r.shape, hw)).as_dict() == analytic.as_dict()
    assert r.cycles.compute == analytic.compute_cycles and r.cycles.group_stall == analytic.stall_group_scale_cycles
    assert r.cycles.tile_reload == analytic.tile_reload_cycles and r.cycles.group_mults == analytic.group_multiplies
    return r, events


conv_cases = st.fixed_dictionaries({
    "cin": st.integers(1, 7), "cout": st.integers(1, 5), "h": st.integers(1, 6), "w": st.integers(1, 6),
    "k": st.integers(1, 3), "stride": st.integers(1, 2), "padding": st.integers(0, 1), "dilation": st.integers(1, 2),
    "depthwise": st.booleans(), "n": st.integers(1, 5), "act": st.sampled_from(sorted(ACTS)),
    "weights": st.sampled_from(["ternary", "ternary", "int8"]), "seed": st.integers(0, 2**16),
    "zeros": st.sampled_from([0.0, 0.7, 0.95]),
})
designs = st.fixed_dictionaries({
    "rows": st.integers(1, 5), "cols": st.integers(1, 5), "dataflow": st.sampled_from(DATAFLOWS),
    "placement": st.sampled_from(["per_column", "shared", "per_pe"]), "per_col": st.integers(1, 3),
    "acc_bits": st.sampled_from([10, 14, 32]), "overflow": st.sampled_from(["saturate", "wrap"]),
    "out_kib": st.sampled_from([0.02, 0.1, 64.0]), "zero_weights": st.sampled_from(["gate", "skip"]),
})


@settings(max_examples=120, deadline=None)
@given(conv_cases, designs)
def test_engine_equals_integer_kernel_and_analytic_model(case, design):
    rng = np.random.default_rng(case["seed"])
    cin, cout, groups = case["cin"], case["cout"], 1
    if case["depthwise"]:
        cout, groups = cin, cin
    h, w = case["h"] + (case["k"] - 1) * case["dilation"], case["w"] + (case["k"] - 1) * case["dilation"]
    n = cin // groups if case["weights"] == "int8" else case["n"]
    x, codes, alpha, bias = random_layer(rng, cin, cout, h, w, case["k"], groups, n, case["act"], case["weights"],
                                         case["zeros"])
    hw = make_hw(**design)
    check_engine(x, codes, alpha, bias, hw, n=n, stride=case["stride"], padding=case["padding"],
                 dilation=case["dilation"], groups=groups, weights=case["weights"],
                 saturate=design["overflow"] == "saturate")


@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_narrow_accumulator_overflows_identically(dataflow, overflow):
    rng = np.random.default_rng(1)
    x, codes, alpha, bias = random_layer(rng, 6, 4, 5, 5, 3, 1, 4, "int8", "ternary")   # N=4 does not divide C=6
    hw = make_hw(rows=4, cols=2, dataflow=dataflow, acc_bits=12, overflow=overflow)
    _, events = check_engine(x, codes, alpha, bias, hw, n=4, padding=1, saturate=overflow == "saturate")
    assert events > 0


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_group_cut_by_fold_boundary_is_carried_not_split(dataflow):
    # K = 10 channels of a 1x1 conv, N = 3 (groups 0-2, 3-5, 6-8, 9) on 4 rows: folds cut groups 3-5 and 6-8.
    rng = np.random.default_rng(2)
    x, codes, alpha, bias = random_layer(rng, 10, 3, 3, 3, 1, 1, 3, "uint8", "ternary")
    hw = make_hw(rows=4, cols=2, dataflow=dataflow, acc_bits=11)
    r, _ = check_engine(x, codes, alpha, bias, hw, n=3)
    assert r.cycles.group_mults == 4 * 3 * 9          # one multiply per group, never per piece


def test_os_paper_formula_adds_a_drain_of_rows_per_fold():
    rng = np.random.default_rng(3)
    x, codes, alpha, bias = random_layer(rng, 4, 3, 4, 4, 3, 1, 2, "uint8", "ternary")
    hw = make_hw(rows=3, cols=2, dataflow="output_stationary")
    kw = dict(group_size=2, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, acc_bits=32, saturate=True,
              shift=4, out_lo=-128, out_hi=127)
    scalesim = conv2d_engine(x, codes, alpha, bias, hw=hw, **kw)
    paper = conv2d_engine(x, codes, alpha, bias, hw=hw, os_formula="paper", **kw)
    np.testing.assert_array_equal(paper.y, scalesim.y)
    folds = 6 * 2                                     # P = 16 on 3 rows, N = 3 on 2 columns
    assert paper.cycles.compute - scalesim.cycles.compute == folds * 3
    assert paper.cycles.compute == layer_timing(paper.shape, hw, os_formula="paper").compute_cycles


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_linear_layer(dataflow):
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (1, 13)).astype(np.int32)
    codes = rng.integers(-1, 2, (5, 13)).astype(np.int8)
    alpha = rng.integers(1, 256, (5, 4)).astype(np.int32)
    bias = rng.integers(-500, 500, 5).astype(np.int64)
    kw = dict(group_size=4, acc_bits=16, saturate=False, shift=3, out_lo=-128, out_hi=127)
    y, events = linear_int(x, codes, alpha, bias, **kw)
    hw = make_hw(rows=4, cols=2, dataflow=dataflow, placement="shared")
    r = linear_engine(x, codes, alpha, bias, hw=hw, **kw)
    np.testing.assert_array_equal(r.y, y)
    assert r.overflow_events == events
    assert ternary_timing(r.shape, hw, r.cycles).as_dict() == ternary_timing(r.shape, hw).as_dict()


def test_few_multipliers_stall_and_per_pe_does_not():
    rng = np.random.default_rng(5)
    x, codes, alpha, bias = random_layer(rng, 8, 4, 6, 6, 1, 1, 1, "uint8", "ternary")
    r, _ = check_engine(x, codes, alpha, bias, make_hw(rows=4, cols=2, per_col=1), n=1)
    assert r.cycles.group_stall > 0                   # 4 groups end per cycle per column, 1 multiplier each
    r, _ = check_engine(x, codes, alpha, bias, make_hw(rows=4, cols=2, placement="per_pe"), n=1)
    assert r.cycles.group_stall == 0


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_skip_steps_only_the_kept_k_indices(dataflow):
    # 3x3 conv, 12 channels, channels 4..9 pruned in every filter: K = 108 -> 36 kept (ws, os); is cannot skip.
    rng = np.random.default_rng(6)
    x, codes, alpha, bias = random_layer(rng, 12, 5, 6, 6, 3, 1, 2, "uint8", "ternary")
    codes[:, 4:10] = 0
    gate, _ = check_engine(x, codes, alpha, bias, make_hw(rows=8, cols=3, dataflow=dataflow), n=2, padding=1)
    skip, _ = check_engine(x, codes, alpha, bias, make_hw(rows=8, cols=3, dataflow=dataflow, zero_weights="skip"),
                           n=2, padding=1)
    np.testing.assert_array_equal(skip.y, gate.y)
    if dataflow == "input_stationary":
        assert skip.stepped_cycles == gate.stepped_cycles
    else:
        assert skip.stepped_cycles < gate.stepped_cycles
        assert skip.cycles.group_mults <= gate.cycles.group_mults // 2     # at most 3 of 6 groups per position left


@settings(max_examples=25, deadline=None)
@given(conv_cases, designs)
def test_fp32_baseline_on_the_same_stepping(case, design):
    rng = np.random.default_rng(case["seed"])
    cin, cout, groups = case["cin"], case["cout"], 1
    if case["depthwise"]:
        cout, groups = cin, cin
    h, w = case["h"] + 2, case["w"] + 2
    x = rng.standard_normal((1, cin, h, w)).astype(np.float32)
    weight = rng.standard_normal((cout, cin // groups, case["k"], case["k"])).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    hw = make_hw(**design)
    geometry = dict(stride=(case["stride"],) * 2, padding=(case["padding"],) * 2, dilation=(1, 1), groups=groups)
    r = baseline_gemm(x, weight, bias, hw=hw, **geometry)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(weight).double(),
                                     torch.from_numpy(bias).double(), **geometry).numpy()
    np.testing.assert_allclose(r.y, ref, rtol=1e-4, atol=1e-4)
    analytic = baseline_layer_timing(r.shape, hw)
    assert baseline_layer_timing(r.shape, hw, r.cycles).as_dict() == analytic.as_dict()


def test_im2col_order_is_kernel_position_then_channel():
    x = np.arange(2 * 3 * 3, dtype=np.int32).reshape(1, 2, 3, 3)
    cols = im2col(x, 2, 2, (1, 1), (0, 0), (1, 1), 1, 2, 2)
    assert cols.shape == (1, 4, 8)
    assert list(cols[0, 0]) == [0, 9, 1, 10, 3, 12, 4, 13]   # (ky, kx) outer, channel inner


def test_bad_input_is_one_clear_error():
    hw = make_hw()
    with pytest.raises(EngineError, match="layer 'l1': alpha_q must have shape"):
        conv2d_engine(np.zeros((1, 2, 3, 3), np.int32), np.zeros((1, 2, 1, 1), np.int8), np.zeros((1, 1, 1, 2), np.int32),
                      np.zeros(1, np.int64), group_size=2, stride=1, padding=0, dilation=1, groups=1, acc_bits=32,
                      saturate=True, shift=0, out_lo=0, out_hi=255, hw=hw, name="l1")


def test_kernel_counters_are_named_and_consistent():
    """The Numba kernels' counters, unpacked once (GemmCounters): stepped = load + stream, and the
    overhead split adds up to what is not streaming data."""
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (1, 6, 5, 5)).astype(np.int32)
    codes = rng.integers(-1, 2, (5, 6, 3, 3)).astype(np.int8)
    alpha = rng.integers(1, 255, (5, 3, 3, 2)).astype(np.int32)
    bias = rng.integers(-100, 100, 5).astype(np.int64)
    for dataflow in ("weight_stationary", "input_stationary", "output_stationary"):
        hw = make_hw(dataflow=dataflow, out_kib=0.05)    # a tiny output buffer: several T tiles (ws/is)
        r = conv2d_engine(x, codes, alpha, bias, group_size=4, stride=(1, 1), padding=(1, 1), dilation=(1, 1),
                          groups=1, acc_bits=32, saturate=True, shift=4, out_lo=-128, out_hi=127, hw=hw)
        c = r.counters
        assert c.stepped == r.stepped_cycles == c.load + c.stream
        assert c.group_sums == r.cycles.group_mults and c.group_stall == r.cycles.group_stall
        assert c.reload_overhead == r.cycles.tile_reload
        assert c.overflow_events == r.overflow_events
        assert (c.reload_overhead > 0) == (dataflow != "output_stationary")


gemm_cases = st.fixed_dictionaries({
    "S": st.integers(1, 13), "K": st.integers(1, 17), "T": st.integers(1, 19), "rows": st.integers(1, 5),
    "cols": st.integers(1, 5), "t_tile": st.integers(1, 8), "n_in_time": st.booleans(), "group": st.integers(1, 6),
    "two_scales": st.booleans(), "kind": st.sampled_from([0, 1, 2]), "rate": st.integers(1, 3),
    "acc_bits": st.sampled_from([8, 12, 32]), "wrap": st.booleans(), "wide_psum": st.booleans(),
    "seed": st.integers(0, 2**16),
})


@settings(max_examples=150, deadline=None)
@given(gemm_cases)
def test_threaded_stream_gemm_equals_the_serial_one(case):
    """run_stream_gemm deals its (column fold, T tile) pairs to one worker per thread (scratch reused across a worker's tiles): outputs and every counter equal the
    serial fold-by-fold loop (tests/serial_systolic.py) over ragged folds and tiles, one or two scales, every
    FIFO kind (stalls included), saturating or wrapping narrow accumulators (overflow events), int8 -128."""
    from numba import get_num_threads, set_num_threads
    from serial_systolic import serial_stream_gemm

    from tersim.kernels.systolic import STEPPED, pack_two_scale_codes, run_stream_gemm

    c = case
    rng = np.random.default_rng(c["seed"])
    S, K, T = c["S"], c["K"], c["T"]
    psum = np.int64 if c["two_scales"] or c["wide_psum"] else np.int32
    n_filters, n_pixels = (T, S) if c["n_in_time"] else (S, T)
    x = rng.integers(-128, 128, (n_pixels, K))
    x.flat[0] = -128
    codes = rng.integers(-1, 2, (n_filters, K))
    w = pack_two_scale_codes(codes) if c["two_scales"] else codes
    # ws: the weights (N, K) are stationary, the activations stream; is: the activations (P, K) are stationary
    stat, strm = (x, w.T) if c["n_in_time"] else (w, x.T)
    stat, strm = np.ascontiguousarray(stat, psum), np.ascontiguousarray(strm, psum)
    ends = np.zeros(K, np.bool_)
    ends[c["group"] - 1::c["group"]] = True
    ends[K - 1] = True
    gidx = np.cumsum(np.r_[0, ends[:-1]]).astype(np.int64)
    alpha = rng.integers(0, 256, (n_filters, int(ends.sum()))).astype(np.int64)
    alpha_neg = rng.integers(0, 256, alpha.shape).astype(np.int64) if c["two_scales"] else None
    bias = rng.integers(-3000, 3000, n_filters).astype(np.int64)
    lo, hi = -(2 ** (c["acc_bits"] - 1)), 2 ** (c["acc_bits"] - 1) - 1
    args = (stat, strm, ends, gidx, alpha, bias, c["n_in_time"], c["rows"], c["cols"], c["t_tile"], lo, hi, c["wrap"],
            c["kind"], c["rate"])
    ref = np.zeros((T, S), np.int64)
    want = serial_stream_gemm(*args, ref, np.zeros(1, psum), alpha_neg)
    assert want[STEPPED] > 0
    threads = get_num_threads()
    try:
        for n in sorted({1, min(2, numba_config_threads())}):   # one worker, and two sharing the tiles
            set_num_threads(n)
            out = np.full((T, S), 7, np.int64)          # every slot written, none left from a previous tile
            got = run_stream_gemm(*args, out, np.zeros(1, psum), alpha_neg)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(out, ref)
    finally:
        set_num_threads(threads)


def test_threaded_stream_gemm_equals_the_serial_one_on_floats():
    """The FP32 baseline's stepping (float32 data, no clamping): the same sums in the same order, bit for bit."""
    from serial_systolic import serial_stream_gemm

    from tersim.kernels.systolic import run_stream_gemm

    rng = np.random.default_rng(5)
    S, K, T = 11, 23, 37
    stat, strm = rng.standard_normal((S, K)).astype(np.float32), rng.standard_normal((K, T)).astype(np.float32)
    ends = np.zeros(K, np.bool_)
    ends[3::4] = True
    ends[-1] = True
    args = (stat, strm, ends, np.zeros(K, np.int64), np.ones((S, 1), np.float32), rng.standard_normal(S).astype(np.float32),
            False, 4, 3, 5, -2.0**62, 2.0**62, False, 0, 1)
    out, ref = np.zeros((T, S), np.float32), np.zeros((T, S), np.float32)
    np.testing.assert_array_equal(run_stream_gemm(*args, out, np.zeros(1, np.float32)),
                                  serial_stream_gemm(*args, ref, np.zeros(1, np.float32)))
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(out, (stat @ strm).T + args[5], rtol=1e-4, atol=1e-4)


def numba_config_threads() -> int:
    """The most threads Numba may use here (set_num_threads cannot go above it)."""
    from numba import config
    return config.NUMBA_NUM_THREADS


def _serial_case(rng, S, K, T, *, rows, cols, group, two_scales=False, wide_psum=False, acc_bits=32, n_in_time=False,
                 alpha_hi=256, x_lo=-128, x_hi=128):
    """run_stream_gemm's arguments on random int8 activations (-128 included) and ternary codes."""
    from tersim.kernels.systolic import pack_two_scale_codes
    psum = np.int64 if two_scales or wide_psum else np.int32
    n_filters, n_pixels = (T, S) if n_in_time else (S, T)
    x = rng.integers(x_lo, x_hi, (n_pixels, K))
    x.flat[0] = x_lo
    codes = rng.integers(-1, 2, (n_filters, K))
    w = pack_two_scale_codes(codes) if two_scales else codes
    stat, strm = (x, w.T) if n_in_time else (w, x.T)
    ends = np.zeros(K, np.bool_)
    ends[group - 1::group] = True
    ends[K - 1] = True
    gidx = np.cumsum(np.r_[0, ends[:-1]]).astype(np.int64)
    alpha = rng.integers(0, alpha_hi, (n_filters, int(ends.sum()))).astype(np.int64)
    alpha_neg = rng.integers(0, alpha_hi, alpha.shape).astype(np.int64) if two_scales else None
    bias = rng.integers(-3000, 3000, n_filters).astype(np.int64)
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    return ((np.ascontiguousarray(stat, psum), np.ascontiguousarray(strm, psum), ends, gidx, alpha, bias, n_in_time,
             rows, cols), (lo, hi), psum, alpha_neg)


@pytest.mark.parametrize("rows,cols,S,T,t_tile", [(4, 3, 11, 9, 4), (1, 1, 5, 6, 2), (1, 4, 30, 3, 2), (5, 1, 3, 7, 3),
                                                  (16, 16, 70, 20, 16)])
@pytest.mark.parametrize("variant", ["one scale", "two scales", "int64 psums", "wrap", "saturate"])
def test_side_by_side_column_folds_equal_the_serial_stepping(rows, cols, S, T, t_tile, variant):
    """ws steps up to MAX_SEGMENTS column folds of a T tile side by side (an idle segment when the folds do not
    divide): outputs and every counter equal the one-fold-at-a-time serial stepping, on 1-row / 1-column arrays,
    ragged folds and tiles, one or two scales, int64 partial sums, wrapping or saturating narrow accumulators."""
    from numba import get_num_threads, set_num_threads
    from serial_systolic import serial_stream_gemm

    from tersim.kernels.systolic import _segments, narrow_scales, run_stream_gemm

    rng = np.random.default_rng(rows * 100 + cols * 10 + S)
    narrow = variant in ("wrap", "saturate")
    geo, (lo, hi), psum, alpha_neg = _serial_case(rng, S, 13, T, rows=rows, cols=cols, group=3,
                                                  two_scales=variant == "two scales",
                                                  wide_psum=variant == "int64 psums", acc_bits=12 if narrow else 32)
    tail = (t_tile, lo, hi, variant == "wrap", 0, 1)
    ref = np.zeros((T, S), np.int64)
    want = serial_stream_gemm(*geo, *tail, ref, np.zeros(1, psum), alpha_neg)
    n_folds, n_tiles = -(-S // cols), -(-T // t_tile)
    assert _segments(geo[2], rows, cols, n_folds, n_tiles, False, 1, 1, 0, 1) > 1   # the side-by-side path runs
    threads = get_num_threads()
    try:
        for n in sorted({1, min(2, numba_config_threads())}):
            set_num_threads(n)
            for a, an in ((geo[4], alpha_neg), (narrow_scales(geo[4]), narrow_scales(alpha_neg))):
                out = np.full((T, S), 7, np.int64)
                got = run_stream_gemm(*geo[:4], a, *geo[5:], *tail, out, np.zeros(1, psum), an)
                np.testing.assert_array_equal(got, want)
                np.testing.assert_array_equal(out, ref)
    finally:
        set_num_threads(threads)
    if narrow:
        assert want[6] > 0                                   # OVERFLOW_EVENTS: the narrow accumulator overflowed


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_int32_alphas_give_the_exact_64_bit_products(dataflow):
    """Alphas narrowed to int32 (narrow_scales) multiply int32 partial sums near 2**31 exactly: the products
    (> 2**31) and a 64-bit accumulator equal the int64-alpha run and the serial stepping, on every dataflow."""
    from serial_systolic import serial_stream_gemm

    from tersim.kernels.systolic import narrow_scales, run_os_gemm, run_stream_gemm

    rng = np.random.default_rng(11)
    S, K, T = 6, 9, 5
    x = np.full((T, K), 2**31 // K - 7, np.int64)            # a group sum of 9 near 2**31 - 1, in an int32 register
    w = np.ones((S, K), np.int64)
    w[0, :] = -1
    ends = np.zeros(K, np.bool_)
    ends[-1] = True
    gidx = np.zeros(K, np.int64)
    alpha = np.full((S, 1), 2**31 - 1, np.int64)
    alpha[1] = rng.integers(1, 2**31 - 1)
    bias = np.zeros(S, np.int64)
    lo, hi = -(2**62), 2**62 - 1
    assert narrow_scales(alpha).dtype == np.int32
    assert narrow_scales(alpha * 2).dtype == np.int64 and narrow_scales(None) is None
    assert narrow_scales(np.ones((2, 1), np.float32)).dtype == np.float32
    want = (x @ w.T) * alpha[:, 0]
    assert np.abs(want).max() > 2**61
    x32, w32 = x.astype(np.int32), w.astype(np.int32)
    for a in (alpha, narrow_scales(alpha)):
        out = np.zeros((T, S), np.int64)
        if dataflow == "output_stationary":
            run_os_gemm(x32, w32, ends, gidx, a, bias, 4, 3, False, lo, hi, False, 0, 1, out, np.zeros(1, np.int32))
        elif dataflow == "weight_stationary":
            run_stream_gemm(w32, np.ascontiguousarray(x32.T), ends, gidx, a, bias, False, 4, 3, 4, lo, hi, False, 0, 1,
                            out, np.zeros(1, np.int32))
            ref = np.zeros((T, S), np.int64)
            serial_stream_gemm(w32, np.ascontiguousarray(x32.T), ends, gidx, alpha, bias, False, 4, 3, 4, lo, hi,
                               False, 0, 1, ref, np.zeros(1, np.int32))
            np.testing.assert_array_equal(out, ref)
        else:
            out_t = np.zeros((S, T), np.int64)
            run_stream_gemm(x32, np.ascontiguousarray(w32.T), ends, gidx, a, bias, True, 4, 3, 4, lo, hi, False, 0,
                            1, out_t, np.zeros(1, np.int32))
            out = out_t.T
        np.testing.assert_array_equal(out, want)


bound_cases = st.fixed_dictionaries({
    "S": st.integers(1, 6), "K": st.integers(1, 12), "T": st.integers(1, 6), "group": st.integers(1, 5),
    "x_max": st.sampled_from([1, 127, 128, 255, 2**12]), "w_max": st.sampled_from([1, 127]),
    "alpha_max": st.sampled_from([1, 255, 2**16]), "bias_max": st.sampled_from([0, 3000, 2**20]),
    "acc_bits": st.integers(4, 40), "seed": st.integers(0, 2**16),
})


@settings(max_examples=300, deadline=None)
@given(bound_cases)
def test_in_range_bound_is_sound(case):
    """When sums_stay_in_range says a GEMM's accumulators cannot leave [lo, hi] (the stepping then skips
    clamping and uses int32 accumulators), every value an accumulator takes, in the array's order (bias, then
    one product per group end), is within the range and an int32; int8 -128 and the largest operands
    included."""
    from tersim.kernels.systolic import sums_stay_in_range

    c = case
    rng = np.random.default_rng(c["seed"])
    S, K, T = c["S"], c["K"], c["T"]
    stat = rng.integers(-c["w_max"], c["w_max"] + 1, (S, K))
    strm = rng.integers(-c["x_max"], c["x_max"] + 1, (K, T))
    stat.flat[0], strm.flat[0] = -c["w_max"], -c["x_max"]           # the extremes are present (int8 -128)
    ends = np.zeros(K, np.bool_)
    ends[c["group"] - 1::c["group"]] = True
    ends[K - 1] = True
    alpha = rng.integers(0, c["alpha_max"] + 1, (S, int(ends.sum())))
    bias = rng.integers(-c["bias_max"], c["bias_max"] + 1, S)
    lo, hi = -(2 ** (c["acc_bits"] - 1)), 2 ** (c["acc_bits"] - 1) - 1
    if not sums_stay_in_range(stat, strm, ends, alpha, bias, lo, hi):
        return
    group_of = np.cumsum(np.r_[0, ends[:-1]])
    for s in range(S):
        for t in range(T):
            value = int(bias[s])
            for g in range(int(ends.sum())):
                k = group_of == g
                value += int((stat[s, k] * strm[k, t]).sum()) * int(alpha[s, g])
                assert lo <= value <= hi and -2**31 <= value < 2**31


def test_in_range_bound_refuses_what_it_cannot_bound():
    """Floats (the FP32 baseline: not clamped; float scales or bias, which max_abs would truncate), two scales
    (the product subtracts), a bias out of range and operands whose worst case reaches half the range all keep
    the clamping stepping; ResNet-50's 8-bit ternary layers on a 32-bit accumulator (K = 4608, N = 4,
    alpha < 256) take the fast one."""
    from tersim.kernels.systolic import sums_stay_in_range

    K = 4608
    ends = np.zeros(K, np.bool_)
    ends[3::4] = True
    x = np.full((K, 49), 255, np.int16)
    w = np.ones((16, K), np.int16)
    alpha, bias = np.full((16, K // 4), 255, np.int32), np.zeros(16, np.int64)
    lo, hi = -2**31, 2**31 - 1
    assert sums_stay_in_range(w, x, ends, alpha, bias, lo, hi)
    assert not sums_stay_in_range(w, x, ends, alpha, bias, lo, hi, alpha)            # two scales
    assert not sums_stay_in_range(w.astype(np.float32), x.astype(np.float32), ends, alpha, bias, lo, hi)
    assert not sums_stay_in_range(w, x, ends, np.full(alpha.shape, 0.5), bias, lo, hi)  # float scale (int: 0)
    assert not sums_stay_in_range(w, x, ends, alpha, bias.astype(np.float64), lo, hi)
    assert not sums_stay_in_range(w, x, ends, alpha, np.full(16, 2**31, np.int64), lo, hi)
    assert not sums_stay_in_range(w, x, ends, alpha * 8, bias, lo, hi)               # 2.4e9 > 2**30
    assert not sums_stay_in_range(w, x, ends, alpha, bias, -2**23, 2**23 - 1)        # a 24-bit accumulator


@pytest.mark.parametrize("acc_bits", [28, 30, 32, 40])
@pytest.mark.parametrize("wrap", [False, True])
def test_fast_and_clamping_stepping_agree_at_the_bound(acc_bits, wrap):
    """Operands whose worst case (~5.4e8) is inside the fast path's bound on a 32-bit or wider accumulator and
    outside it on a 30- or 28-bit one (the stepping switches between adding into int32 accumulators and clamping
    into int64 ones): outputs and counters equal the serial stepping, which always clamps. The 28-bit
    accumulator overflows; the 30-bit one takes the clamping path and does not overflow."""
    from serial_systolic import serial_stream_gemm

    from tersim.kernels.systolic import OVERFLOW_EVENTS, run_stream_gemm, sums_stay_in_range

    rng = np.random.default_rng(acc_bits)
    S, K, T = 7, 16, 9
    stat = np.ones((S, K), np.int32)                      # same-sign products: the sums grow as fast as they can
    strm = rng.integers(2**12, 2**13, (K, T)).astype(np.int32)
    ends = np.zeros(K, np.bool_)
    ends[3::4] = True
    gidx = np.cumsum(np.r_[0, ends[:-1]]).astype(np.int64)
    alpha = rng.integers(2**11, 2**12, (S, 4)).astype(np.int64)
    bias = rng.integers(-1000, 1000, S).astype(np.int64)
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    args = (stat, strm, ends, gidx, alpha, bias, False, 4, 3, 5, lo, hi, wrap, 0, 1)
    ref, out = np.zeros((T, S), np.int64), np.zeros((T, S), np.int64)
    want = serial_stream_gemm(*args, ref, np.zeros(1, np.int32))
    got = run_stream_gemm(*args, out, np.zeros(1, np.int32))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(out, ref)
    assert sums_stay_in_range(stat, strm, ends, alpha, bias, lo, hi) == (acc_bits >= 32)
    sums = bias[:, None] + np.cumsum((strm.reshape(4, 4, T).sum(1))[None] * alpha[:, :, None], axis=1).max(1)
    assert (want[OVERFLOW_EVENTS] > 0) == (sums.max() > hi) == (acc_bits == 28)
