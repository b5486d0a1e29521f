"""Frontend: torch.export -> tersim IR, BN folding, float execution, file formats, error reporting."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from naive import randomize_bn
from tersim.errors import ModelLoadError, UnsupportedOpsError
from tersim.frontend import Graph, execute_float, import_model, lower_exported, lower_module
from tersim.frontend.ir import OP_ATTRS

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning",
                                        "ignore::UserWarning")


# ---------------------------------------------------------------------------------------------------
# architectures (module level so the pickled-module test can unpickle them)


class PlainCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.short(x))


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(1 * 6 * 6, 32)
        self.bn = nn.BatchNorm1d(32)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = self.drop(F.relu(self.bn(self.fc1(x))))
        return self.fc2(x)


class Zoo(nn.Module):
    """BN, grouped + depthwise convs, dilation, avg-pool options, padded max-pool, concat, odd adaptive pools."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_bn = nn.BatchNorm2d(8)
        self.pointwise = nn.Conv2d(16, 12, 1)
        self.same = nn.Conv2d(12, 12, 3, padding="same")
        self.fc = nn.Linear(12 * 3 * 2 + 12, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        a = F.relu(self.grouped(x))
        b = self.dw_bn(self.depthwise(x))
        x = torch.cat([a, b], dim=1)
        x = F.relu(self.pointwise(x))
        x = F.max_pool2d(x, 3, stride=2, padding=1)                                      # 11 -> 6
        x = F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)  # 6 -> 4 (ceil)
        x = self.same(x) + x
        p = F.adaptive_avg_pool2d(x, (3, 2)).flatten(1)
        q = x.mean((2, 3))                                                                  # mean w/o keepdim
        return self.fc(torch.cat([p, q], 1))


class TwoBad(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.tanh(torch.sigmoid(self.conv(x)))


def _make(cls) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(cls(), seed=1)


CASES = {
    "plain": (PlainCNN, (3, 8, 8)),
    "resnet": (ResNetish, (3, 8, 8)),
    "mlp": (MLP, (1, 6, 6)),
    "zoo": (Zoo, (4, 11, 11)),
}


def _check_matches(model: nn.Module, graph: Graph, input_shape: tuple[int, ...]) -> None:
    x = torch.randn((3, *input_shape), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        ref = model.double()(x).numpy()
    model.float()
    out = execute_float(graph, x.numpy())
    assert out.dtype == np.float64 and out.shape == ref.shape
    err = np.abs(out - ref).max()
    assert err <= 1e-5 * max(1.0, np.abs(ref).max()), err


def _check_well_formed(graph: Graph) -> None:
    assert graph.nodes[0].op == "input"
    seen = set()
    for node in graph.nodes:
        assert node.op in OP_ATTRS
        assert set(node.attrs) == set(OP_ATTRS[node.op]), node
        assert all(i in seen for i in node.inputs), f"{node.name} not topologically ordered"
        assert node.shape and all(isinstance(d, int) for d in node.shape)
        if node.weight is not None:
            assert node.weight.dtype == np.float32
        seen.add(node.name)
    assert graph.output in seen


@pytest.mark.parametrize("case", list(CASES))
def test_lowered_ir_matches_pytorch(case):
    cls, shape = CASES[case]
    model = _make(cls)
    graph = lower_module(model, torch.randn(2, *shape), name=case)
    _check_well_formed(graph)
    _check_matches(model, graph, shape)
    # every node's float64 output has the recorded shape
    outs = execute_float(graph, np.zeros((1, *shape)), return_all=True)
    assert list(outs) == [n.name for n in graph.nodes]
    assert all(outs[n.name].shape[1:] == n.shape for n in graph.nodes)


def test_bn_folded_away():
    graph = lower_module(_make(ResNetish), torch.randn(2, 3, 8, 8))
    ops = [n.op for n in graph.nodes]
    assert not any("norm" in op for op in ops)
    assert ops.count("conv2d") == 6 and all(n.bias is not None for n in graph.weighted())
    names = {n.name for n in graph.nodes}
    assert not any("batch_norm" in name for name in names)


def test_zoo_attrs():
    graph = lower_module(_make(Zoo), torch.randn(2, 4, 11, 11))
    by_op = {}
    for n in graph.nodes:
        by_op.setdefault(n.op, []).append(n)
    convs = by_op["conv2d"]
    assert sorted(c.attrs["groups"] for c in convs) == [1, 1, 1, 2, 8]
    assert any(c.attrs["dilation"] == (2, 2) for c in convs)
    (avg,) = by_op["avg_pool2d"]
    assert avg.attrs["ceil_mode"] and not avg.attrs["count_include_pad"]
    assert by_op["max_pool2d"][0].attrs["padding"] == (1, 1)
    assert {n.attrs["output_size"] for n in by_op["adaptive_avg_pool2d"]} == {(3, 2), (1, 1)}
    assert len(by_op["concat"]) == 2
    assert graph.node(graph.output).op == "linear"


def test_unsupported_ops_all_reported():
    with pytest.raises(UnsupportedOpsError) as info:
        lower_module(TwoBad().eval(), torch.randn(1, 3, 6, 6), name="twobad")
    ops = {op for _, op in info.value.offenders}
    nodes = {node for node, _ in info.value.offenders}
    assert len(info.value.offenders) == 2
    assert any("sigmoid" in op for op in ops) and any("tanh" in op for op in ops)
    assert nodes == {"sigmoid", "tanh"}
    assert "twobad" in str(info.value) and "sigmoid" in str(info.value)


def test_bn_without_conv_is_unsupported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    with pytest.raises(UnsupportedOpsError, match="batch_norm"):
        lower_module(model, torch.randn(1, 3, 6, 6))


def test_export_round_trip(tmp_path):
    model = _make(ResNetish)
    ep = torch.export.export(model, (torch.randn(2, 3, 8, 8),))
    path = tmp_path / "resnetish.pt"   # any extension: detected from the content
    torch.export.save(ep, path)
    graph = import_model(path)
    assert graph.name == "resnetish" and graph.input_shape == (3, 8, 8)
    _check_matches(model, graph, (3, 8, 8))
    direct = lower_exported(ep, "resnetish")
    assert [n.name for n in direct.nodes] == [n.name for n in graph.nodes]


def test_export_dynamic_batch(tmp_path):
    model = _make(MLP)
    batch = torch.export.Dim("batch", min=2)
    ep = torch.export.export(model, (torch.randn(4, 1, 6, 6),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(ep, tmp_path / "mlp.pt2")
    graph = import_model(tmp_path / "mlp.pt2")
    _check_matches(model, graph, (1, 6, 6))


def test_torchscript(tmp_path):
    model = _make(PlainCNN)
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, torch.randn(1, 3, 8, 8)), str(path))
    with pytest.raises(ModelLoadError, match="input"):
        import_model(path)
    graph = import_model(path, input_shape=(3, 8, 8))
    assert graph.name == "scripted"
    _check_matches(model, graph, (3, 8, 8))


def test_pickled_module_needs_trust(tmp_path):
    model = _make(Zoo)
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(ModelLoadError, match="trust-pickle"):
        import_model(path, input_shape=(4, 11, 11))
    graph = import_model(path, input_shape=(4, 11, 11), trust_pickle=True)
    assert graph.name == "whole"
    _check_matches(model, graph, (4, 11, 11))


def test_state_dict_refused(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(_make(PlainCNN).state_dict(), path)
    with pytest.raises(ModelLoadError, match="architecture") as info:
        import_model(path, trust_pickle=True)
    assert "weights.pth" in str(info.value) and "torch.export" in str(info.value)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(ModelLoadError, match="nope.pt"):
        import_model(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"this is not a model" * 10)
    with pytest.raises(ModelLoadError, match="garbage.pt2"):
        import_model(garbage)
