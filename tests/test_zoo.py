"""Model zoo: architectures match torchvision (names, shapes, published MACs/params) and run.

Counting uses models built on the meta device (no weight memory, no init cost), so even VGG16 and
ResNet-101 are checked in milliseconds; real forwards run only for the three cheap models.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tersim.errors import ModelLoadError
from tersim.models import zoo


def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return zoo.build(name)


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_params_and_macs_match_published(name: str) -> None:
    entry = zoo.ZOO[name]
    model = _meta(name)
    assert zoo.count_params(model) == entry.published_params
    macs = zoo.count_macs(model, entry.input_shape)
    assert abs(macs / entry.published_macs - 1) < 0.01, f"{name}: {macs:,} vs {entry.published_macs:,.0f}"


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "alexnet", "squeezenet1_1"])
def test_forward_gives_imagenet_logits(name: str) -> None:
    model = zoo.build(name, seed=0)
    assert not model.training
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


def test_seed_is_deterministic() -> None:
    a, b, c = zoo.build("mobilenet_v2", seed=1), zoo.build("mobilenet_v2", seed=1), zoo.build("mobilenet_v2", seed=2)
    wa, wb, wc = (m.state_dict()["features.0.0.weight"] for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ModelLoadError) as exc:
        zoo.build("resnet9000")
    for name in zoo.ZOO:
        assert name in str(exc.value)


# torchvision key -> shape for a few spot-checked parameters of each architecture.
TORCHVISION_KEYS = {
    "resnet50": {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),  # v1.5: stride on the 3x3
        "layer4.2.bn3.running_var": (2048,),
        "fc.weight": (1000, 2048),
    },
    "resnet18": {"layer2.0.downsample.1.weight": (128,), "layer4.1.conv2.weight": (512, 512, 3, 3),
                 "fc.bias": (1000,)},
    "mobilenet_v2": {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),  # depthwise
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.2.conv.3.bias": (24,),
        "features.18.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280),
    },
    "vgg16": {"features.0.weight": (64, 3, 3, 3), "features.28.weight": (512, 512, 3, 3),
              "classifier.0.weight": (4096, 25088), "classifier.6.weight": (1000, 4096)},
    "alexnet": {"features.0.weight": (64, 3, 11, 11), "features.10.weight": (256, 256, 3, 3),
                "classifier.1.weight": (4096, 9216), "classifier.6.weight": (1000, 4096)},
    "resnet152": {"layer2.7.conv3.weight": (512, 128, 1, 1), "layer3.35.conv3.weight": (1024, 256, 1, 1),
                  "fc.weight": (1000, 2048)},
    "wide_resnet50_2": {"layer1.0.conv2.weight": (128, 128, 3, 3), "layer4.0.conv1.weight": (1024, 1024, 1, 1),
                        "layer4.2.conv3.weight": (2048, 1024, 1, 1), "fc.weight": (1000, 2048)},
    "resnext50_32x4d": {"layer1.0.conv1.weight": (128, 64, 1, 1), "layer1.0.conv2.weight": (128, 4, 3, 3),
                        "layer4.0.conv2.weight": (1024, 32, 3, 3), "fc.weight": (1000, 2048)},
    "vgg11": {"features.0.weight": (64, 3, 3, 3), "features.18.weight": (512, 512, 3, 3),
              "classifier.6.bias": (1000,)},
    "vgg11_bn": {"features.1.running_mean": (64,), "features.25.weight": (512, 512, 3, 3),
                 "features.26.running_var": (512,), "classifier.0.weight": (4096, 25088)},
    "vgg13": {"features.2.weight": (64, 64, 3, 3), "features.22.weight": (512, 512, 3, 3)},
    "vgg13_bn": {"features.3.weight": (64, 64, 3, 3), "features.31.weight": (512, 512, 3, 3),
                 "features.32.weight": (512,)},
    "vgg19": {"features.16.weight": (256, 256, 3, 3), "features.34.weight": (512, 512, 3, 3)},
    "vgg19_bn": {"features.23.weight": (256, 256, 3, 3), "features.49.weight": (512, 512, 3, 3),
                 "features.50.running_mean": (512,)},
    "squeezenet1_1": {"features.0.weight": (64, 3, 3, 3), "features.3.squeeze.weight": (16, 64, 1, 1),
                      "features.3.expand3x3.weight": (64, 16, 3, 3), "features.12.expand1x1.weight": (256, 64, 1, 1),
                      "classifier.1.weight": (1000, 512, 1, 1)},
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_KEYS))
def test_state_dict_keys_follow_torchvision(name: str) -> None:
    state = _meta(name).state_dict()
    for key, shape in TORCHVISION_KEYS[name].items():
        assert key in state, f"{name}: missing {key}"
        assert tuple(state[key].shape) == shape, f"{name}.{key}: {tuple(state[key].shape)} != {shape}"


def test_count_macs_handles_groups_and_leaves_model_intact() -> None:
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8),   # depthwise: 8*5*5 outputs x 1*3*3 = 1800
        nn.Conv2d(8, 16, 1, groups=2),             # grouped:   16*5*5 outputs x 4*1*1 = 1600
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 10),                 # 10 outputs x 400 = 4000
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert zoo.count_macs(model, (8, 5, 5)) == 1800 + 1600 + 4000
    assert zoo.count_params(model) == (8 * 9 + 8) + (16 * 4 + 16) + (400 * 10 + 10)
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())


def test_export_writes_loadable_program(tmp_path) -> None:
    path = tmp_path / "sub" / "mobilenet_v2.pt2"
    zoo.export("mobilenet_v2", path)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["mobilenet_v2.pt2"]
    program = torch.export.load(path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), zoo.build("mobilenet_v2")(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelLoadError):
        zoo.export("nope", tmp_path / "nope.pt2")


def test_squeezenet_lowers_with_ceil_mode_pools_and_concat() -> None:
    from tersim.frontend import execute_float, lower_module

    model = zoo.build("squeezenet1_1")
    graph = lower_module(model, torch.randn(2, 3, 64, 64), "squeezenet1_1")
    ops = {n.op for n in graph.nodes}
    assert {"concat", "max_pool2d"} <= ops
    assert all(n.attrs["ceil_mode"] for n in graph.nodes if n.op == "max_pool2d")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(execute_float(graph, x.numpy()), expected, rtol=1e-4, atol=1e-5)


def test_zoo_command_lists_every_architecture(capsys) -> None:
    from tersim.cli import main

    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    for name, entry in zoo.ZOO.items():
        fields = next(l for l in out.splitlines() if l.split()[:1] == [name]).split()
        assert fields[1] == "3x224x224" and fields[3] == "G" and fields[5] == "M"
        assert abs(float(fields[2]) * 1e9 / entry.published_macs - 1) < 0.002, fields
        assert abs(float(fields[4]) * 1e6 - entry.published_params) <= 0.005e6, fields
