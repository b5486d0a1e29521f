"""Plots and the HTML report: which figures a frame allows, files written and non-empty, the `plot` CLI."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("matplotlib")

from tersim.cli import main  # noqa: E402
from tersim.report.html import render  # noqa: E402
from tersim.report.plots import figures_for, one_point, pareto_mask, save_figures  # noqa: E402
from tersim.sweeps import run_sweep, write_reports  # noqa: E402

from conftest import DATA, HW, MODEL


@pytest.fixture(scope="module")
def sweep():
    return run_sweep(HW, MODEL, [1, 4, 64], [8, 4], data=DATA, limit=30)


def test_every_plot_of_a_sweep(sweep, tmp_path):
    figures = figures_for(sweep.points, sweep.layers)
    assert set(figures) == {"group_size", "stalls", "pareto", "layer_cycles", "layer_energy"}
    paths = save_figures(figures, tmp_path, "s")
    assert len(paths) == 10 and all(p.stat().st_size > 1000 for p in paths)
    assert {p.suffix for p in paths} == {".png", ".svg"}
    assert paths[0].read_bytes()[:4] == b"\x89PNG"


def test_timing_only_points_plot_reconstruction_error_instead_of_accuracy(sweep):
    points = sweep.points.drop(columns=["accuracy_fp32", "accuracy_quant", "top1_agreement"])
    figures = figures_for(points)
    assert set(figures) == {"group_size", "stalls", "pareto"}
    assert "reconstruction error" in figures["pareto"].axes[0].get_ylabel()


def test_per_layer_plots_pick_one_point(sweep):
    layers, label = one_point(sweep.layers)
    assert set(layers.group_size) == {4} and set(layers.act_bits) == {8} and "group_size=4" in label
    chosen, _ = one_point(sweep.layers, {"group_size": 64, "act_bits": 4})
    assert len(chosen) == len(layers) and set(chosen.group_size) == {64}
    run_layers = sweep.layers.drop(columns=["model", "hw", "group_size", "act_bits"])[: len(layers)]
    assert one_point(run_layers)[0] is run_layers  # a `tersim run` layers file is one point


def test_html_is_self_contained(sweep):
    text = render("t", sweep.points, sweep.layers)
    assert text.count("<svg") == 5 and "<script" not in text
    assert not re.findall(r'(?:src|href)="(?!#)', text)  # only references inside the page (SVG glyph uses)
    assert "<table" in text


def test_pareto_front_small_cases():
    assert list(pareto_mask([0.9, 0.8, 0.7], [1, 2, 3])) == [True, True, True]
    assert list(pareto_mask([0.9, 0.8, 0.95], [1, 0.5, 2])) == [False, False, True]
    assert list(pareto_mask([0.1, 0.2], [1, 1], higher_is_better=False)) == [True, False]
    assert list(pareto_mask([0.5, 0.5], [1, 1])) == [True, True]  # ties stay


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=12))
def test_pareto_front_matches_brute_force(pairs):
    q, s = np.array(pairs, dtype=float).T
    expected = [not any(q[j] >= q[i] and s[j] >= s[i] and (q[j] > q[i] or s[j] > s[i]) for j in range(len(q)))
                for i in range(len(q))]
    assert list(pareto_mask(q, s)) == expected


def test_plot_cli_makes_every_plot_and_the_html(sweep, tmp_path, capsys):
    write_reports(sweep, tmp_path)
    stem = "digits_resnet_ternary-16x16_sweep"
    files = [str(tmp_path / f"{stem}.parquet"), str(tmp_path / f"{stem}_layers.parquet")]
    assert main(["plot", *files, "--out", str(tmp_path / "plots"), "--point", "group_size=64,act_bits=8"]) == 0
    made = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert len(made) == 11 and f"{stem}.html" in made
    assert main(["plot", str(tmp_path / f"{stem}.csv")]) == 0  # CSV too; figures beside the file
    assert (tmp_path / f"{stem}_pareto.svg").stat().st_size > 1000
    capsys.readouterr()


def test_plot_cli_errors_are_one_line(sweep, tmp_path, capsys):
    write_reports(sweep, tmp_path)
    layers = str(tmp_path / "digits_resnet_ternary-16x16_sweep_layers.parquet")
    assert main(["plot", layers, "--point", "group_size=3"]) == 2
    assert main(["plot", layers, "--point", "colour=red"]) == 2
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "odd.csv", index=False)
    assert main(["plot", str(tmp_path / "odd.csv")]) == 2
    assert main(["plot", str(tmp_path / "missing.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("tersim: error:") for line in err)
    assert "colour" in err[1] and "missing.parquet" in err[3]
