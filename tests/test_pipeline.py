"""End to end: model file + hw YAML -> quantized graph -> engine -> report, through the API and the CLI."""
from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import DATA, HW, MODEL, ROOT
from naive import randomize_bn
from tersim.cli import main
from tersim.config import Accelerator
from tersim.engine.execute import dequantize_output, execute
from tersim.frontend import execute_float, lower_module
from tersim.options import RunOptions
from tersim.pipeline import run
from tersim.quantize.graph import quantize_graph
from tersim.verify import verify


class ResidualNet(nn.Module):
    """Stem, one residual block at 64 channels (so N=4/64 groups divide Cin), pooling head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.conv1 = nn.Conv2d(64, 64, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.conv2(y))
        x = self.pool(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def residual_files(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_bn(ResidualNet())
    d = tmp_path_factory.mktemp("residual")
    x = torch.randn(48, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    path = d / "residual.pt2"
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},)), path)
    np.savez(d / "data.npz", x=x.numpy(), y=y.numpy())
    return model, path, d / "data.npz"


@pytest.fixture(scope="module")
def residual_graph(residual_files):
    model, _, _ = residual_files
    return lower_module(model, torch.randn(2, 3, 8, 8), "residual")


def test_formats_follow_the_contract(residual_graph):
    hw = Accelerator()
    calib = [np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)]
    q = quantize_graph(residual_graph, calib, hw.with_overrides({"group_scaling.group_size": 4, "pe.act_bits": 4}))
    assert q.input_format.bits == 8 and q.input_format.signed
    weighted = [l for l in q.layers.values() if l.weight_kind]
    assert weighted[0].weight_kind == "int8" and weighted[-1].weight_kind == "int8"
    assert all(l.weight_kind == "ternary" for l in weighted[1:-1])
    for layer in weighted:
        assert layer.shift == q.layers[layer.node.inputs[0]].out.frac + layer.alpha_frac - layer.out.frac
        if layer.fused_activation:
            assert not layer.out.signed and layer.out_lo == 0
        assert np.all(layer.alpha_q >= 0) and np.all(layer.alpha_q < 2 ** hw.group_scaling.scale_bits)
    inner = [l for l in weighted if l.weight_kind == "ternary"]
    assert all(set(np.unique(l.codes)) <= {-1, 0, 1} for l in inner)
    assert all(l.out.bits == 4 for l in inner)


def test_engine_approximates_fp32_when_quantization_is_fine(residual_graph):
    """N=1 ternary weights are exact up to alpha rounding: the integer engine must track the float model."""
    hw = Accelerator().with_overrides({"group_scaling.scale_bits": 16})
    x = np.random.default_rng(1).standard_normal((32, 3, 8, 8)).astype(np.float32)
    q = quantize_graph(residual_graph, [x], RunOptions.of(group_size=1, act_bits=8, first_last="ternary").apply(hw))
    out = dequantize_output(q, execute(q, x).output(q))
    ref = execute_float(residual_graph, x)
    cosine = np.sum(out * ref) / (np.linalg.norm(out) * np.linalg.norm(ref))
    assert cosine > 0.99


@pytest.mark.parametrize("group_size", [4, 64])
def test_multiplications_eliminated_on_wide_layers(residual_files, group_size):
    _, model_path, data = residual_files
    result = run(Accelerator(), model_path, data=data, group_size=group_size)
    wide = result.layers[(result.layers.weights == "ternary") & (result.layers.op == "conv2d")]
    assert len(wide) == 2
    assert np.allclose(wide.mults_eliminated, 1 - 1 / group_size)
    row = result.summary.iloc[0]
    assert row.mults_eliminated_ternary_layers == pytest.approx(1 - 1 / group_size)
    assert row.mults < row.macs
    assert 0 <= row.accuracy_quant <= 1 and 0 <= row.top1_agreement <= 1
    assert row.speedup_equal_pe > 0


def test_int8_layers_scale_once_per_kernel_position(residual_files):
    """First/last int8 layers: every MAC multiplies, plus the per-channel scale once per output and kernel
    position (the contract clamps after each; the array and the timing model do the same multiplies)."""
    _, model_path, data = residual_files
    layers = run(Accelerator(), model_path, data=data, group_size=4).layers
    int8 = layers[layers.weights == "int8"]
    assert list(int8.layer) and set(int8.op) == {"conv2d", "linear"}
    outputs = int8.out_shape.map(lambda s: int(np.prod([int(v) for v in s.split("x")])))
    taps = int8.op.map({"conv2d": 9, "linear": 1})                 # the stem is 3x3, the head linear
    assert (int8.scale_mults == outputs * taps).all()
    assert (int8.mults == int8.macs + int8.scale_mults).all()
    assert (int8.group_multiplies == int8.scale_mults).all()


@pytest.mark.parametrize("act_bits, overflow", [(8, "saturate"), (4, "wrap")])
def test_verify_is_bit_exact_on_residual_model(residual_files, act_bits, overflow):
    _, model_path, data = residual_files
    hw = Accelerator().with_overrides({"accumulator.overflow": overflow})
    result = verify(hw, model_path, data=data, group_size=8, act_bits=act_bits)
    assert result.bit_exact, result.layers[~result.layers.identical]
    assert set(result.layers.op) >= {"conv2d", "linear", "add", "max_pool2d", "adaptive_avg_pool2d"}


def test_verify_counts_overflows_with_narrow_accumulators(residual_files):
    _, model_path, data = residual_files
    hw = Accelerator().with_overrides({"accumulator.bits": 10})
    result = verify(hw, model_path, data=data, group_size=4)
    assert result.bit_exact
    assert result.layers.overflow_sim.sum() > 0


def test_cli_run_writes_reports(residual_files, tmp_path, capsys):
    _, model_path, data = residual_files
    hw_yaml = tmp_path / "hw.yaml"
    hw_yaml.write_text("name: t8\narray: {rows: 8, cols: 8}\ngroup_scaling: {multipliers: 8}\n")
    code = main(["run", str(hw_yaml), str(model_path), "--data", str(data), "--out", str(tmp_path / "r"), "-N", "4"])
    assert code == 0
    out = capsys.readouterr().out
    assert "mults_eliminated" in out and "speedup_equal_pe" in out
    layers = pd.read_csv(tmp_path / "r" / "residual_t8_N4_a8_layers.csv")
    summary = pd.read_csv(tmp_path / "r" / "residual_t8_N4_a8_summary.csv")
    assert len(layers) == 4 and len(summary) == 1
    assert (layers.total_cycles > 0).all()
    assert not list((tmp_path / "r").glob(".*tmp"))


def test_cli_verify_passes(residual_files, capsys):
    _, model_path, data = residual_files
    assert main(["verify", str(HW), str(model_path), "--data", str(data)]) == 0
    assert "PASS" in capsys.readouterr().out


def test_cli_freezes_the_imports_of_a_fresh_process_only(residual_files, capsys):
    """A fresh process imports the pipeline with the collector paused and freezes it (collector on again after);
    a process that imported torch itself keeps its collector exactly as it was."""
    code = ("import gc, sys; from tersim.cli import main; "
            f"assert main(['verify', {str(HW)!r}, {str(MODEL)!r}, '--data', {str(DATA)!r}, '--limit', '8']) == 0; "
            "print('frozen', gc.get_freeze_count(), gc.isenabled(), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    _, frozen, enabled = proc.stderr.strip().splitlines()[-1].split()
    assert int(frozen) > 10_000 and enabled == "True"

    _, model_path, data = residual_files
    before = gc.get_freeze_count()
    assert main(["verify", str(HW), str(model_path), "--data", str(data)]) == 0
    assert gc.get_freeze_count() == before and gc.isenabled()
    capsys.readouterr()


def test_cli_errors_are_one_line_and_write_nothing(residual_files, tmp_path, capsys):
    _, model_path, data = residual_files
    out = tmp_path / "reports"
    bad_hw = tmp_path / "bad.yaml"
    bad_hw.write_text("array: {rows: -3}\n")
    assert main(["run", str(bad_hw), str(model_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.yaml" in err and "array.rows" in err

    class Odd(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x) * torch.tanh(x)

    odd = tmp_path / "odd.pt2"
    torch.export.save(torch.export.export(Odd(), (torch.randn(1, 3, 8, 8),)), odd)
    assert main(["run", str(HW), str(odd), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sigmoid" in err and "tanh" in err

    assert main(["run", str(HW), str(model_path), "--data", str(tmp_path / "none.npz"),
                 "--out", str(out)]) == 2
    assert "none.npz" in capsys.readouterr().err
    assert not out.exists()


def test_fp32_reference_reuses_the_calibration_pass(residual_files, monkeypatch):
    """Evaluation batches calibration already ran through the FP32 network take their outputs from it: one FP32
    pass fewer, and the same report as recomputing them (a correction calibrates another network: no reuse)."""
    import tersim.frontend.float_exec as float_exec
    import tersim.pipeline as pipeline

    _, path, data = residual_files
    calls = []
    real = pipeline.execute_float

    def counted(*args, **kwargs):
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "execute_float", counted)
    reused = run(HW, path, data=str(data), batch_size=32, timing="analytic")  # calibration: 32 + 16 samples
    assert calls == []                                                       # both batches were calibrated
    monkeypatch.setattr(float_exec.FloatOutputs, "get", lambda self, x: None)
    fresh = run(HW, path, data=str(data), batch_size=32, timing="analytic")
    assert calls == [32, 16]
    pd.testing.assert_frame_equal(reused.summary, fresh.summary)
    pd.testing.assert_frame_equal(reused.layers, fresh.layers)
    calls.clear()
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "execute_float", counted)
    run(HW, path, data=str(data), batch_size=32, timing="analytic", correction="bias_correction")
    assert calls == [32, 16]
