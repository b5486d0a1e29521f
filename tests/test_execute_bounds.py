"""tersim.engine.execute passes each conv a bound on |x| from the producer's clamp instead of scanning x: the
bound must hold for every tensor, and any bound >= max|x| must give the conv's exact result."""
import numpy as np
import pytest
import torch

from tersim.config import Accelerator
from tersim.engine.execute import _value_bound, execute, torch_reference_backend
from tersim.frontend import lower_module
from tersim.kernels import conv, simd
from tersim.kernels.reference_torch import conv2d_int as conv_ref
from tersim.models.digits import digits_resnet
from tersim.quantize.graph import quantize_graph


@pytest.mark.parametrize("act_bits", [8, 4])
def test_every_tensor_lies_within_its_bound(act_bits):
    torch.manual_seed(act_bits)
    model = digits_resnet().eval()
    x = torch.randn(3, 1, 8, 8) * 3
    hw = Accelerator().with_overrides({"group_scaling.group_size": 4, "pe.act_bits": act_bits})
    qgraph = quantize_graph(lower_module(model, x[:2], "digits"), [x.numpy()], hw)
    result = execute(qgraph, x.numpy())
    bounds = {}
    ops = set()
    for node in qgraph.graph.nodes:
        bounds[node.name] = _value_bound(qgraph.layers[node.name], [bounds[i] for i in node.inputs])
        assert np.abs(result.outputs[node.name]).max() <= bounds[node.name], node.name
        ops.add(node.op)
    assert {"conv2d", "add", "linear"} <= ops
    reference = execute(qgraph, x.numpy(), backend=torch_reference_backend())
    for name, y in result.outputs.items():
        np.testing.assert_array_equal(y, np.asarray(reference.outputs[name]), err_msg=name)


ARGS = dict(group_size=4, stride=(2, 1), padding=(1, 0), dilation=(1, 1), groups=1, saturate=True, shift=7,
            out_lo=-128, out_hi=127)


@pytest.mark.parametrize("vnni", [True, False] if simd.HAVE_VNNI else [False])
@pytest.mark.parametrize("acc_bits", [32, 22])
def test_any_bound_above_max_x_gives_the_exact_result(monkeypatch, vnni, acc_bits):
    """Bounds at max|x|, just above, at the int16 edge and far above (channels move to the exact path, and to
    int32 operands) all match the reference, overflow events included; read-only and writeable weights."""
    monkeypatch.setattr(simd, "HAVE_VNNI", vnni)
    rng = np.random.default_rng(acc_bits)
    x = rng.integers(-128, 128, (2, 24, 9, 6)).astype(np.int32)
    x[0, 0, 0, 0] = -128
    codes = rng.integers(-1, 2, (40, 24, 3, 3)).astype(np.int8)
    alpha = rng.integers(0, 4096, (40, 3, 3, 6)).astype(np.int32)
    bias = rng.integers(-2**16, 2**16, 40).astype(np.int64)
    ref, ev_ref = conv_ref(x, codes, alpha, bias, acc_bits=acc_bits, **ARGS)
    for frozen in (False, True):
        if frozen:
            for a in (codes, alpha, bias):
                a.flags.writeable = False
        for bound in (128, 129, 2**15 - 1, 2**15, 2**24):
            y, ev = conv.conv2d_int(x, codes, alpha, bias, acc_bits=acc_bits, x_max=bound, **ARGS)
            np.testing.assert_array_equal(y, np.asarray(ref), err_msg=f"bound {bound}")
            assert ev == int(ev_ref)
