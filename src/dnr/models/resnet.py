"""CIFAR ResNet-18 (3x3 stride-1 stem, no max-pool), as in the released DNR code.

Channel mode prunes the *inner* channels of each block (conv1's outputs = conv2's inputs)
and keeps the residual stream (stem, every conv2's outputs, the shortcuts) at full width:
those channels are summed across blocks, so removing one would couple every block of a
stage into one group; the stream holds under 2 % of the weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from dnr.models.channels import ChannelGroup, check_channels
from dnr.models.layers import Normalize, scaled
from dnr.models.registry import register_model


class BasicBlock(nn.Module):
    """Two conv3x3+BN with an identity or 1x1 conv+BN projection shortcut.

    ``inner`` is conv1's output width (default ``planes``), the block's prunable channels.
    """

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, inner: int | None = None
    ) -> None:
        super().__init__()
        inner = planes if inner is None else inner
        self.conv1 = nn.Conv2d(in_planes, inner, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, planes, 3, stride=1, padding=1, bias=False)
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

    ``width`` multiplies every conv's channel count (rounded, at least 1); ``channels``
    (``{"layer<s>.<b>.conv1": count}``) sets single blocks' inner widths. The class count
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
        channels: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        inner = check_channels(
            channels,
            {
                f"layer{s + 1}.{b}.conv1": scaled(base, width)
                for s, (base, n) in enumerate(zip((64, 128, 256, 512), num_blocks))
                for b in range(n)
            },
        )
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        in_planes = stem
        stages: list[nn.Sequential] = []
        for stage, (base, n, stride) in enumerate(
            zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2))
        ):
            planes = scaled(base, width)
            blocks = []
            for b, s in enumerate([stride] + [1] * (n - 1)):
                blocks.append(
                    BasicBlock(in_planes, planes, s, inner[f"layer{stage + 1}.{b}.conv1"])
                )
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.classifier(self.pool(out).flatten(1))

    def channel_groups(self) -> list[ChannelGroup]:
        """Each block's inner channels (conv1 -> bn1 -> conv2); the residual stream is kept."""
        return [
            ChannelGroup(f"{name}.conv1", f"{name}.bn1", (f"{name}.conv2",))
            for name, module in self.named_modules()
            if isinstance(module, BasicBlock)
        ]


@register_model
def resnet18(
    *,
    num_classes: int,
    input_size: int = 32,
    width: float = 1.0,
    mean: Sequence[float],
    std: Sequence[float],
    channels: Mapping[str, int] | None = None,
) -> ResNet:
    """ResNet-18, CIFAR stem (3x3 stride 1, no max-pool), as in the released DNR code."""
    del input_size  # global pooling makes the architecture size-independent
    return ResNet(
        (2, 2, 2, 2), num_classes=num_classes, width=width, mean=mean, std=std, channels=channels
    )
