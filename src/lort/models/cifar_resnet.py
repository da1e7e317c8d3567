"""ResNets for 32x32 inputs.

* ``resnet32``: He et al. (2016) CIFAR ResNet, 3 stages of 5 basic blocks with 16/32/64
  channels and parameter-free (zero-padding, "option A") shortcuts, 64-d features — the
  standard CIFAR-LT backbone (LDAM-DRW, weight balancing).
* ``resnet34_cifar``: ResNet-34 with a 3x3 stride-1 stem, no max-pool and 4x4 average
  pooling, 512-d features — the network of the public LOS/LORT code for CIFAR-100-LT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import LortModel, init_weights
from .registry import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad_channels = 0
        self.shortcut: nn.Module = nn.Identity()
        self.stride = stride
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.pad_channels = planes - in_planes
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def _identity(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_channels:
            x = x[:, :, :: self.stride, :: self.stride]
            half = self.pad_channels // 2
            return F.pad(x, (0, 0, 0, 0, half, self.pad_channels - half))
        return self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: batch norm's backward needs its input, not its output, so the ReLUs and the
        # residual add may overwrite it; a step then allocates (and page-faults) about half the
        # activation memory it otherwise would, the same numbers (benchmarks/stage1_throughput.py).
        out = torch.relu_(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu_(out.add_(self._identity(x)))


class CifarResNet(LortModel):
    def __init__(self, blocks: list[int], widths: list[int], num_classes: int, shortcut: str) -> None:
        super().__init__(widths[-1], num_classes)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers = []
        in_planes = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths, strict=True)):
            stride = 1 if i == 0 else 2
            for j in range(n):
                layers.append(BasicBlock(in_planes, w, stride if j == 0 else 1, shortcut))
                in_planes = w
        self.layers = nn.Sequential(*layers)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu_(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


@register_model("resnet32", input_size=32)
def resnet32(num_classes: int = 10) -> CifarResNet:
    return CifarResNet([5, 5, 5], [16, 32, 64], num_classes, shortcut="A")


@register_model("resnet34_cifar", input_size=32)
def resnet34_cifar(num_classes: int = 100) -> CifarResNet:
    return CifarResNet([3, 4, 6, 3], [64, 128, 256, 512], num_classes, shortcut="B")
