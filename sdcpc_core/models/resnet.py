"""ResNet-101 with dilation (output stride 8), torchvision parameter layout.

Layers 3 and 4 trade their stride for dilation 2 and 4, as in DeepLab and the Cityscapes/CamVid
protocol of the VSS peers. Parameter names are torchvision's, so a torchvision-format state dict
loads with only its ``fc`` classifier dropped.
"""
from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided/dilated) -> 1x1 residual block, expansion 4."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DilatedResNet(nn.Module):
    """ResNet encoder: ``(B, 3, H, W)`` -> four maps at strides 4, 8, 8, 8 (channels 256..2048)."""

    out_strides = (4, 8, 8, 8)

    def __init__(self, blocks: tuple[int, int, int, int] = (3, 4, 23, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._in_channels, self._dilation = 64, 1
        self.layer1 = self._make_layer(64, blocks[0], stride=1, dilate=False)
        self.layer2 = self._make_layer(128, blocks[1], stride=2, dilate=False)
        self.layer3 = self._make_layer(256, blocks[2], stride=2, dilate=True)
        self.layer4 = self._make_layer(512, blocks[3], stride=2, dilate=True)
        self.out_channels = (256, 512, 1024, 2048)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, width: int, count: int, stride: int, dilate: bool) -> nn.Sequential:
        """torchvision's rule: a dilated layer keeps stride 1, its first block uses the old dilation."""
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out_channels = width * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers = [Bottleneck(self._in_channels, width, stride, previous_dilation, downsample)]
        self._in_channels = out_channels
        layers += [Bottleneck(out_channels, width, dilation=self._dilation) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [c1, c2, c3, self.layer4(c3)]
