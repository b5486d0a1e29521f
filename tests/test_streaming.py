"""Float and integer execution free tensors after their last use: same results as keeping all of them."""
import numpy as np
import torch

from tersim.config import Accelerator
from tersim.engine.execute import execute
from tersim.frontend import execute_float, lower_module
from tersim.quantize.graph import calibrate_max_abs, quantize_graph


class SelfAdd(torch.nn.Module):
    """y + y (one node using a tensor twice) and y used again afterwards."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        z = y + y
        return self.conv2(z) + y


def test_tensor_used_twice_by_one_node_and_again_later():
    torch.manual_seed(0)
    graph = lower_module(SelfAdd(), torch.randn(2, 3, 6, 6), "selfadd")
    assert any(n.op == "add" and len(set(n.inputs)) == 1 for n in graph.nodes)
    assert graph.consumer_counts() == {n.name: len(graph.consumers(n.name)) for n in graph.nodes}
    x = np.random.default_rng(0).standard_normal((3, 3, 6, 6)).astype(np.float32)
    every = execute_float(graph, x, dtype=np.float32, return_all=True)
    np.testing.assert_array_equal(execute_float(graph, x, dtype=np.float32), every[graph.output])
    seen = {}
    execute_float(graph, x, dtype=np.float32, each=lambda name, v: seen.setdefault(name, v.copy()))
    assert seen.keys() == every.keys()
    for name in every:
        np.testing.assert_array_equal(seen[name], every[name])
    expected = {name: max(float(np.max(np.abs(v))), 0.0) for name, v in every.items()}
    assert calibrate_max_abs(graph, [x]) == expected
    qgraph = quantize_graph(graph, [x], Accelerator().with_overrides({"group_scaling.group_size": 2}))
    kept = execute(qgraph, x, keep_all=True)
    streamed = execute(qgraph, x, keep_all=False)
    np.testing.assert_array_equal(streamed.output(qgraph), kept.output(qgraph))


class InPlaceCases(torch.nn.Module):
    """Every in-place case of execute_float: relu on the model input (the caller's array: never written), a
    relu whose input another node still reads, add chains, clamp (ReLU6), a relu on a flatten view, and
    a relu as the graph output."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 4, 1)
        self.conv3 = torch.nn.Conv2d(4, 4, 1)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)
        self.fc2 = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        r = torch.relu(x)                      # input: not owned, never written
        y = self.conv(r)
        a = torch.relu(y)                      # y is read again below: not in place
        b = self.conv2(y) + a                  # conv2 sees y's negative values; the add writes into conv2's output
        d = torch.relu(torch.flatten(b, 1))    # a view of b, which conv3 still reads: not in place
        c = torch.nn.functional.relu6(self.conv3(b))          # clamp, in place
        f = torch.relu(torch.flatten(c, 1))    # a view of c, its last reader: in place
        e = self.fc(d) + self.fc2(f)
        return torch.relu(e + torch.relu(e))   # relu(e): e read again (by the add): not in place; output a relu


def test_in_place_elementwise_ops_give_the_same_bits_and_leave_the_input_alone():
    torch.manual_seed(1)
    model = InPlaceCases().eval()
    graph = lower_module(model, torch.randn(2, 3, 6, 6), "inplace")
    x = np.random.default_rng(2).standard_normal((3, 3, 6, 6)).astype(np.float32)
    before = x.copy()
    kept = execute_float(graph, x, dtype=np.float32, return_all=True)  # every tensor kept: nothing in place
    streamed = execute_float(graph, x, dtype=np.float32)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(streamed, kept[graph.output])
    with torch.no_grad():
        np.testing.assert_allclose(streamed, model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    for dtype in (np.float32, np.float64):   # float64 makes a copy of the input, float32 uses it as is
        np.testing.assert_array_equal(execute_float(graph, x, dtype=dtype),
                                      execute_float(graph, x, dtype=dtype, return_all=True)[graph.output])
    np.testing.assert_array_equal(x, before)


def test_float32_pass_convolves_channels_last_and_returns_c_order(monkeypatch):
    """float32 convolutions get their input channels_last (oneDNN's layout: no reorder per call), float64 ones
    NCHW; the float32 outputs are NCHW's to float32 rounding, and every array returned is in C order."""
    from tersim.frontend import float_exec

    torch.manual_seed(0)
    graph = lower_module(SelfAdd(), torch.randn(2, 3, 6, 6), "selfadd")
    x = np.random.default_rng(1).standard_normal((3, 3, 6, 6)).astype(np.float32)
    conv, seen = float_exec._conv2d, []

    def spy(node, xs, p):   # what F.conv2d is given
        seen.append(xs[0].is_contiguous(memory_format=torch.channels_last) and not xs[0].is_contiguous())
        return conv(node, xs, p)

    monkeypatch.setattr(float_exec, "_conv2d", spy)      # called by _conv2d_channels_last
    y = execute_float(graph, x, dtype=np.float32)
    every = execute_float(graph, x, dtype=np.float32, return_all=True)
    assert seen == [True] * 4                             # two convolutions, two passes
    assert y.flags.c_contiguous and all(v.flags.c_contiguous for v in every.values())
    np.testing.assert_array_equal(y, every[graph.output])
    seen.clear()
    monkeypatch.setitem(float_exec.OPS, "conv2d", spy)
    execute_float(graph, x, dtype=np.float64)
    monkeypatch.setitem(float_exec.FLOAT32_OPS, "conv2d", spy)   # the float32 pass with NCHW convolutions
    nchw = execute_float(graph, x, dtype=np.float32)
    assert seen == [False] * 4
    np.testing.assert_allclose(y, nchw, rtol=1e-5, atol=1e-6)
