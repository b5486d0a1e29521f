"""The shipped example assets (examples/): present, loadable, documented shapes, and still accurate.

The accuracy floor is an assertion on a value computed here from the files; it is not a figure
recorded anywhere in tersim.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tersim.data import load_dataset
from tersim.models.digits import DigitsResNet, digits_resnet

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL = EXAMPLES / "digits_resnet.pt2"
TEST = EXAMPLES / "digits_test.npz"
TRAIN = EXAMPLES / "digits_train.npz"
ACCURACY_FLOOR = 0.95


@pytest.fixture(scope="module")
def program():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.load(MODEL)


@pytest.fixture(scope="module")
def test_data():
    with np.load(TEST, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_files_exist():
    for path in (MODEL, TEST, TRAIN, EXAMPLES / "README.md"):
        assert path.is_file(), f"{path} missing: run scripts/train_digits.py"
    assert MODEL.stat().st_size < 1_000_000, "example model should stay small"


@pytest.mark.parametrize("path, n", [(TEST, 500), (TRAIN, 1297)])
def test_data_shapes_and_dtypes(path, n):
    with np.load(path, allow_pickle=False) as f:
        x, y = f["x"], f["y"]
        mean, std = float(f["mean"]), float(f["std"])
    assert x.dtype == np.float32 and x.shape == (n, 1, 8, 8)
    assert y.dtype == np.int64 and y.shape == (n,)
    assert set(np.unique(y)) <= set(range(10))
    assert np.isfinite(x).all()
    # x is (pixels/16 - mean)/std with pixels in 0..16: its range is bounded accordingly.
    assert x.min() >= (0.0 - mean) / std - 1e-5 and x.max() <= (1.0 - mean) / std + 1e-5
    assert 0.0 < mean < 1.0 and std > 0.0
    # tersim's own loader accepts the file unchanged.
    lx, ly = load_dataset(path)
    np.testing.assert_array_equal(lx, x)
    np.testing.assert_array_equal(ly, y)


def test_train_and_test_are_disjoint():
    with np.load(TEST) as a, np.load(TRAIN) as b:
        test_rows = {r.tobytes() for r in a["x"].reshape(len(a["x"]), -1)}
        train_rows = {r.tobytes() for r in b["x"].reshape(len(b["x"]), -1)}
    # sklearn digits has a few duplicate images; nearly all test images must be unseen.
    assert len(test_rows & train_rows) <= 5


def test_model_accuracy_floor(program, test_data):
    x, y = torch.from_numpy(test_data["x"]), torch.from_numpy(test_data["y"])
    with torch.no_grad():
        logits = program.module()(x)  # the whole test set as one batch
    assert logits.shape == (500, 10)
    acc = (logits.argmax(1) == y).float().mean().item()
    assert acc >= ACCURACY_FLOOR, f"test accuracy {acc:.4f} below {ACCURACY_FLOOR}"


def test_dynamic_batch(program, test_data):
    x = torch.from_numpy(test_data["x"])
    with torch.no_grad():
        full = program.module()(x[:7])
        for b in (1, 3):
            torch.testing.assert_close(program.module()(x[:b]), full[:b], rtol=1e-5, atol=1e-5)


def test_archive_matches_architecture(program, test_data):
    model = digits_resnet()
    assert isinstance(model, DigitsResNet)
    # strict: same parameter/buffer names and shapes as the architecture in tersim.models.digits
    model.load_state_dict(program.state_dict, strict=True)
    model.eval()
    x = torch.from_numpy(test_data["x"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), program.module()(x), rtol=1e-5, atol=1e-5)


def test_ops_are_supported_kinds(program):
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    allowed = {
        "aten.conv2d.default", "aten.batch_norm.default", "aten.relu.default", "aten.add.Tensor",
        "aten.adaptive_avg_pool2d.default", "aten.flatten.using_ints", "aten.linear.default",
    }
    assert ops <= allowed, sorted(ops - allowed)
    wide = [n for n in program.graph.nodes
            if n.target is torch.ops.aten.conv2d.default and n.args[1].meta["val"].shape[1] >= 64]
    assert len(wide) >= 3  # layers where FGQ groups of N=64 fit whole


# --- the FGQ variants on the shipped model (issue: group layout, two scales, BN re-estimation) -------------
VARIANT_TARGETS = [
    ({"quantization.group_layout": "kernel"}, 0.97),
    ({"quantization.scales": "two"}, 0.97),
    ({"quantization.correction": "bn_reestimate"}, 0.99),
]


@pytest.mark.parametrize("overrides, floor", VARIANT_TARGETS)
def test_fgq_variants_reach_their_accuracy_with_engine_timing_and_verify(overrides, floor):
    from tersim.config import load_accelerator
    from tersim.pipeline import run
    from tersim.verify import verify

    hw = load_accelerator(Path(__file__).resolve().parents[1] / "hw_configs" / "default.yaml").with_overrides(overrides)
    # timing="engine" raises unless every layer's stepped output and cycles equal the kernels' and the model's
    result = run(hw, MODEL, data=TEST, group_size=4, act_bits=8, calib=TRAIN, timing="engine")
    s = result.summary.iloc[0]
    assert s.samples == 500 and s.accuracy_quant >= floor
    assert (result.layers.timing == "engine").all()
    wide = result.layers[(result.layers.weights == "ternary") & (result.layers.macs > 0)]
    expected = 0.5 if overrides.get("quantization.scales") == "two" else 0.75
    for _, layer in wide[wide.out_shape.str.startswith("64x")].iterrows():
        assert layer.mults_eliminated == pytest.approx(expected)
    if "correction" in str(overrides):
        assert s.calibration_split == TRAIN.name
    assert verify(hw, MODEL, data=TEST, group_size=4, act_bits=8, calib=TRAIN, limit=16).bit_exact


MOBILENET = EXAMPLES / "digits_mobilenet.pt2"


def test_mobilenet_asset_is_small_accurate_and_mobilenet_style():
    assert MOBILENET.is_file(), "run scripts/train_digits_mobilenet.py"
    assert MOBILENET.stat().st_size < 1_000_000
    from tersim.frontend import import_model

    graph = import_model(MOBILENET)
    convs = [n for n in graph.nodes if n.op == "conv2d"]
    assert any(n.attrs["groups"] == n.weight.shape[0] > 1 for n in convs)        # depthwise
    assert any(n.weight.shape[2:] == (1, 1) for n in convs)                        # pointwise
    assert any(n.op == "clamp" and n.attrs["max"] == 6.0 for n in graph.nodes)     # ReLU6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.load(MOBILENET)
    with np.load(TEST) as f:
        x, y = torch.from_numpy(f["x"]), torch.from_numpy(f["y"])
    with torch.no_grad():
        acc = (program.module()(x).argmax(1) == y).float().mean().item()
    assert acc >= ACCURACY_FLOOR


def test_mobilenet_runs_through_run_verify_and_sweep(tmp_path):
    from tersim.cli import main

    common = ["hw_configs/default.yaml", str(MOBILENET), "--data", str(TEST), "--limit", "16"]
    assert main(["run", *common, "-N", "4", "--scales", "two", "--out", str(tmp_path)]) == 0   # engine timing
    assert main(["verify", *common, "-N", "4", "--group-layout", "kernel"]) == 0
    assert main(["sweep", *common, "--group-sizes", "4", "--act-bits", "8", "--set", "quantization.scales=one,two",
                 "--out", str(tmp_path), "--no-cache"]) == 0
    points = pd.read_csv(next(tmp_path.glob("*_sweep.csv")))
    assert sorted(points["quantization.scales"]) == ["one", "two"]
    assert (points.mults_eliminated[points["quantization.scales"] == "two"].iloc[0]
            < points.mults_eliminated[points["quantization.scales"] == "one"].iloc[0])
