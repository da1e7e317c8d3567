"""ResNet-50 and ResNeXt-50 (32x4d) for 224-pixel inputs (ImageNet-LT, iNaturalist 2018,
Places-LT), 2048-d features. Bottleneck blocks with the stride on the 3x3 convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import LortModel, init_weights
from .registry import register_model


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, groups: int, base_width: int) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * groups
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu_(self.bn1(self.conv1(x)))  # in place, as in the CIFAR blocks
        y = torch.relu_(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu_(y.add_(self.downsample(x)))


class ImageNetResNet(LortModel):
    def __init__(self, blocks: list[int], num_classes: int, groups: int = 1, base_width: int = 64) -> None:
        super().__init__(512 * Bottleneck.expansion, num_classes)
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        layers = []
        in_planes = 64
        for i, n in enumerate(blocks):
            planes = 64 * 2**i
            for j in range(n):
                layers.append(Bottleneck(in_planes, planes, 2 if (j == 0 and i > 0) else 1, groups, base_width))
                in_planes = planes * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        init_weights(self)
        for m in self.modules():  # zero-init the last BN of each block (Goyal et al., 2017)
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)


@register_model("resnet50", input_size=224)
def resnet50(num_classes: int = 1000) -> ImageNetResNet:
    return ImageNetResNet([3, 4, 6, 3], num_classes)


@register_model("resnext50_32x4d", input_size=224)
def resnext50_32x4d(num_classes: int = 1000) -> ImageNetResNet:
    return ImageNetResNet([3, 4, 6, 3], num_classes, groups=32, base_width=4)
