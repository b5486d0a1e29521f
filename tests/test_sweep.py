"""Design-space sweeps: the tidy DataFrames, --set overrides, the point cache, Ctrl-C, Parquet, dask, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tersim.sweeps as sweeps
from tersim.cli import main
from tersim.config import load_accelerator
from tersim.errors import ConfigError
from tersim.frontend import import_model
from tersim.options import RunOptions

from conftest import DATA, HW, MODEL
LIMIT = 50


@pytest.fixture(scope="module")
def graph(digits_graph):
    return digits_graph


@pytest.fixture(scope="module")
def data(digits_data):
    return digits_data


@pytest.fixture(scope="module")
def small(graph, data, tmp_path_factory):
    """N in {1, 4} x act_bits {8, 4} x array.rows {8, 16}, cached in a fresh directory."""
    cache = tmp_path_factory.mktemp("cache")
    result = sweeps.run_sweep(HW, graph, [1, 4], [8, 4], overrides={"array.rows": [8, 16]}, data=data,
                              limit=LIMIT, cache_dir=cache)
    return result, cache


def test_one_row_per_point_with_key_and_result_columns(small, graph):
    result, _ = small
    points, layers = result.points, result.layers
    assert len(points) == 8 and not result.interrupted and result.computed == 8
    assert list(points.columns[:5]) == ["model", "hw", "array.rows", "group_size", "act_bits"]
    assert set(points["array.rows"]) == {8, 16} and set(points.group_size) == {1, 4} and set(points.act_bits) == {8, 4}
    for column in ("accuracy_fp32", "accuracy_quant", "top1_agreement", "weight_rel_error", "weight_sparsity",
                   "mults_eliminated", "ternary_cycles", "ternary_latency_s", "ternary_energy_pj",
                   "speedup_equal_pe", "speedup_equal_area", "projected_speedup_formula"):
        assert points[column].notna().all(), column
    assert (points.samples == LIMIT).all() and (points.model == "digits_resnet").all()
    n_layers = len(graph.weighted())
    assert len(layers) == 8 * n_layers
    assert list(layers.columns[:5]) == list(points.columns[:5])
    assert {"layer", "effective_group_size", "compute_cycles", "baseline_energy_pj_total"} <= set(layers.columns)
    assert (layers.groupby(result.key_columns).size() == n_layers).all()


def test_overrides_change_the_hardware(small):
    points = small[0].points
    cycles = points.set_index(["array.rows", "group_size", "act_bits"]).ternary_cycles
    assert (cycles.loc[8] > cycles.loc[16]).all()  # half the rows: more folds
    acc = points.set_index(["array.rows", "group_size", "act_bits"]).accuracy_quant
    assert np.array_equal(acc.loc[8].to_numpy(), acc.loc[16].to_numpy())  # the numerics do not depend on the array


def test_second_run_comes_from_the_cache(small, graph, data, monkeypatch):
    result, cache = small

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cached point was recomputed")

    monkeypatch.setattr(sweeps, "evaluate_task", must_not_run)
    again = sweeps.run_sweep(HW, graph, [1, 4], [8, 4], overrides={"array.rows": [8, 16]}, data=data,
                             limit=LIMIT, cache_dir=cache)
    assert again.cached == 8 and again.computed == 0
    pd.testing.assert_frame_equal(again.points, result.points)
    pd.testing.assert_frame_equal(again.layers, result.layers)


def test_cache_key_follows_the_content(graph, data):
    hw = load_accelerator(HW)
    options = RunOptions.of(limit=LIMIT, timing="analytic")

    def key_of(graph_hash, data_hash, hw, options=options, timing_only=False):
        return sweeps.point_key(graph_hash, data_hash, options.apply(hw), options, timing_only)

    g, d = sweeps.graph_digest(graph), sweeps.data_digest(data)
    key = key_of(g, d, hw)
    assert key == key_of(sweeps.graph_digest(import_model(MODEL)), d, hw)
    assert key != key_of(g, d, hw.with_overrides({"array.rows": 8}))
    assert key != key_of(g, sweeps.data_digest((data[0][:-1], data[1][:-1])), hw)
    assert key != key_of(g, d, hw, options.replace(limit=LIMIT + 1))
    assert key != key_of(g, d, hw, options.replace(group_size=8))
    assert key != key_of(g, d, hw, options.replace(method="twn"))
    assert key != key_of(g, d, hw, options.replace(timing="engine"))
    assert key == key_of(g, d, hw, options.replace(batch_size=3))   # batching does not change a result
    for variant in (dict(group_layout="kernel"), dict(scales="two"), dict(correction="bias_correction")):
        assert key != key_of(g, d, hw, options.replace(**variant)), variant
    # the calibration data's content counts only for the points whose correction uses it (bn_reestimate)
    calib_a, calib_b = sweeps.data_digest((data[0][:8], None)), sweeps.data_digest((data[0][8:16], None))
    bn = options.replace(correction="bn_reestimate")
    assert sweeps.point_key(g, d, bn.apply(hw), bn, False, calib_a) != \
        sweeps.point_key(g, d, bn.apply(hw), bn, False, calib_b)
    assert sweeps.point_key(g, d, options.apply(hw), options, False, calib_a) == key


def _ctrl_c_on_call(monkeypatch, n: int) -> list:
    """Make the n-th evaluate_task call raise KeyboardInterrupt (as Ctrl-C would); returns the call log."""
    real, calls = sweeps.evaluate_task, []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweeps.executors, "evaluate_task", evaluate)
    return calls


def test_ctrl_c_keeps_finished_points(graph, data, tmp_path, monkeypatch):
    calls = _ctrl_c_on_call(monkeypatch, 3)
    result = sweeps.run_sweep(HW, graph, [1, 4], [8, 4], data=data, limit=LIMIT, cache_dir=tmp_path / "c")
    assert result.interrupted and len(result.points) == 2 and result.computed == 2
    assert len(list((tmp_path / "c").glob("*.json"))) == 2
    with pytest.raises(KeyboardInterrupt):  # the API re-raises; the finished points stay cached
        calls.clear()
        sweeps.sweep(HW, graph, [1, 4, 8], [8, 4], data=data, limit=LIMIT, cache_dir=tmp_path / "c")


def test_cli_ctrl_c_writes_the_partial_frame_and_exits_130(tmp_path, monkeypatch, capsys):
    _ctrl_c_on_call(monkeypatch, 2)
    out = tmp_path / "r"
    code = main(["sweep", str(HW), str(MODEL), "--data", str(DATA), "--limit", "20", "--group-sizes", "1", "4",
                 "--act-bits", "8", "--out", str(out)])
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    assert len(pd.read_csv(out / "digits_resnet_ternary-16x16_sweep.csv")) == 1


def test_reports_round_trip_through_parquet(small, tmp_path):
    result = small[0]
    paths = sweeps.write_reports(result, tmp_path)
    stem = "digits_resnet_ternary-16x16_sweep"
    assert {p.name for p in paths} == {f"{stem}{s}" for s in (".csv", "_layers.csv", ".parquet", "_layers.parquet",
                                                                ".html")}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"{stem}.parquet"), result.points, check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"{stem}_layers.parquet"), result.layers,
                                  check_dtype=False)
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("item, named", [
    ("array.rowz=8", "array.rowz"), ("arrays.rows=8", "arrays"), ("array.rows=-1", "array.rows"),
    ("pe.zero_weights=maybe", "pe.zero_weights"), ("pe.act_bits=4", "--act-bits"), ("array.rows", "array.rows"),
])
def test_bad_set_is_one_line_naming_the_field_and_writes_nothing(item, named, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["sweep", str(HW), str(MODEL), "--set", item, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and named in err, err
    assert not out.exists()


def test_set_values_are_yaml_scalars():
    assert sweeps.parse_set(["array.rows=8,16", "pe.zero_weights=gate,skip", "memory.double_buffering=true"]) == {
        "array.rows": [8, 16], "pe.zero_weights": ["gate", "skip"], "memory.double_buffering": [True]}
    with pytest.raises(ConfigError):
        sweeps.parse_set(["array.rows="])


def test_timing_only_has_the_same_cycles_without_executing(small, graph, monkeypatch):
    import tersim.pipeline

    monkeypatch.setattr(tersim.pipeline, "execute", None)  # executing would fail
    timed = sweeps.run_sweep(HW, graph, [1, 4], [8, 4], overrides={"array.rows": [8, 16]}, timing_only=True)
    full = small[0].points
    assert "accuracy_quant" not in timed.points and (timed.points.samples == 0).all()
    for column in ("ternary_cycles", "ternary_energy_pj", "weight_sparsity", "mults_eliminated", "speedup_equal_pe"):
        np.testing.assert_allclose(timed.points[column], full[column], rtol=1e-12, err_msg=column)


def test_process_pool_gives_the_same_frame(small, graph, data):
    pooled = sweeps.run_sweep(HW, graph, [4], [8, 4], overrides={"array.rows": [16]}, data=data, limit=LIMIT, jobs=2)
    expected = small[0].points.query("group_size == 4 and `array.rows` == 16").reset_index(drop=True)
    pd.testing.assert_frame_equal(pooled.points, expected)


def test_dask_local_cluster_gives_the_same_frame(small, graph, data):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        on_dask = sweeps.run_sweep(HW, graph, [1, 4], [8, 4], overrides={"array.rows": [8, 16]}, data=data,
                                   limit=LIMIT, dask=client)
    pd.testing.assert_frame_equal(on_dask.points, small[0].points)
    pd.testing.assert_frame_equal(on_dask.layers, small[0].layers)


def test_cli_sweep_writes_every_report_and_reuses_the_cache(tmp_path, capsys):
    args = ["sweep", str(HW), str(MODEL), "--data", str(DATA), "--limit", "20", "--group-sizes", "2", "64",
            "--act-bits", "4", "--set", "pe.zero_weights=gate,skip", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "4 computed, 0 from the cache" in capsys.readouterr().out
    points = pd.read_csv(tmp_path / "digits_resnet_ternary-16x16_sweep.csv")
    assert list(points["pe.zero_weights"]) == ["gate", "gate", "skip", "skip"]
    assert main(args) == 0
    assert "0 computed, 4 from the cache" in capsys.readouterr().out
    html = (tmp_path / "digits_resnet_ternary-16x16_sweep.html").read_text()
    assert "<svg" in html and "<script" not in html
    assert main(args + ["--no-cache", "--out", str(tmp_path / "again")]) == 0
    assert "4 computed" in capsys.readouterr().out and not (tmp_path / "again" / ".cache").exists()


def test_cache_files_are_json(small):
    blob = json.loads(next(small[1].glob("*.json")).read_text())
    assert set(blob) == {"summary", "layers"}


def test_import_tersim_is_light_and_exports_the_api():
    code = ("import sys, tersim; assert 'torch' not in sys.modules and 'numba' not in sys.modules; "
            "assert callable(tersim.sweep) and callable(tersim.run); import tersim.sweeps; "
            "assert callable(tersim.sweep); print(tersim.RunResult.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "RunResult"


def test_export_zoo_writes_a_loadable_archive(tmp_path, capsys):
    path = tmp_path / "r18.pt2"
    assert main(["export-zoo", "resnet18", "-o", str(path), "--input-shape", "3,32,32"]) == 0
    graph = import_model(path)
    assert graph.input_shape == (3, 32, 32) and len(graph.weighted()) == 21
    assert main(["export-zoo", "resnet9000", "-o", str(tmp_path / "x.pt2")]) == 2
    assert "resnet9000" in capsys.readouterr().err


REUSE = {"array.rows": [8, 16], "array.dataflow": ["weight_stationary", "output_stationary"],
         "accumulator.bits": [32, 16]}


def _alone(graph, data, overrides_combo, n, bits, **kw):
    """One point computed by itself: a one-point sweep on the already overridden hardware."""
    from tersim.config import load_accelerator

    hw = load_accelerator(HW).with_overrides(dict(overrides_combo))
    return sweeps.run_sweep(hw, graph, [n], [bits], data=data, **kw)


@pytest.mark.parametrize("timing_only", [True, False])
def test_points_sharing_quantization_equal_points_computed_alone(graph, data, timing_only, monkeypatch):
    import tersim.pipeline
    import tersim.quantize.graph as qg

    kw = dict(timing_only=True) if timing_only else dict(limit=LIMIT)
    calls = {"weights": 0, "evaluate": 0}
    real_weights, real_evaluate = qg.quantize_weights, tersim.pipeline.evaluate

    def counted_weights(*a, **k):
        calls["weights"] += 1
        return real_weights(*a, **k)

    def counted_evaluate(*a, **k):
        calls["evaluate"] += 1
        return real_evaluate(*a, **k)

    monkeypatch.setattr(qg, "quantize_weights", counted_weights)
    monkeypatch.setattr(tersim.pipeline, "evaluate", counted_evaluate)
    swept = sweeps.run_sweep(HW, graph, [1, 4], [8, 4], overrides=REUSE, data=data, **kw)
    if timing_only:   # once per N; the 8 hardware points x 2 act_bits of an N share it
        assert calls["weights"] == 2
    else:             # once per (N, act_bits, accumulator): the array points share the execution
        assert calls["evaluate"] == 2 * 2 * 2
    assert len(swept.points) == 2 * 2 * 2 * 2 * 2
    monkeypatch.undo()
    keys = ["array.rows", "array.dataflow", "accumulator.bits", "group_size", "act_bits"]
    for _, row in swept.points.iterrows():
        combo = [(k, row[k]) for k in REUSE]
        alone = _alone(graph, data, combo, int(row.group_size), int(row.act_bits), **kw)
        expected = alone.points.iloc[0]
        got = row.drop(labels=[k for k in REUSE])
        pd.testing.assert_series_equal(got, expected, check_names=False)
        layers = swept.layers
        mask = np.logical_and.reduce([layers[k] == row[k] for k in keys])
        pd.testing.assert_frame_equal(layers[mask].drop(columns=list(REUSE)).reset_index(drop=True),
                                      alone.layers.reset_index(drop=True))


def test_a_sweep_over_n_makes_one_fp32_pass(graph, data, tmp_path, monkeypatch):
    """14 points (7 N x 2 activation widths) share one FP32 pass; a re-run reads it (and the points) from the cache."""
    import tersim.pipeline as pipeline

    calls = []
    real = pipeline.execute_float
    monkeypatch.setattr(pipeline, "execute_float", lambda *a, **k: calls.append(1) or real(*a, **k))
    before = pipeline.FP32_PASSES[0]
    result = sweeps.run_sweep(HW, graph, data=data, limit=20, cache_dir=tmp_path, batch_size=8)
    assert len(result.points) == 14 and result.computed == 14
    assert pipeline.FP32_PASSES[0] - before == 1
    assert len(calls) == 3  # 20 samples in batches of 8: the reference pass only, no per-point FP32 execution
    assert len(list((tmp_path / "fp32").glob("*.npy"))) == 1
    served = sweeps.run_sweep(HW, graph, data=data, limit=20, cache_dir=tmp_path, batch_size=8)
    assert pipeline.FP32_PASSES[0] - before == 1 and served.cached == 14
    # the points' FP32 accuracy is that of the reference, and equals a plain run's
    single = pipeline.run(HW, graph, data=data, limit=20, group_size=4, act_bits=8, timing="analytic")
    row = result.points.query("group_size == 4 and act_bits == 8").iloc[0]
    for column in ("accuracy_fp32", "accuracy_quant", "top1_agreement", "max_abs_err", "overflow_events"):
        assert row[column] == single.summary[column][0], column


STALLS = {"array.dataflow": ["weight_stationary", "output_stationary", "input_stationary"],
          "pe.zero_weights": ["gate", "skip"], "group_scaling.placement": ["per_column", "shared"],
          "group_scaling.multipliers": [16]}


def test_timing_only_points_with_stalls_and_skip_equal_points_computed_alone(graph):
    """The per-point timing shares memoised work (group-scale stalls, baseline timings, group ends, shapes
    without non-zero masks unless a point skips): every point of a sweep mixing dataflows, gate/skip and
    multiplier placements on few multipliers equals the point computed by itself."""
    swept = sweeps.run_sweep(HW, graph, [1, 4], [8], overrides=STALLS, timing_only=True)
    assert (swept.points.group_scale_stall_cycles > 0).any()   # the stall model is exercised
    keys = [*STALLS, "group_size", "act_bits"]
    for _, row in swept.points.iterrows():
        combo = [(k, row[k]) for k in STALLS]
        alone = _alone(graph, None, combo, int(row.group_size), int(row.act_bits), timing_only=True)
        pd.testing.assert_series_equal(row.drop(labels=list(STALLS)), alone.points.iloc[0], check_names=False)
        layers = swept.layers
        mask = np.logical_and.reduce([layers[k] == row[k] for k in keys])
        pd.testing.assert_frame_equal(layers[mask].drop(columns=list(STALLS)).reset_index(drop=True),
                                      alone.layers.reset_index(drop=True))


VARIETY = {"array.dataflow": ["weight_stationary", "output_stationary", "input_stationary"],
           "pe.zero_weights": ["gate", "skip"], "group_scaling.placement": ["per_column", "shared"],
           "group_scaling.multipliers": [16], "quantization.first_last": ["int8", "ternary"],
           "quantization.scales": ["one", "two"]}


def test_timing_only_sweep_tables_equal_tabulate_of_each_point(graph):
    """The batched tabulation (`tabulate_points` over the hardware points of one quantized graph, the layers
    table built once from columns) gives exactly the tables of `tabulate` on each point alone, concatenated
    as per-point frames (values, dtypes and column order), on dataflows, gate/skip, shared/per-column
    multipliers, int8 or ternary first/last layers and one or two scales."""
    from tersim.pipeline import tabulate
    from tersim.quantize.graph import quantize_graph

    swept = sweeps.run_sweep(HW, graph, [1, 4], [8], overrides=VARIETY, timing_only=True, progress=False)
    assert len(swept.points) == 2 * 3 * 2 * 2 * 2 * 2
    assert (swept.points.group_scale_stall_cycles > 0).any() and (swept.points.scales == "two").any()
    expected_layers = []
    for i, row in swept.points.iterrows():
        combo = {k: row[k] for k in VARIETY}
        options = RunOptions.of(group_size=int(row.group_size), act_bits=int(row.act_bits))
        hw = options.apply(load_accelerator(HW).with_overrides(combo))
        alone = tabulate(graph, quantize_graph(graph, [], hw), hw, samples=0, labelled=False)
        summary = alone.summary.iloc[0]
        pd.testing.assert_series_equal(row.drop(labels=list(VARIETY)), summary, check_names=False, check_exact=True)
        keys = {"model": summary.model, "hw": summary.hw, **combo, "group_size": int(row.group_size),
                "act_bits": int(row.act_bits)}
        layers = alone.layers.rename(columns={"group_size": "effective_group_size"})
        expected_layers.append(pd.concat([pd.DataFrame([keys] * len(layers)), layers], axis=1))
    expected = pd.concat(expected_layers, ignore_index=True)
    assert list(swept.layers.columns) == list(expected.columns)
    assert (swept.layers.dtypes == expected.dtypes).all()
    assert swept.layers.equals(expected)


def _point(order: int, combo=()) -> sweeps.Point:
    return sweeps.Point(4, 8, tuple(combo), None, None, f"key{order}", order)


_KINDS = [st.integers(-2**40, 2**40), st.integers(), st.floats(allow_nan=True), st.text(max_size=3), st.booleans(),
          st.none(),
          st.integers(0, 5).map(np.int64), st.floats(0, 1).map(np.float64)]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3), st.integers(0, 3), st.data())
def test_layers_table_from_columns_equals_concatenated_point_frames(n_points, n_layers, data):
    """`frames` builds the layers table once from the points' columns where that gives what concatenating the
    points' own frames gives, and concatenates them otherwise (None, numpy scalars, mixed types, no layers):
    either way the table equals the concatenation (the reference), dtypes included. Each point's column takes
    its values from one kind (ints, also beyond int64, floats, strings, bools, None, numpy scalars) or from all
    of them."""
    from tersim.sweeps.report import frames

    names = data.draw(st.lists(st.sampled_from(["a", "b", "group_size", "c"]), min_size=1, max_size=4, unique=True))
    points, as_columns, as_frames = [], {}, {}
    for i in range(n_points):
        p = _point(i, [("array.rows", data.draw(st.sampled_from([8, 16.5, "x"])))])
        columns = {}
        for name in names:
            kind = data.draw(st.sampled_from([*_KINDS, st.one_of(*_KINDS)]))
            columns[name] = [data.draw(kind) for _ in range(n_layers)]
        summary = {"model": "m", "hw": "h", "ternary_cycles": i}
        points.append(p)
        as_columns[p.key] = sweeps.PointResult(summary, columns)
        as_frames[p.key] = sweeps.PointResult(summary, pd.DataFrame(columns))
    got_points, got = frames(points, as_columns, ["array.rows"])
    want_points, want = frames(points, as_frames, ["array.rows"])
    pd.testing.assert_frame_equal(got_points, want_points)
    assert list(got.columns) == list(want.columns) and (got.dtypes == want.dtypes).all()
    assert got.equals(want)


def test_timing_only_sweep_norms_each_weight_once_for_all_n(graph, monkeypatch):
    """The weight stats' reference norm does not depend on N: a timing-only sweep (a task per N) computes it
    once per layer, and its stats equal a one-point sweep's (which computes its own)."""
    from tersim.quantize import fgq

    calls = []
    real = fgq._norm64
    monkeypatch.setattr(fgq, "_norm64", lambda w: calls.append(w.shape) or real(w))
    swept = sweeps.run_sweep(HW, graph, [1, 4, 16], [8, 4], timing_only=True, progress=False)
    assert len(calls) == len(graph.weighted())
    for n in (1, 16):
        alone = sweeps.run_sweep(HW, graph, [n], [8], timing_only=True, progress=False).points.iloc[0]
        row = swept.points.query(f"group_size == {n} and act_bits == 8").iloc[0]
        assert row.weight_rel_error == alone.weight_rel_error and row.weight_sparsity == alone.weight_sparsity
