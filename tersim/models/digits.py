"""DigitsResNet: a small ResNet-style CNN for the 8x8 scikit-learn digits (the shipped example model).

Layout (input 1x8x8, 10 classes); only conv2d, batch norm, relu, add, adaptive avg pool, flatten
and linear are used, so every layer is supported by the tersim frontend:

    stem      conv3x3 1->16, BN, ReLU                                  8x8
    block1    basic block 16 ch (conv3x3+BN+ReLU, conv3x3+BN, +x, ReLU) 8x8
    block2    downsampling block 16->64, stride 2, 1x1 s2 conv+BN shortcut   4x4
    block3    basic block 64 ch                                          4x4
    head      AdaptiveAvgPool2d(1), flatten, Linear 64->10

block2's second conv and both convs of block3 have 64 input channels, so FGQ groups of N=64 fit
whole (one alpha multiply per 64 ternary adds: ~98.4% of multiplications eliminated).

The trained weights are shipped as `examples/digits_resnet.pt2` (made by `scripts/train_digits.py`).
"""
from __future__ import annotations

import torch
from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two conv3x3+BN; identity shortcut, or a 1x1 strided conv+BN when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """ResNet-style CNN for 1x8x8 inputs (normalised digits), 10 output logits."""

    input_shape = (1, 8, 8)
    num_classes = 10

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(1, 16), nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = BasicBlock(16, 16)
        self.block2 = BasicBlock(16, 64, stride=2)
        self.block3 = BasicBlock(64, 64)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.block1(x)
        x = self.block2(x)
        x = self.block3(x)
        return self.fc(self.flatten(self.pool(x)))


def digits_resnet(num_classes: int = 10) -> DigitsResNet:
    """Factory (usable as `--arch tersim.models.digits:digits_resnet`); weights are randomly initialised."""
    return DigitsResNet(num_classes=num_classes)


class DepthwiseSeparable(nn.Module):
    """MobileNet block: depthwise conv3x3 + BN + ReLU6, then pointwise conv1x1 + BN + ReLU6."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, kernel_size=3, stride=stride, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pw = nn.Conv2d(cin, cout, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn2(self.pw(self.act(self.bn1(self.dw(x))))))


class DigitsMobileNet(nn.Module):
    """MobileNet-style CNN for 1x8x8 inputs: a second shipped model, so that no conclusion rests on one network.

        stem   conv3x3 1->16, BN, ReLU6                                   8x8
        dws1   depthwise 3x3 16 + pointwise 16->32 (BN, ReLU6 each)       8x8
        dws2   depthwise 3x3 s2 32 + pointwise 32->64                     4x4
        dws3   depthwise 3x3 64 + pointwise 64->64                        4x4
        head   AdaptiveAvgPool2d(1), flatten, Linear 64->10

    Depthwise layers have one input channel per filter: in the channel group layout each of their weights has
    its own alpha (nothing eliminated), in the kernel layout N of the 9 taps share one.
    """

    input_shape = (1, 8, 8)
    num_classes = 10

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(1, 16), nn.BatchNorm2d(16), nn.ReLU6())
        self.dws1 = DepthwiseSeparable(16, 32)
        self.dws2 = DepthwiseSeparable(32, 64, stride=2)
        self.dws3 = DepthwiseSeparable(64, 64)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dws3(self.dws2(self.dws1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


def digits_mobilenet(num_classes: int = 10) -> DigitsMobileNet:
    """Factory (usable as `--arch tersim.models.digits:digits_mobilenet`); weights are randomly initialised."""
    return DigitsMobileNet(num_classes=num_classes)
