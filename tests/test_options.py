"""RunOptions: one definition of a run's options, folded into the Accelerator once.

A single `run` and the same point of a `sweep` must agree in every column, for every option.
"""
from __future__ import annotations

import typing

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from tersim.cli import build_parser, main
from tersim.config import Accelerator, load_accelerator
from tersim.errors import ConfigError, ModelLoadError, OptionError
from tersim.options import HARDWARE_OPTIONS, RunOptions, choices
from tersim.pipeline import run
from tersim.sweeps import run_sweep

from conftest import DATA, HW, MODEL
from naive import randomize_bn
LIMIT = 40


def _field(path: str):
    """The pydantic FieldInfo of a dotted Accelerator path."""
    model, info = Accelerator, None
    for key in path.split("."):
        info = model.model_fields[key]
        model = info.annotation
    return info


@pytest.mark.parametrize("opt", HARDWARE_OPTIONS, ids=lambda o: o.name)
def test_every_hardware_option_names_a_config_field_with_the_same_values(opt):
    info = _field(opt.path)
    allowed = choices(opt.name)
    if typing.get_origin(info.annotation) is typing.Literal:
        assert allowed == typing.get_args(info.annotation)
    # the option's value lands in the config field, through the one override path
    value = allowed[-1] if allowed else 7
    hw = RunOptions.of(**{opt.name: value}).apply(Accelerator())
    node = hw
    for key in opt.path.split("."):
        node = getattr(node, key)
    assert node == value


@pytest.mark.parametrize("command", ["run", "verify", "finetune"])
def test_cli_flags_are_generated_for_every_hardware_option(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    flags = {flag for action in sub._actions for flag in action.option_strings}
    for opt in HARDWARE_OPTIONS:
        wanted = ("--fgq-method",) if (command, opt.name) == ("finetune", "method") else opt.flags
        assert set(wanted) <= flags, (command, opt.name)


def test_bad_options_name_the_python_keyword():
    with pytest.raises(OptionError, match="option 'act_bits'"):
        RunOptions.of(act_bits=5)
    with pytest.raises(OptionError, match="option 'group_size'"):
        run(HW, MODEL, group_size=0)
    with pytest.raises(OptionError, match="unknown option 'groupsize'"):
        run(HW, MODEL, groupsize=4)
    with pytest.raises(OptionError, match="option 'timing'"):
        RunOptions.of(timing="fast")


def test_a_swept_field_cannot_also_be_fixed_by_an_option():
    with pytest.raises(ConfigError, match="option method='twn'"):
        run_sweep(HW, MODEL, [4], [8], overrides={"quantization.method": ["exact", "twn"]}, method="twn",
                  data=DATA, limit=4)
    with pytest.raises(ConfigError, match="give its values as group_sizes"):
        run_sweep(HW, MODEL, [4], [8], overrides={"group_scaling.group_size": [4]}, data=DATA, limit=4)


def _same_rows(single, sweep_result):
    """A one-point sweep's rows are the run's rows plus the point's key columns."""
    points, layers = sweep_result.points, sweep_result.layers
    assert len(points) == 1
    keys = sweep_result.key_columns
    summary = points.drop(columns=[k for k in keys if k not in single.summary.columns])
    pd.testing.assert_frame_equal(summary[single.summary.columns], single.summary, check_dtype=False)
    swept_layers = layers.drop(columns=keys).rename(columns={"effective_group_size": "group_size"})
    pd.testing.assert_frame_equal(swept_layers[single.layers.columns], single.layers, check_dtype=False)


CASES = {
    "defaults": dict(group_size=4, act_bits=8),
    "act_bits_4": dict(group_size=4, act_bits=4),
    "method_twn_ternary_first_last": dict(group_size=16, act_bits=4, method="twn", first_last="ternary"),
    "twn_batch": dict(group_size=2, act_bits=8, method="twn", batch_size=7),
    "engine_timing": dict(group_size=64, act_bits=4, timing="engine"),
    "kernel_layout_two_scales": dict(group_size=4, act_bits=8, group_layout="kernel", scales="two"),
    "bias_correction_engine": dict(group_size=4, act_bits=4, correction="bias_correction", timing="engine"),
    "kmeans_3bit_clusters_bn_ranges": dict(group_size=4, act_bits=8, scheme="kmeans", weight_bits=3,
                                           class_clusters=2, act_ranges="bn_stats"),
    "pow2_4bit_channel_engine": dict(group_size=4, act_bits=4, scheme="pow2", weight_bits=4, granularity="channel",
                                     pe_kind="shift", first_last="ternary", timing="engine"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_run_equals_the_one_point_sweep(case):
    options = RunOptions.of(data=DATA, limit=LIMIT, timing="analytic").replace(**CASES[case])
    single = run(HW, MODEL, options)
    swept = run_sweep(HW, MODEL, [options.group_size], [options.act_bits], options.replace(group_size=None,
                                                                                               act_bits=None))
    _same_rows(single, swept)
    assert (single.layers.timing == options.timing).all()


def test_run_act_bits_4_times_with_4_bit_activations(tmp_path):
    """The bug this options object removes: --act-bits 4 quantized at 4 bits but timed DRAM bytes, energy and
    the multiplier width at the config's 8."""
    hw = load_accelerator(HW)
    assert hw.pe.act_bits == 8
    flag = run(hw, MODEL, data=DATA, limit=LIMIT, act_bits=4, timing="analytic").summary
    config = run(hw.with_overrides({"pe.act_bits": 4}), MODEL, data=DATA, limit=LIMIT, timing="analytic").summary
    eight = run(hw, MODEL, data=DATA, limit=LIMIT, timing="analytic").summary
    pd.testing.assert_frame_equal(flag, config)
    for column in ("ternary_dram_bytes", "ternary_energy_pj", "ternary_area_um2"):   # multiplier width -> area
        assert flag[column].iloc[0] != eight[column].iloc[0], column
    assert flag.ternary_dram_bytes.iloc[0] < eight.ternary_dram_bytes.iloc[0]


def test_cli_run_act_bits_4_equals_the_sweep_point(tmp_path):
    """`tersim run --act-bits 4` writes the same columns as the (N=4, 4-bit) point of `tersim sweep`."""
    common = [str(HW), str(MODEL), "--data", str(DATA), "--limit", str(LIMIT)]
    assert main(["run", *common, "-N", "4", "--act-bits", "4", "--timing", "analytic", "--out",
                 str(tmp_path / "run")]) == 0
    assert main(["sweep", *common, "--group-sizes", "1", "4", "--act-bits", "8", "4", "--no-cache", "--out",
                 str(tmp_path / "sweep")]) == 0
    summary = pd.read_csv(next((tmp_path / "run").glob("*_summary.csv")))
    layers = pd.read_csv(next((tmp_path / "run").glob("*_layers.csv")))
    points = pd.read_csv(tmp_path / "sweep" / "digits_resnet_ternary-16x16_sweep.csv")
    swept_layers = pd.read_csv(tmp_path / "sweep" / "digits_resnet_ternary-16x16_sweep_layers.csv")
    point = points[(points.group_size == 4) & (points.act_bits == 4)].reset_index(drop=True)
    pd.testing.assert_frame_equal(point[summary.columns], summary)
    point_layers = swept_layers[(swept_layers.group_size == 4) & (swept_layers.act_bits == 4)]
    point_layers = point_layers.drop(columns=["model", "hw", "group_size", "act_bits"]).rename(
        columns={"effective_group_size": "group_size"}).reset_index(drop=True)
    pd.testing.assert_frame_equal(point_layers[layers.columns], layers)


class TinyNet(nn.Module):
    """A pickled nn.Module needs trust_pickle and input_shape: the model-loading options."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(x, 1))


def test_model_loading_options_reach_run_and_sweep_alike(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(randomize_bn(TinyNet()), path)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 20)
    options = RunOptions.of(data=(x, y), input_shape=(1, 8, 8), trust_pickle=True, timing="analytic")
    single = run(HW, path, options.replace(group_size=2, act_bits=8))
    _same_rows(single, run_sweep(HW, path, [2], [8], options))
    with pytest.raises(ModelLoadError, match="trust"):
        run(HW, path, options.replace(trust_pickle=False))
    with pytest.raises(ModelLoadError, match="trust"):
        run_sweep(HW, path, [2], [8], options.replace(trust_pickle=False))


def test_where_options_exclude_each_other_and_points_run_serially():
    """jobs/workers/dask are RunOptions fields (at most one); a sweep point's options carry none of them, nor the
    data, so a point never starts a second pool on its worker."""
    from tersim.errors import OptionError
    from tersim.sweeps.plan import plan_tasks

    with pytest.raises(OptionError, match="at most one of jobs, workers, dask"):
        RunOptions.of(jobs=2, workers=2)
    assert RunOptions.of(jobs=3).where() == {"jobs": 3, "workers": None, "dask": None}
    options = RunOptions.of(jobs=3, data=DATA, calib=DATA, loader_workers=0)
    hw = load_accelerator(HW)
    (task,) = plan_tasks([((), hw)], [4], [8], options, "g", "d", False)
    point = task.points[0].options
    assert (point.jobs, point.workers, point.dask, point.data, point.calib) == (None, None, None, None, None)
    assert point.loader_workers == 0 and point.group_size == 4 and point.act_bits == 8


def test_model_data_flags_are_generated_from_the_fields():
    from tersim.cli import build_parser, run_options

    args = build_parser().parse_args(["run", str(HW), str(MODEL), "--weights", "w.pth", "--preprocess", "none",
                                      "--class-map", "m.txt", "--calib", "c.npz", "--loader-workers", "0", "-q",
                                      "--jobs", "2"])
    options = run_options(args)
    assert (options.weights, options.preprocess, options.class_map, options.calib) == ("w.pth", "none", "m.txt",
                                                                                       "c.npz")
    assert (options.loader_workers, options.quiet, options.jobs) == (0, True, 2)
