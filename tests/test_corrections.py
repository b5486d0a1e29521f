"""Accuracy corrections without training: they keep the float model (equalization), hit their targets
(BN statistics, clipped-normal means) and refuse to calibrate on the evaluation data."""
from pathlib import Path

import numpy as np
import pytest
import torch

from tersim.cli import main
from tersim.config import Accelerator
from tersim.frontend import execute_float, import_model
from tersim.quantize.correction import CALIB_MAX_SAMPLES, _clipped, equalized_weights, expected_inputs
from tersim.quantize.graph import corrected_graph, quantize_weights

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL, TEST, TRAIN = EXAMPLES / "digits_resnet.pt2", EXAMPLES / "digits_test.npz", EXAMPLES / "digits_train.npz"


@pytest.fixture(scope="module")
def graph():
    return import_model(MODEL)


def hw_with(correction: str) -> Accelerator:
    return Accelerator().with_overrides({"quantization.correction": correction})


def test_frontend_keeps_the_folded_batchnorm(graph):
    conv = graph.node("conv2d_1")
    assert conv.bn is not None and conv.bn["gamma"].shape == (16,)
    s = conv.bn["gamma"] / np.sqrt(conv.bn["var"] + conv.bn["eps"])
    np.testing.assert_allclose(conv.bias, (conv.bn["bias"] - conv.bn["mean"]) * s + conv.bn["beta"], rtol=1e-5,
                               atol=1e-6)


def test_equalization_leaves_the_float_network_unchanged(graph):
    eq = equalized_weights(graph)
    assert any(k.startswith("__scale__") for k in eq)
    nodes = [n if n.name not in eq else type(n)(**{**vars(n), "weight": eq[n.name][0], "bias": eq[n.name][1]})
             for n in graph.nodes]
    g2 = type(graph)(graph.name, nodes, graph.output)
    x = np.load(TEST)["x"][:64]
    np.testing.assert_allclose(execute_float(g2, x), execute_float(graph, x), rtol=1e-4, atol=1e-4)
    # ranges of an equalized pair now match channel by channel
    assert "conv2d" not in eq                                   # its relu also feeds a residual add
    a, b = eq["conv2d_3"][0], eq["conv2d_4"][0]
    np.testing.assert_allclose(np.abs(a).reshape(64, -1).max(1), np.abs(b).max(axis=(0, 2, 3)), rtol=1e-4)


def test_bn_reestimate_restores_the_batchnorm_statistics(graph):
    calib = np.load(TRAIN)["x"][:CALIB_MAX_SAMPLES]
    weights = quantize_weights(graph, hw_with("bn_reestimate").with_overrides({"group_scaling.group_size": 4}), calib=calib)
    outputs = execute_float(corrected_graph(graph, weights), calib, dtype=np.float64, return_all=True)
    for name in ("conv2d_1", "conv2d_4"):
        bn = graph.node(name).bn
        z = outputs[name]
        np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), bn["beta"], atol=1e-3)
        s = bn["gamma"] / np.sqrt(bn["var"] + bn["eps"])
        v = (z.var(axis=(0, 2, 3)) / bn["gamma"] ** 2)       # standardised variance: v / (v + eps s^2) <= 1
        assert np.all(v <= 1 + 1e-6) and np.all(v > 0.9), (name, v.min(), s.min())


def test_clipped_normal_mean_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mu, sd = np.array([-1.0, 0.5, 3.0]), np.array([1.0, 2.0, 0.5])
    z = rng.normal(mu, sd, (400_000, 3))
    for lo, hi in ((0.0, None), (0.0, 6.0), (None, 1.0)):
        mean, _ = _clipped(mu, sd, lo, hi)
        np.testing.assert_allclose(mean, np.clip(z, lo, hi).mean(0), atol=0.01)


def test_bias_correction_uses_bn_statistics_and_shifts_by_error_times_mean(graph):
    stats = expected_inputs(graph)
    assert stats["x"] is None and stats["conv2d"] is not None
    assert stats["view"][0].shape == (64,)                       # through pooling and flatten
    hw = hw_with("bias_correction")
    corrected = quantize_weights(graph, hw.with_overrides({"group_scaling.group_size": 4}))
    plain = quantize_weights(graph, Accelerator().with_overrides({"group_scaling.group_size": 4}))
    assert "bias" not in corrected["conv2d"]                     # its input (the image) has no known mean
    lin = graph.node("linear")
    from tersim.quantize.fgq import dequantize
    wq = dequantize(plain["linear"]["codes"], plain["linear"]["alpha"].reshape(10, 1, 1, -1), 64)
    expected = lin.bias - (wq - lin.weight) @ stats["view"][0]
    np.testing.assert_allclose(corrected["linear"]["bias"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(corrected["conv2d_4"]["codes"], plain["conv2d_4"]["codes"])   # zero hw cost


def test_bn_reestimate_refuses_the_evaluation_data(capsys):
    args = ["run", "hw_configs/default.yaml", str(MODEL), "--data", str(TEST), "--limit", "8", "--timing", "analytic",
            "--correction", "bn_reestimate", "--out", "/tmp"]
    assert main(args + ["--calib", str(TEST)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tersim: error: --calib: the calibration data is the evaluation data")
    assert main(args) == 2
    assert "needs unlabelled calibration data" in capsys.readouterr().err
