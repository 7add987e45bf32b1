"""CIFAR ResNet-18 (3x3 stride-1 stem, no max-pool), as in the released DNR code."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from dnr.models.layers import Normalize, scaled
from dnr.models.registry import register_model


class BasicBlock(nn.Module):
    """Two conv3x3+BN with an identity or 1x1 conv+BN projection shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Empty Sequential = identity; keeps the released code's state_dict key layout.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Normalize -> stem -> 4 stages of BasicBlocks -> global avg pool -> Linear.

    ``width`` multiplies every conv's channel count (rounded, at least 1). The class count
    goes to the head (the released code's ResNet18 wired it wrongly and got 100 outputs).
    Submodules: ``normalize``, ``conv1``, ``bn1``, ``layer1``..``layer4``, ``classifier``.
    Works for 32x32 and 64x64 inputs alike (the pool is global).
    """

    def __init__(
        self,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        *,
        num_classes: int,
        width: float = 1.0,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        in_planes = stem
        stages: list[nn.Sequential] = []
        for base, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            planes = scaled(base, width)
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.classifier(self.pool(out).flatten(1))


@register_model
def resnet18(
    *,
    num_classes: int,
    input_size: int = 32,
    width: float = 1.0,
    mean: Sequence[float],
    std: Sequence[float],
) -> ResNet:
    """ResNet-18, CIFAR stem (3x3 stride 1, no max-pool), as in the released DNR code."""
    del input_size  # global pooling makes the architecture size-independent
    return ResNet((2, 2, 2, 2), num_classes=num_classes, width=width, mean=mean, std=std)
