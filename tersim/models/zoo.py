"""Model zoo: torchvision-compatible ImageNet architectures, defined here (no torchvision on this machine).

Each architecture matches torchvision's layer shapes, module names and therefore state_dict keys
exactly (a torchvision state_dict loads with strict=True), but is randomly initialised with a fixed
seed: the zoo serves timing and MAC studies of realistic networks, never accuracy, and no weights
are ever downloaded.

Published figures (`ZooEntry.published_macs` / `published_params`) are torchvision's own: the
`num_params` and `_ops` fields of each model's weights metadata (the docs table shows `_ops`,
rounded to 2 decimals, as "GFLOPS"). Despite that column name they are multiply-accumulates (MACs),
not FLOPs, of the conv and linear layers *including* the FC classifier, for one 3x224x224 image;
BN, ReLU, pooling and the residual adds are not counted. `count_macs` uses the same convention and
reproduces every figure to <= 0.08% (params exactly); see `tests/test_zoo.py`:

    model            counted MACs     torchvision _ops   counted = published params
    alexnet             714,188,480      0.714 G            61,100,840
    vgg11             7,609,090,048      7.609 G           132,863,336
    vgg11_bn          7,609,090,048      7.609 G           132,868,840
    vgg13            11,308,466,176     11.308 G           133,047,848
    vgg13_bn         11,308,466,176     11.308 G           133,053,736
    vgg16            15,470,264,320     15.47  G           138,357,544
    vgg19            19,632,062,464     19.632 G           143,667,240
    vgg19_bn         19,632,062,464     19.632 G           143,678,248
    resnet18          1,814,073,344      1.814 G            11,689,512
    resnet34          3,663,761,408      3.664 G            21,797,672
    resnet50          4,089,184,256      4.089 G            25,557,032
    resnet101         7,801,405,440      7.801 G            44,549,160
    resnet152        11,513,626,624     11.514 G            60,192,808
    wide_resnet50_2  11,398,021,120     11.398 G            68,883,240
    resnext50_32x4d   4,230,479,872      4.23  G            25,028,904
    squeezenet1_1       349,151,936      0.349 G             1,235,496
    mobilenet_v2        300,774,272      0.301 G             3,504,872

(The docs table rounds `_ops` to 2 decimals, e.g. resnet152 "11.51", vgg19 "19.63", squeezenet1_1 "0.35";
`_ops` itself has 3. Params are exact integers.) MobileNetV3 is absent: hardswish and squeeze-excitation need
multiply/divide/broadcast ops the integer IR does not have.

Why "FC included": without its three FC layers (58.6 M MACs) AlexNet would count 0.656 G, 8% below
0.714; VGG16 without its 123.6 M FC MACs would be 15.347 G, not 15.47. Nor are they true FLOPs
(2 per MAC): those would be twice every figure.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from tersim.errors import ModelLoadError
from tersim.files import write_bytes_atomic

# --------------------------------------------------------------------------------------------
# Initialisation helpers (torchvision's schemes, so activations have realistic magnitudes)
# --------------------------------------------------------------------------------------------


def _init_conv_bn_linear(model: nn.Module, linear_std: float | None) -> None:
    """torchvision's init: Kaiming (fan_out) convs, BN to identity, Linear N(0, std) or default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# AlexNet (torchvision's single-GPU variant: 64 first-layer channels, adaptive 6x6 pool)
# --------------------------------------------------------------------------------------------


class AlexNet(nn.Module):
    """torchvision.models.AlexNet: conv layers at features.{0,3,6,8,10}, FCs at classifier.{1,4,6}."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------------------------
# VGG16 (configuration "D", no batch norm)
# --------------------------------------------------------------------------------------------

# torchvision's configurations: "A" = vgg11, "B" = vgg13, "D" = vgg16, "E" = vgg19 (ints: 3x3 conv widths, M: max pool)
_VGG_CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
_VGG16_CFG = _VGG_CFGS["D"]


class VGG(nn.Module):
    """torchvision.models.VGG: conv/ReLU/maxpool `features`, 7x7 adaptive pool, FCs at classifier.{0,3,6}."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _vgg_features(cfg: list[int | str], batch_norm: bool = False) -> nn.Sequential:
    """Build `features` so indices match torchvision's (each conv is followed by [BN and] one ReLU)."""
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(v, int)
            layers.append(nn.Conv2d(cin, v, kernel_size=3, padding=1))
            layers += [nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if batch_norm else [nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------
# ResNet (v1.5: the stride of a bottleneck block sits on its 3x3 conv, as in torchvision)
# --------------------------------------------------------------------------------------------


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN with a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, grouped for ResNeXt), 1x1 expand x4, each with BN, plus a shortcut
    (ResNet-50/101/152; wide and ResNeXt variants through torchvision's `groups` / `base_width`)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.ResNet: conv1/bn1/relu/maxpool stem, layer1..layer4, avgpool, fc."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 num_classes: int = 1000, groups: int = 1, width_per_group: int = 64) -> None:
        super().__init__()
        self.inplanes = 64
        self.groups, self.base_width = groups, width_per_group
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _init_conv_bn_linear(self, linear_std=None)  # torchvision keeps nn.Linear's default init

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# --------------------------------------------------------------------------------------------
# MobileNetV2 (ReLU6 kept as in torchvision; the frontend lowers it as a clamp/hardtanh)
# --------------------------------------------------------------------------------------------


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding (a no-op at width 1.0, kept so the channel table reads as theirs)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn_relu6(cin: int, cout: int, kernel_size: int = 3, stride: int = 1,
                   groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation (a Sequential: .0 conv, .1 BN, .2 ReLU6)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (if t != 1), 3x3 depthwise, 1x1 linear projection; residual when shapes agree."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        self.stride = stride
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(inp, hidden, kernel_size=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.MobileNetV2 at width 1.0: features.0..18, classifier = (Dropout, Linear)."""

    # expansion t, output channels c, repeats n, first stride s (torchvision's table)
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        cin = _make_divisible(32)
        self.last_channel = _make_divisible(1280)
        features: list[nn.Module] = [_conv_bn_relu6(3, cin, stride=2)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, expand_ratio=t))
                cin = cout
        features.append(_conv_bn_relu6(cin, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        _init_conv_bn_linear(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------------------------
# SqueezeNet 1.1 (Fire modules: channel concat of 1x1 and 3x3 expands; ceil-mode max pools)
# --------------------------------------------------------------------------------------------


class Fire(nn.Module):
    """torchvision's Fire: squeeze 1x1 conv, then 1x1 and 3x3 expand convs concatenated on channels."""

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """torchvision.models.SqueezeNet version 1.1: features.{0,3..12}, classifier.1 = final 1x1 conv."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(64, 16, 64, 64),
            Fire(128, 16, 64, 64),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(128, 32, 128, 128),
            Fire(256, 32, 128, 128),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256),
            Fire(512, 64, 256, 256),
        )
        final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), final_conv, nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


# MobileNetV3 is not in the zoo: its hardswish and squeeze-excitation (hardsigmoid gate, broadcast multiply)
# lower to mul/div/broadcast ops that the integer IR and the accelerator datapath do not have.


# --------------------------------------------------------------------------------------------
# Factories and the registry
# --------------------------------------------------------------------------------------------


def alexnet(seed: int = 0) -> AlexNet:
    torch.manual_seed(seed)
    return AlexNet()  # torchvision keeps PyTorch's default init for AlexNet


def _vgg(cfg: str, batch_norm: bool, seed: int) -> VGG:
    torch.manual_seed(seed)
    model = VGG(_vgg_features(_VGG_CFGS[cfg], batch_norm))
    _init_conv_bn_linear(model, linear_std=0.01)
    return model


def vgg11(seed: int = 0) -> VGG:
    return _vgg("A", False, seed)


def vgg11_bn(seed: int = 0) -> VGG:
    return _vgg("A", True, seed)


def vgg13(seed: int = 0) -> VGG:
    return _vgg("B", False, seed)


def vgg13_bn(seed: int = 0) -> VGG:
    return _vgg("B", True, seed)


def vgg16(seed: int = 0) -> VGG:
    return _vgg("D", False, seed)


def vgg19(seed: int = 0) -> VGG:
    return _vgg("E", False, seed)


def vgg19_bn(seed: int = 0) -> VGG:
    return _vgg("E", True, seed)


def resnet18(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(BasicBlock, [2, 2, 2, 2])


def resnet34(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(BasicBlock, [3, 4, 6, 3])


def resnet50(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(Bottleneck, [3, 4, 6, 3])


def resnet101(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(Bottleneck, [3, 4, 23, 3])


def resnet152(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(Bottleneck, [3, 8, 36, 3])


def wide_resnet50_2(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=128)


def resnext50_32x4d(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4)


def squeezenet1_1(seed: int = 0) -> SqueezeNet:
    torch.manual_seed(seed)
    return SqueezeNet()


def mobilenet_v2(seed: int = 0) -> MobileNetV2:
    torch.manual_seed(seed)
    return MobileNetV2()


_TV_DOCS = ("torchvision.models <Model>_Weights.IMAGENET1K_V1.meta: num_params, _ops "
            "(docs column 'GFLOPS'; really conv+linear GMACs incl. FC, 1x3x224x224)")


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: its factory (seed -> nn.Module) and published figures to cross-check our counts."""

    factory: Callable[[int], nn.Module]
    input_shape: tuple[int, int, int] = (3, 224, 224)
    published_macs: float = 0.0   # multiply-accumulates per image, conv + linear (incl. FC head)
    published_params: int = 0    # trainable parameters (BN running stats excluded)
    source: str = _TV_DOCS


ZOO: dict[str, ZooEntry] = {
    "alexnet": ZooEntry(alexnet, published_macs=0.714e9, published_params=61_100_840),
    "vgg16": ZooEntry(vgg16, published_macs=15.47e9, published_params=138_357_544),
    "resnet18": ZooEntry(resnet18, published_macs=1.814e9, published_params=11_689_512),
    "resnet34": ZooEntry(resnet34, published_macs=3.664e9, published_params=21_797_672),
    "resnet50": ZooEntry(resnet50, published_macs=4.089e9, published_params=25_557_032),
    "resnet101": ZooEntry(resnet101, published_macs=7.801e9, published_params=44_549_160),
    "mobilenet_v2": ZooEntry(mobilenet_v2, published_macs=0.301e9, published_params=3_504_872),
    "resnet152": ZooEntry(resnet152, published_macs=11.514e9, published_params=60_192_808),
    "wide_resnet50_2": ZooEntry(wide_resnet50_2, published_macs=11.398e9, published_params=68_883_240),
    "resnext50_32x4d": ZooEntry(resnext50_32x4d, published_macs=4.23e9, published_params=25_028_904),
    "vgg11": ZooEntry(vgg11, published_macs=7.609e9, published_params=132_863_336),
    "vgg11_bn": ZooEntry(vgg11_bn, published_macs=7.609e9, published_params=132_868_840),
    "vgg13": ZooEntry(vgg13, published_macs=11.308e9, published_params=133_047_848),
    "vgg13_bn": ZooEntry(vgg13_bn, published_macs=11.308e9, published_params=133_053_736),
    "vgg19": ZooEntry(vgg19, published_macs=19.632e9, published_params=143_667_240),
    "vgg19_bn": ZooEntry(vgg19_bn, published_macs=19.632e9, published_params=143_678_248),
    "squeezenet1_1": ZooEntry(squeezenet1_1, published_macs=0.349e9, published_params=1_235_496),
}


def _entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise ModelLoadError(f"unknown zoo model '{name}'; known: {', '.join(sorted(ZOO))}") from None


def build(name: str, seed: int = 0) -> nn.Module:
    """The named model, randomly initialised from `seed` (same seed -> same weights), in eval mode.

    Call it under `with torch.device("meta"):` to get a weightless model for instant counting.
    """
    return _entry(name).factory(seed).eval()


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Conv + linear multiply-accumulates for ONE sample of `input_shape` (C, H, W), no batch dim.

    Runs the forward on the meta device (shapes only, no arithmetic, no copy of the weights), so
    even VGG16 is counted instantly; `model` itself is left untouched. A conv output element costs
    (in_channels / groups) * kh * kw MACs, which counts grouped and depthwise convs correctly;
    a linear output element costs in_features MACs. Biases, BN, activations and pooling are free.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    # Swap every parameter and buffer for a meta tensor of the same shape for this call only.
    meta_state = {k: torch.empty_like(v, device="meta")
                  for k, v in [*model.named_parameters(), *model.named_buffers()]}
    x = torch.empty((1, *input_shape), device="meta")
    try:
        with torch.no_grad():
            torch.func.functional_call(model, meta_state, (x,))
    finally:
        for h in handles:
            h.remove()
    return total


def count_params(model: nn.Module) -> int:
    """Number of parameters (the published convention: BN running mean/var buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def export(name: str, path: str | os.PathLike[str], batch: int = 1, seed: int = 0,
           input_shape: tuple[int, ...] | None = None) -> Path:
    """Write build(name, seed) as a torch.export archive for a static (batch, *input_shape) input.

    `input_shape` (C, H, W) defaults to the zoo entry's (3, 224, 224); a smaller image exports and
    simulates faster (the heads are adaptive pools; the ResNets, VGG and MobileNetV2 take 32x32, AlexNet 64x64).

    Written to a temporary file beside `path` and renamed, so a crash never leaves a truncated
    archive that a later run would try to load.
    """
    entry = _entry(name)
    model = build(name, seed)
    example = torch.randn(batch, *(input_shape or entry.input_shape))
    program = torch.export.export(model, (example,))
    return write_bytes_atomic(path, lambda f: torch.export.save(program, f))
    return path


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------


def zoo_table() -> "pd.DataFrame":
    """Every architecture with its counted MACs and parameters (meta-device models: instant, no weights)."""
    import pandas as pd

    rows = []
    for name, entry in ZOO.items():
        with torch.device("meta"):
            model = build(name)
        rows.append({"model": name, "input_shape": "x".join(map(str, entry.input_shape)),
                     "macs": count_macs(model, entry.input_shape), "params": count_params(model)})
    return pd.DataFrame(rows)
