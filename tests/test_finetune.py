"""tersim finetune: STE gradients, what each method quantizes, determinism, resume, the written model, CLI errors.

Small: the shipped digits model on a 192-image subset, 1-2 epochs per run.
"""
from __future__ import annotations

import math

from conftest import DATA, MODEL, TRAIN

import numpy as np
import pytest
import torch

from tersim.data import load_dataset
from tersim.errors import DataError
from tersim.finetune import FLOAT_PLAN, FinetuneConfig, GraphNet, finetune, read_metadata, save_model
from tersim.finetune import graph_module
from tersim.cli import main as tersim_main
from tersim.finetune.graph_module import ste_datapath_weight, ste_group_kbit
from tersim.finetune.methods import FinetuneError, JointKD, Progressive, Stochastic
from tersim.finetune.train import make_method
from tersim.frontend import import_model
from tersim.quantize.activations import fake_quant_act
from tersim.quantize.fgq import dequantize, fixed_point_alpha, ste_int8_weights, ste_ternarize, ternarize
from tersim.quantize.graph import quantize_graph
from tersim.config import Accelerator

N_TRAIN = 192


@pytest.fixture(scope="module")
def graph():
    return import_model(MODEL)


@pytest.fixture(scope="module")
def data():
    x, y = load_dataset(TRAIN)
    xv, yv = load_dataset(DATA)
    return (x[:N_TRAIN], y[:N_TRAIN]), (xv[:128], yv[:128])


def _cfg(**kw) -> FinetuneConfig:
    base = dict(group_size=64, act_bits=8, epochs=2, batch_size=64, lr=1e-3, seed=0)
    return FinetuneConfig(**{**base, **kw})


def _calibrated(graph, act_bits=(8,)) -> GraphNet:
    net = GraphNet(graph)
    x, _ = load_dataset(TRAIN)
    net.calibrate([x[:32]], Accelerator().with_overrides({"group_scaling.group_size": 64}), list(act_bits))
    return net


def _same_state(a: GraphNet, b: GraphNet) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------ STE gradients

def test_weight_ste_is_identity_and_forward_is_fgq():
    torch.manual_seed(0)
    w = torch.randn(8, 20, 3, 3, requires_grad=True)
    wq = ste_ternarize(w, 8)
    codes, alpha = ternarize(w.detach(), 8)
    assert torch.equal(wq.detach(), dequantize(codes, alpha, 8))
    g = torch.randn_like(w)
    (wq * g).sum().backward()
    assert torch.equal(w.grad, g)


def test_datapath_weight_is_fgq_with_fixed_point_alpha():
    torch.manual_seed(0)
    w = torch.randn(8, 20, 3, 3, requires_grad=True)
    assert torch.equal(ste_datapath_weight(w, "ternary", 8), ste_ternarize(w, 8))
    assert torch.equal(ste_datapath_weight(w, "int8", 8), ste_int8_weights(w))
    codes, alpha = ternarize(w.detach(), 8)
    alpha_q, frac = fixed_point_alpha(alpha, 8)
    expected = dequantize(codes, torch.from_numpy(alpha_q * 2.0 ** -frac), 8).float()
    wq = ste_datapath_weight(w, "ternary", 8, scale_bits=8)
    assert torch.equal(wq.detach(), expected)
    wq.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_graphnet_weight_gradient_is_straight_through(graph):
    """d loss / d shadow weight == d loss / d quantized weight (the same float graph run on W_q)."""
    net = _calibrated(graph)
    x = torch.from_numpy(load_dataset(DATA)[0][:16])
    plan = net.full_plan(8)
    name = "conv2d_4"
    net(x, plan).sum().backward()
    shadow_grad = net.weight(name).grad.clone()
    # same plan, but the layer's weight replaced by its (detached) quantized value as a leaf
    wq = net.quantized_weight(name, "datapath").detach().requires_grad_(True)
    original = net.quantized_weight
    net.quantized_weight = lambda n, mode: wq if n == name else original(n, mode)
    net(x, plan).sum().backward()
    assert torch.allclose(shadow_grad, wq.grad)


def test_activation_ste_masked_outside_range():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.74, 1.0, 5.0], requires_grad=True)
    # unsigned 4-bit, frac 3: codes 0..15 -> values 0..1.875
    y = fake_quant_act(x, frac=3, bits=4, signed=False)
    y.sum().backward()
    assert y.detach().tolist() == [0.0, 0.0, 0.0, 0.75, 1.0, 1.875]
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0]


def test_kbit_group_quantizer_levels_and_gradient():
    torch.manual_seed(1)
    w = torch.randn(4, 10, requires_grad=True)  # linear, groups of 4: 4 + 4 + 2 channels
    wq = ste_group_kbit(w, 4, group_size=4)
    for g in (slice(0, 4), slice(4, 8), slice(8, 10)):
        block = wq.detach()[:, g]
        scale = w.detach()[:, g].abs().amax(1, keepdim=True) / 7
        codes = block / scale
        assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 7 + 1e-4
    wq.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


# ------------------------------------------------------------------------------------ the datapath mirror

def test_float_plan_matches_float_graph(graph, monkeypatch):
    """The float plan computes the float graph: bit for bit what execute_float computes with the same (NCHW)
    convolutions, and within float32 rounding of its channels_last pass."""
    from tersim.frontend import execute_float, float_exec

    x = load_dataset(DATA)[0][:32]
    net = GraphNet(graph)
    with torch.no_grad():
        out = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, execute_float(graph, x, dtype=np.float32), rtol=1e-5, atol=1e-5)
    monkeypatch.setitem(float_exec.FLOAT32_OPS, "conv2d", float_exec.OPS["conv2d"])
    assert np.array_equal(out, execute_float(graph, x, dtype=np.float32))


def test_full_plan_quantizes_like_quantize_graph(graph, monkeypatch):
    """Every requantization point of the datapath is fake-quantized, with quantize_graph's formats."""
    net = _calibrated(graph)
    calls = []
    real = graph_module.fake_quant_act
    monkeypatch.setattr(graph_module, "fake_quant_act", lambda v, f, b, s: calls.append((f, b, s)) or real(v, f, b, s))
    net(torch.zeros(2, 1, 8, 8), net.full_plan(8))
    q = net.qgraphs[8]
    expected = [(q.layers[n].out.frac, q.layers[n].out.bits, q.layers[n].out.signed) for n in net.act_points()]
    assert calls == expected
    kinds = {n: net.weight_kind(n) for n in net.weighted_names()}
    assert kinds["conv2d"] == kinds["linear"] == "int8" and kinds["conv2d_4"] == "ternary"


# ------------------------------------------------------------------------------------ methods

def test_progressive_stages(graph, monkeypatch):
    method = Progressive(act_bits=8, epochs=4)
    net = _calibrated(graph)
    plans = [method.plan(net, e, 0, 1) for e in range(4)]
    ternary = "conv2d_4"
    assert [p.weights[ternary] for p in plans] == [8, 4, "datapath", "datapath"]
    assert [bool(p.acts) for p in plans] == [False, False, False, True]   # weights first, then activations
    calls = []
    monkeypatch.setattr(graph_module, "fake_quant_act", lambda *a: calls.append(a))
    net(torch.zeros(2, 1, 8, 8), plans[0])
    assert calls == []  # weights-only phase: no activation quantizer runs
    w4 = net.quantized_weight(ternary, 4).detach()
    assert len(torch.unique(w4[0, :, 0, 0].abs())) <= 8  # 4-bit symmetric: at most 8 magnitudes per group
    assert Progressive(act_bits=4, epochs=5).stage(4) == "wt+a4"
    with pytest.raises(FinetuneError, match="last stage"):
        Progressive(act_bits=8, epochs=4, schedule="w8,w4")


def test_stochastic_subsets_vary_and_ratio_follows_schedule(graph):
    net = _calibrated(graph)
    layers = net.weighted_names()
    total = 100
    method = Stochastic(act_bits=8, epochs=4, seed=0, start=0.5, full=0.2)
    subsets = [tuple(method.subset(layers, s, total)) for s in range(total)]
    for s, sub in enumerate(subsets):
        ratio = min(1.0, 0.5 + 0.5 * s / 80)
        assert math.isclose(method.ratio(s, total), ratio)
        assert len(sub) == math.ceil(ratio * len(layers) - 1e-9)
    assert len(set(subsets[:10])) > 1          # a different random subset per step
    assert all(len(sub) == len(layers) for sub in subsets[80:])  # the end is fully quantized
    plan = method.plan(net, 0, 3, total)
    chosen = set(subsets[3])
    assert plan.quantized_layers() == chosen
    assert all((name in plan.acts) == (name in chosen) for name in layers)
    assert net.graph.input.name in plan.acts   # quantizers not tied to a layer stay on


def test_kd_trains_teacher_and_adds_distillation(graph, data):
    train, val = data
    cfg = _cfg(method="kd", epochs=1, kd_features=("relu_4",))
    result = finetune(graph, train, cfg, val=val)
    start = GraphNet(graph)
    assert result.teacher is not None and not _same_state(result.teacher, start)  # the teacher was trained
    assert not _same_state(result.teacher, result.net)
    method = make_method(cfg)
    assert isinstance(method, JointKD)
    torch.manual_seed(0)
    zs, zt, y = torch.randn(8, 10, requires_grad=True), torch.randn(8, 10, requires_grad=True), torch.arange(8)
    fs = {"relu_4": torch.randn(8, 4)}
    ft = {"relu_4": torch.randn(8, 4)}
    student, teacher, parts = method.losses(zs, zt, y, fs, ft)
    assert parts["kd"] > 0 and parts["feat"] > 0
    assert math.isclose(student.item(), parts["ce"] + 1.0 * parts["kd"] + 1.0 * parts["feat"], rel_tol=1e-5)
    teacher.backward()
    assert zt.grad is not None and zs.grad is None  # each side's target is detached


def test_kd_frozen_teacher_stays_the_starting_model(graph, data):
    train, _ = data
    result = finetune(graph, train, _cfg(method="kd", epochs=1, kd_teacher="frozen"))
    assert _same_state(result.teacher, GraphNet(graph))
    assert not _same_state(result.net, GraphNet(graph))  # the student still learns


# ------------------------------------------------------------------------------------ determinism, resume

def test_deterministic_with_seed(graph, data):
    train, _ = data
    a = finetune(graph, train, _cfg(method="stochastic", seed=3))
    b = finetune(graph, train, _cfg(method="stochastic", seed=3))
    c = finetune(graph, train, _cfg(method="stochastic", seed=4))
    assert _same_state(a.net, b.net)
    assert not _same_state(a.net, c.net)


def test_resume_continues_identically(graph, data, tmp_path):
    train, _ = data
    cfg = _cfg(method="kd", epochs=2)
    full = finetune(graph, train, cfg, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_001.pt", "epoch_002.pt"]
    resumed = finetune(graph, train, cfg, resume=tmp_path / "epoch_001.pt")
    assert _same_state(full.net, resumed.net) and _same_state(full.teacher, resumed.teacher)
    assert full.history.loss.tolist() == resumed.history.loss.tolist()
    with pytest.raises(FinetuneError, match="epochs"):
        finetune(graph, train, _cfg(method="kd", epochs=3), resume=tmp_path)


# ------------------------------------------------------------------------------------ the written model

def test_written_model_reimports_to_trained_codes(graph, data, tmp_path):
    train, _ = data
    result = finetune(graph, train, _cfg(method="ste", epochs=1))
    path = save_model(result, tmp_path / "ft.pt2")
    reimported = import_model(path)
    hw = Accelerator()
    q = quantize_graph(reimported, result.calibration, hw.with_overrides({"group_scaling.group_size": 64}))
    trained = result.net.weighted_names()
    written = [layer for layer in q.layers.values() if layer.weight_kind is not None]
    assert len(written) == len(trained)
    for name, layer in zip(trained, written):
        w = result.net.weight(name).detach()
        assert np.array_equal(layer.node.weight, w.numpy())  # the shadow weights, bit for bit
        if layer.weight_kind == "ternary":
            codes, alpha = ternarize(w, 64)                      # the trained model's ternary codes
            assert np.array_equal(layer.codes, codes.numpy())
            assert np.array_equal(layer.alpha_q, fixed_point_alpha(alpha, hw.group_scaling.scale_bits)[0].reshape(layer.alpha_q.shape))
    meta = read_metadata(path)
    assert meta["config"]["group_size"] == 64 and meta["config"]["method"] == "ste"
    assert set(meta["act_fracs"]) == {n.name for n in graph.nodes}


def test_written_model_is_bit_exact_in_verify(graph, data, tmp_path):
    from tersim.verify import verify

    train, val = data
    path = save_model(finetune(graph, train, _cfg(method="progressive", epochs=1)), tmp_path / "ft.pt2")
    result = verify(Accelerator(), path, data=DATA, group_size=64, act_bits=8, limit=64)
    assert result.bit_exact


# ------------------------------------------------------------------------------------ CLI errors

@pytest.mark.parametrize("content", ["npz_without_x", "not_data", "missing", "no_labels"])
def test_bad_data_is_one_line_data_error(tmp_path, capsys, content):
    bad = tmp_path / "bad.npz"
    if content == "npz_without_x":
        np.savez(bad, images=np.zeros((4, 1, 8, 8), np.float32))
    elif content == "not_data":
        bad = tmp_path / "bad.pt"
        bad.write_text("hello\n")
    elif content == "no_labels":
        np.savez(bad, x=np.zeros((4, 1, 8, 8), np.float32))
    code = tersim_main(["finetune", str(MODEL), "--data", str(bad), "-o", str(tmp_path / "o.pt2"), "--epochs", "1",
                          "--no-checkpoints"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == DataError.exit_code
    assert sum(line.startswith("tersim: error:") for line in lines) == 1
    assert lines[-1].startswith("tersim: error:") and str(bad) in lines[-1]  # one line, naming the file
    assert not (tmp_path / "o.pt2").exists()
