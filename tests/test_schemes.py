"""k-bit weight schemes (tersim.quantize.schemes): PyTorch fake-quant equality, code ranges, bit-exact execution
on the shipped model, and PE kinds that pay for their multipliers (tersim.timing.pe_kinds)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tersim.config import load_accelerator
from tersim.errors import ConfigError, TersimError
from tersim.quantize.schemes import (cluster_rows, dequantize_scheme, levels, lloyd_1d, quantize_scheme)
from tersim.timing.analytic import baseline_layer_timing, layer_timing
from tersim.timing.shapes import LayerShape
from tersim.timing.summary import model_summary

ROOT = Path(__file__).resolve().parents[1]
MODEL, DATA, HW = ROOT / "examples/digits_resnet.pt2", ROOT / "examples/digits_test.npz", ROOT / "hw_configs/default.yaml"


def _weights(seed: int, shape=(12, 5, 3, 3)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spread = rng.uniform(1e-3, 4.0, size=(shape[0],) + (1,) * (len(shape) - 1))
    w = (rng.standard_normal(shape) * spread).astype(np.float32)
    w[0] = np.abs(w[0])          # a one-signed channel: the asymmetric range must still include 0
    return w


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), bits=st.integers(2, 8), linear=st.booleans())
def test_uniform_equals_torch_fake_quant_per_channel_and_per_tensor(seed, bits, linear):
    w = _weights(seed, (7, 33) if linear else (6, 4, 3, 3))
    qmax = 2 ** (bits - 1) - 1
    r = quantize_scheme(w, "uniform", bits, "channel")
    ref = torch.fake_quantize_per_channel_affine(torch.from_numpy(w), torch.from_numpy(r.scale),
                                                 torch.zeros(w.shape[0], dtype=torch.int32), 0, -qmax, qmax)
    assert torch.equal(torch.from_numpy(dequantize_scheme(r.codes, r.scale)), ref)
    r = quantize_scheme(w, "uniform", bits, "tensor")
    assert np.unique(r.scale).size == 1
    ref = torch.fake_quantize_per_tensor_affine(torch.from_numpy(w), float(r.scale[0]), 0, -qmax, qmax)
    assert torch.equal(torch.from_numpy(dequantize_scheme(r.codes, r.scale)), ref)
    assert np.abs(r.codes).max() <= qmax


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), bits=st.integers(2, 7), granularity=st.sampled_from(["channel", "tensor"]))
def test_uniform_asym_codes_are_q_minus_zero_point_and_equal_torch(seed, bits, granularity):
    """The datapath's codes are q - z: code * scale equals torch's (q - z) * scale, and codes + z is a valid
    unsigned k-bit q, so the integer conv sum(code * x) is exactly sum((q - z) * x)."""
    w = _weights(seed)
    r = quantize_scheme(w, "uniform_asym", bits, granularity)
    z = r.zero_point.astype(np.int32)
    if granularity == "channel":
        ref = torch.fake_quantize_per_channel_affine(torch.from_numpy(w), torch.from_numpy(r.scale),
                                                     torch.from_numpy(z), 0, 0, 2 ** bits - 1)
    else:
        ref = torch.fake_quantize_per_tensor_affine(torch.from_numpy(w), float(r.scale[0]), int(z[0]), 0,
                                                    2 ** bits - 1)
    assert torch.equal(torch.from_numpy(dequantize_scheme(r.codes, r.scale)), ref)
    q = r.codes.astype(np.int64) + z.reshape(-1, 1, 1, 1)
    assert q.min() >= 0 and q.max() <= 2 ** bits - 1
    x = np.random.default_rng(seed).integers(-128, 128, size=w[0].size)
    assert np.array_equal(r.codes.reshape(len(w), -1) @ x, (q.reshape(len(w), -1) - z[:, None]) @ x)


def test_uniform_asym_refuses_8_bits():
    with pytest.raises(ValueError, match="7"):
        quantize_scheme(_weights(0), "uniform_asym", 8)
    with pytest.raises(ConfigError, match="weight_bits"):
        load_accelerator(HW).with_overrides({"quantization.scheme": "uniform_asym", "quantization.weight_bits": 8})


@pytest.mark.parametrize("bits", range(2, 9))
def test_pow2_codes_are_signed_powers_of_two_or_zero(bits):
    w = _weights(bits)
    r = quantize_scheme(w, "pow2", bits, "channel")
    mags = np.abs(r.codes[r.codes != 0]).astype(np.int64)
    assert np.all(mags & (mags - 1) == 0)                        # powers of two
    assert np.unique(r.codes).size <= levels("pow2", bits)
    # nearest in the log domain: |w|/s within a factor sqrt(2) of its level (unless clipped at the top/zero)
    s = r.scale.reshape(-1, 1, 1, 1).astype(np.float64)
    ratio = np.abs(w) / s
    nz = (np.abs(r.codes) > 1) & (ratio <= np.abs(r.codes).max())
    assert np.all(np.abs(np.log2(ratio[nz] / np.abs(r.codes[nz]))) <= 0.5 + 1e-6)
    one = np.abs(r.codes) == 1                                   # the smallest level takes [0.5, sqrt 2)
    assert np.all((ratio[one] >= 0.5 - 1e-6) & (ratio[one] <= (np.sqrt(2) if bits > 2 else 1) + 1e-6))
    assert np.all(ratio[r.codes == 0] < 0.5 + 1e-6)


def test_lloyd_is_deterministic_and_converges_to_a_fixed_point():
    v = np.random.default_rng(3).standard_normal(2000)
    c = lloyd_1d(v, 8)
    assert np.array_equal(c, lloyd_1d(v.copy(), 8)) and c.size == 8
    # fixed point: every centroid is the mean of the values nearest to it
    idx = np.argmin(np.abs(v[:, None] - c[None]), axis=1)
    assert np.allclose([v[idx == j].mean() for j in range(8)], c)
    assert np.array_equal(lloyd_1d(np.array([1.0, 1.0, -2.0]), 4), [-2.0, 1.0])   # fewer values than clusters


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_kmeans_codes_are_fixed_point_codebook_levels(bits):
    w = _weights(10 + bits)
    r = quantize_scheme(w, "kmeans", bits, "tensor")
    assert np.unique(r.codes).size <= 2 ** bits and np.abs(r.codes).max() == 127
    # the dequantized weight is within half a fixed-point step of the nearest float centroid
    c = lloyd_1d(w, 2 ** bits)
    nearest = c[np.argmin(np.abs(w.reshape(-1, 1) - c[None]), axis=1)]
    assert np.all(np.abs(dequantize_scheme(r.codes, r.scale).ravel() - nearest) <= r.scale[0] * 0.5 + 1e-6)


def test_class_clusters_give_each_cluster_its_own_scale():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2, 16))
    rows = np.concatenate([0.01 * (base[0] + 0.1 * rng.standard_normal((5, 16))),
                           10 * (base[1] + 0.1 * rng.standard_normal((5, 16)))]).astype(np.float32)
    labels = cluster_rows(rows, 2)
    assert len(set(labels[:5])) == 1 and len(set(labels[5:])) == 1 and labels[0] != labels[5]
    r = quantize_scheme(rows, "uniform", 3, "tensor", row_clusters=labels)
    assert r.segments == 2 and r.scale[0] < r.scale[5] / 100
    err = lambda q: np.abs(dequantize_scheme(q.codes, q.scale) - rows)[:5].max()   # noqa: E731
    assert err(r) < err(quantize_scheme(rows, "uniform", 3, "tensor"))   # small classes no longer all zero


def test_all_zero_and_empty_weights():
    for scheme in ("uniform", "uniform_asym", "pow2", "kmeans"):
        r = quantize_scheme(np.zeros((3, 4), np.float32), scheme, 3, "channel")
        assert not r.codes.any() and not r.scale.any()
    with pytest.raises(ValueError, match="NaN"):
        quantize_scheme(np.full((2, 2), np.nan, np.float32), "uniform", 3)


# --- the shipped model, bit-exact on both backends --------------------------------------------------------
VERIFY_POINTS = [(s, b) for s in ("uniform", "pow2", "kmeans") for b in (3, 4, 8)] + \
                [("uniform_asym", 3), ("uniform_asym", 4), ("uniform_asym", 7)]


@pytest.mark.parametrize("scheme,bits", VERIFY_POINTS)
def test_verify_passes_for_every_scheme(scheme, bits):
    from tersim.verify import verify

    hw = load_accelerator(HW).with_overrides({"quantization.scheme": scheme, "quantization.weight_bits": bits,
                                              "quantization.first_last": "ternary"})
    result = verify(hw, MODEL, data=DATA, limit=8)
    assert result.bit_exact
    layers = result.layers
    assert layers.shape[0] > 0


def test_class_clustering_puts_the_last_layer_on_the_scheme():
    from tersim.pipeline import prepare

    hw = load_accelerator(HW).with_overrides({"quantization.scheme": "uniform", "quantization.weight_bits": 3,
                                              "quantization.granularity": "tensor", "quantization.class_clusters": 3})
    p = prepare(hw, MODEL, data=DATA, limit=8)
    layers = [l for l in p.qgraph.layers.values() if l.weight_kind]
    assert layers[0].scheme == "uniform" and layers[0].weight_bits == 8          # first layer stays int8
    assert layers[-1].weight_bits == 3 and layers[-1].segments == 3
    aq = layers[-1].alpha_q   # fixed-point scales, one per class cluster
    assert np.unique(aq.reshape(aq.shape[0], -1)[:, 0]).size == 3


# --- PE kinds -------------------------------------------------------------------------------------------
def _int8_model():
    return [LayerShape.conv2d("a", 16, 32, (14, 14), 3, padding=1, weight_kind="int8", group_size=16),
            LayerShape.linear("fc", 64, 10, weight_kind="int8", group_size=64)]


def test_all_int8_model_pays_for_multipliers_at_equal_area():
    hw = load_accelerator(HW)
    layers = _int8_model()
    tern = [layer_timing(s, hw) for s in layers]
    base = [baseline_layer_timing(s, hw) for s in layers]
    s = model_summary(tern, base, hw, 4)
    pes = hw.array.rows * hw.array.cols
    assert s["pe_kind"] == "multiplier"
    assert s["ternary_area_um2"] >= pes * (hw.area.int8_mult_um2 + hw.area.int32_add_um2)
    # a multiplier PE is (8x8 mult + adder + 8-bit register) / (FP32 mult + add + 32-bit register) of an FP32 PE:
    # the equal-area baseline gets that share of PEs more, no more (the ternary-PE figure was ~3x higher)
    ternary_area = pes * (hw.area.int32_add_um2 + 2 * hw.area.register_bit_um2)
    rows, cols = map(int, s["equal_area_baseline_array"].split("x"))
    assert rows * cols * (hw.area.fp32_mult_um2 + hw.area.fp32_add_um2) > 2 * ternary_area
    with pytest.raises(TersimError, match="layer 'a'.*multiplier"):
        model_summary(tern, base, hw.with_overrides({"pe.kind": "ternary"}), 4)


def test_pe_kind_follows_the_scheme_and_areas_order():
    hw = load_accelerator(HW)
    shapes = {kind: [LayerShape.linear("fc", 64, 10, weight_kind="int8", group_size=64, weight_bits=4,
                                       weight_scheme=scheme)]
              for kind, scheme in (("shift", "pow2"), ("lut", "kmeans"), ("multiplier", "uniform"))}
    shapes["ternary"] = [LayerShape.linear("fc", 64, 10)]
    areas = {}
    for kind, layers in shapes.items():
        s = model_summary([layer_timing(l, hw) for l in layers], [baseline_layer_timing(l, hw) for l in layers], hw, 4)
        assert s["pe_kind"] == kind
        areas[kind] = s["ternary_area_um2"]
    assert areas["ternary"] < areas["shift"] < areas["multiplier"] < areas["lut"]


# --- data-free activation ranges -------------------------------------------------------------------------
def test_rectified_gaussian_moments_match_sampling():
    from tersim.quantize.data_free import _rectified

    rng = np.random.default_rng(0)
    m, s = np.array([-1.0, 0.0, 0.7, 3.0]), np.array([0.5, 1.0, 2.0, 0.1])
    x = np.maximum(rng.standard_normal((200_000, 4)) * s + m, 0.0)
    mean, std = _rectified(m, s)
    assert np.allclose(mean, x.mean(0), atol=0.01) and np.allclose(std, x.std(0), atol=0.01)


def test_bn_ranges_are_close_to_calibrated_ranges_on_the_shipped_model():
    """Data-free ranges (BN statistics, mean + 4 std) bracket what calibration on real digits measures: never
    below a third of it, at most a few times above (a Gaussian tail bound, not a max)."""
    from tersim.data import load_inputs
    from tersim.frontend import import_model
    from tersim.quantize.data_free import bn_max_abs
    from tersim.quantize.graph import calibrate_max_abs

    graph = import_model(MODEL)
    assert any(n.bn is not None for n in graph.nodes)
    x, _ = load_inputs(DATA, graph.input_shape)
    measured = calibrate_max_abs(graph, [x[:256]])
    estimated = bn_max_abs(graph, 4.0)
    for name, value in measured.items():
        if value > 0:
            assert value / 3 <= estimated[name] <= 8 * value, name


def test_run_without_data_reports_bn_statistics_as_the_range_source():
    from tersim.pipeline import prepare

    hw = load_accelerator(HW)
    assert prepare(hw, MODEL, limit=4).qgraph.act_range_source.startswith("BN statistics")
    assert prepare(hw, MODEL, data=DATA, limit=4).qgraph.act_range_source.startswith("calibration")
    hw_bn = hw.with_overrides({"quantization.act_ranges": "bn_stats"})
    assert prepare(hw_bn, MODEL, data=DATA, limit=4).qgraph.act_range_source.startswith("BN statistics")


# --- range and local sparsity analysis -------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(cout=st.integers(1, 4), cin=st.integers(1, 9), k=st.integers(1, 3), n=st.integers(1, 12),
       seed=st.integers(0, 2**31))
def test_window_zero_fractions_match_a_plain_loop(cout, cin, k, n, seed):
    from tersim.report.analysis import window_zero_fractions

    codes = np.random.default_rng(seed).integers(-1, 2, size=(cout, cin, k, k)).astype(np.int8)
    got = window_zero_fractions(codes, n)
    n_eff = min(n, cin)
    groups = [np.mean(codes[o, c0:c0 + n_eff, y, x] == 0) for o in range(cout) for y in range(k) for x in range(k)
              for c0 in range(0, cin, n_eff)]
    assert np.allclose(np.sort(got["group"]), np.sort(groups))
    assert np.allclose(got["kernel"], [np.mean(codes[o, c] == 0) for o in range(cout) for c in range(cin)])
    assert np.allclose(got["filter"], [np.mean(codes[o] == 0) for o in range(cout)])


def test_analyze_frame_and_cli(tmp_path, capsys):
    import json

    from tersim.cli import main
    from tersim.frontend import import_model
    from tersim.report.analysis import analyze

    graph = import_model(MODEL)
    frame = analyze(load_accelerator(HW), graph, [("fgq_ternary", 2), ("pow2", 3), ("kmeans", 2)])
    assert set(frame.point) == {"fgq_ternary", "pow2 3b", "kmeans 2b"}
    inner = frame[frame.layer == frame.layer.iloc[1]].set_index("point")
    assert inner.loc["fgq_ternary", "levels_used"] <= 3 and inner.loc["pow2 3b", "levels_used"] <= 7
    assert inner.loc["kmeans 2b", "levels_used"] <= 4
    for _, row in frame.iterrows():
        hist = json.loads(row.histogram)
        assert sum(hist.values()) == row.weights
        assert row.zero_fraction == pytest.approx(hist.get("0", 0) / row.weights)
    assert main(["analyze", str(HW), str(MODEL), "--schemes", "uniform,pow2", "--bits", "3,4",
                 "--out", str(tmp_path)]) == 0
    assert (tmp_path / "digits_resnet_ternary-16x16_analysis.csv").is_file()
    assert main(["analyze", str(HW), str(MODEL), "--schemes", "uniform,bogus", "--out", str(tmp_path)]) == 2
    assert "tersim: error: --schemes: unknown scheme 'bogus'" in capsys.readouterr().err


def test_scheme_sweep_plan_has_one_fgq_point_per_n_and_one_n_per_kbit_point():
    from tersim.options import RunOptions
    from tersim.sweeps.plan import hardware_points, plan_tasks

    hw = load_accelerator(HW)
    overrides = {"quantization.scheme": ["fgq_ternary", "uniform", "uniform_asym", "kmeans"],
                 "quantization.weight_bits": [2, 3, 8]}
    with pytest.warns(UserWarning, match="left out: fgq_ternary ignores quantization.weight_bits; uniform_asym at 8"):
        points = hardware_points(hw, overrides, RunOptions())
    schemes = [(h.quantization.scheme, h.quantization.weight_bits) for _, h in points]
    assert [s for s, _ in schemes].count("fgq_ternary") == 1 and ("fgq_ternary", 2) in schemes
    assert [s for s, _ in schemes].count("uniform") == 3 and [s for s, _ in schemes].count("kmeans") == 3
    assert ("uniform_asym", 8) not in schemes and ("uniform_asym", 3) in schemes
    tasks = plan_tasks(points, (2, 4, 8), (8,), RunOptions(), "g", None, True)
    per_scheme = {}
    for p in (p for t in tasks for p in t.points):
        per_scheme.setdefault(p.hw.quantization.scheme, set()).add(p.group_size)
    assert per_scheme["fgq_ternary"] == {2, 4, 8} and per_scheme["uniform"] == {2}


def test_kbit_schemes_refuse_the_fgq_variants_and_a_sweep_drops_them():
    from tersim.options import RunOptions
    from tersim.sweeps.plan import hardware_points

    hw = load_accelerator(HW)
    with pytest.raises(TersimError, match="group_layout: kernel applies to fgq_ternary groups only"):
        RunOptions.of(scheme="uniform", group_layout="kernel").apply(hw)
    with pytest.raises(TersimError, match="scales: two applies to fgq_ternary"):
        hw.with_overrides({"quantization.scheme": "pow2", "quantization.scales": "two"})
    with pytest.warns(UserWarning, match="1 of 4 hardware point"):
        points = hardware_points(hw, {"quantization.scheme": ["fgq_ternary", "pow2"],
                                      "quantization.scales": ["one", "two"]}, RunOptions())
    assert [(h.quantization.scheme, h.quantization.scales) for _, h in points] == \
        [("fgq_ternary", "one"), ("fgq_ternary", "two"), ("pow2", "one")]
    with pytest.raises(TersimError, match="every point is left out"):
        hardware_points(hw, {"quantization.scales": ["two"]}, RunOptions(scheme="uniform"))


def test_scheme_options_are_cli_flags_and_reach_the_hardware():
    from tersim.cli import build_parser
    from tersim.options import RunOptions, hardware_args

    args = build_parser().parse_args(["run", str(HW), str(MODEL), "--scheme", "pow2", "--weight-bits", "3",
                                      "--granularity", "tensor", "--class-clusters", "0", "--pe-kind", "shift",
                                      "--act-ranges", "bn_stats"])
    hw = RunOptions.of(**hardware_args(args)).apply(load_accelerator(HW))
    q = hw.quantization
    assert (q.scheme, q.weight_bits, q.granularity, q.class_clusters, q.act_ranges, hw.pe.kind) == \
        ("pow2", 3, "tensor", 0, "bn_stats", "shift")


def test_scheme_figures_from_a_points_frame():
    import pandas as pd

    from tersim.report.scheme_plots import has_schemes, scheme_figures

    rows = [dict(model="m", scheme=s, weight_bits=b, group_size=4, act_bits=8, accuracy_quant=acc,
                 ternary_energy_pj=e) for s, b, acc, e in
            [("fgq_ternary", 2, 0.8, 10e6), ("uniform", 3, 0.9, 12e6), ("uniform", 4, 0.95, 15e6),
             ("kmeans", 3, 0.97, 13e6)]]
    frame = pd.DataFrame(rows)
    assert has_schemes(frame) and not has_schemes(frame[frame.scheme == "uniform"].iloc[:1])
    assert set(scheme_figures(frame)) == {"scheme_bits", "scheme_energy"}


def test_finetune_refuses_a_kbit_scheme(tmp_path, capsys):
    from tersim.cli import main

    code = main(["finetune", str(MODEL), "--scheme", "uniform", "-o", str(tmp_path / "o.pt2"), "--epochs", "1",
                 "--no-checkpoints"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("tersim: error: quantization.scheme: finetune trains FGQ ternary")
    assert not (tmp_path / "o.pt2").exists()


def test_cli_refuses_uniform_asym_at_8_bits_in_one_line(capsys):
    from tersim.cli import main

    assert main(["run", str(HW), str(MODEL), "--scheme", "uniform_asym", "--weight-bits", "8", "--limit", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "uniform_asym at 8 bits" in err[0]


def test_graph_hash_and_quantization_key_see_bn_and_the_scheme():
    from dataclasses import replace

    from tersim.frontend import Graph, import_model
    from tersim.options import RunOptions
    from tersim.sweeps.plan import graph_digest, quantization_key

    graph = import_model(MODEL)
    node = next(n for n in graph.nodes if n.bn is not None)
    bn = {**node.bn, "gamma": node.bn["gamma"] * 2}   # the folded weights stay, the BN statistics change
    other = Graph(graph.name, [replace(n, bn=bn) if n is node else n for n in graph.nodes], graph.output)
    assert graph_digest(other) != graph_digest(graph)
    hw = load_accelerator(HW)
    keys = {quantization_key(RunOptions.of(**o).apply(hw)) for o in
            ({}, {"scheme": "uniform"}, {"scheme": "uniform", "weight_bits": 3}, {"act_ranges": "bn_stats"})}
    assert len(keys) == 4
    assert quantization_key(RunOptions.of(pe_kind="multiplier").apply(hw)) == quantization_key(hw)  # timing only


def test_sweep_points_reuse_the_calibrated_ranges(monkeypatch):
    """Points that change only the quantization calibrate the FP32 network once (the sweep computes the FP32
    reference outputs once itself), and the reused ranges are the ones a fresh calibration gives."""
    import tersim.pipeline as pipeline
    from tersim.frontend import import_model

    graph = import_model(MODEL)
    calls = []
    real = pipeline.calibrate_max_abs
    monkeypatch.setattr(pipeline, "calibrate_max_abs", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = pipeline.prepare(HW, graph, data=DATA, limit=40, scheme="uniform", weight_bits=4)
    second = pipeline.prepare(HW, graph, data=DATA, limit=40, scheme="pow2", weight_bits=3)
    assert len(calls) == 1
    assert [l.out for l in first.qgraph.layers.values()] == [l.out for l in second.qgraph.layers.values()]
    fresh = pipeline.prepare(HW, import_model(MODEL), data=DATA, limit=40, scheme="pow2", weight_bits=3)
    assert len(calls) == 2       # another graph object: calibrated again, same formats
    assert [l.out for l in fresh.qgraph.layers.values()] == [l.out for l in second.qgraph.layers.values()]
    other = pipeline.prepare(HW, graph, data=DATA, limit=40, correction="bias_correction")
    assert len(calls) == 2       # a correction calibrates the corrected network inside quantize_graph


def test_scheme_sweep_from_the_command_line_writes_the_table_and_plots(tmp_path):
    import pandas as pd

    from tersim.cli import main

    with pytest.warns(UserWarning, match="left out: fgq_ternary ignores quantization.weight_bits"):
        code = main(["sweep", str(HW), str(MODEL), "--data", str(DATA), "--limit", "24", "--group-sizes", "4", "16",
                     "--act-bits", "8", "--set", "quantization.scheme=fgq_ternary,uniform,pow2",
                     "--set", "quantization.weight_bits=2,3", "--out", str(tmp_path), "--no-cache"])
    assert code == 0
    points = pd.read_csv(tmp_path / "digits_resnet_ternary-16x16_sweep.csv")
    got = sorted(zip(points["quantization.scheme"], points.weight_bits, points.group_size))
    assert got == [("fgq_ternary", 2, 4), ("fgq_ternary", 2, 16), ("pow2", 2, 4), ("pow2", 3, 4),
                   ("uniform", 2, 4), ("uniform", 3, 4)]
    assert {"accuracy_quant", "weight_bytes", "mults", "ternary_cycles", "ternary_energy_pj", "ternary_area_um2",
            "speedup_equal_pe", "speedup_equal_area", "pe_kind"} <= set(points.columns)
    for name in ("scheme_bits", "scheme_energy"):
        assert (tmp_path / f"digits_resnet_ternary-16x16_sweep_{name}.png").stat().st_size > 0
