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
