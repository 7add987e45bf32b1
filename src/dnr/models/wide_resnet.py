"""WideResNet-28-10 and WRN-34-10, the robust-training benchmarks' networks (RobustBench,
HYDRA, TRADES): pre-activation basic blocks, widen factor 10.

Module names follow those code bases (``conv1``, ``block<s>.layer.<b>.{bn1,conv1,bn2,conv2,
convShortcut}``, ``bn1``, ``fc``), so their checkpoints' keys map onto ours (plus our
``normalize``). Channel mode prunes each block's inner channels (conv1 -> bn2 -> conv2) and
the stem's (conv1 -> the first block's bn1 -> its conv1 and shortcut: that block projects,
so nothing sums the stem's raw output); every other block output is summed into the
residual stream, which stays full width as in ``resnet.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from dnr.models.channels import ChannelGroup, check_channels
from dnr.models.layers import Normalize, scaled
from dnr.models.registry import register_model

__all__ = ["PreActBlock", "WideResNet", "wrn28_10", "wrn34_10"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the input (or a 1x1 projection of it).

    A projecting block (``project``: the first of each stage) applies its shortcut to the
    activated input, as the reference WRN does; ``inner`` is conv1's output width.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, inner: int, project: bool) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, inner, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, planes, 3, stride=1, padding=1, bias=False)
        self.convShortcut: nn.Module | None = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False) if project else None
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        if self.convShortcut is not None:
            return out + self.convShortcut(activated)
        return out + x


class _Stage(nn.Module):
    """``layer``: the stage's blocks (a container, for the reference's key names)."""

    def __init__(self, blocks: list[PreActBlock]) -> None:
        super().__init__()
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layer(x)
        return out


class WideResNet(nn.Module):
    """Normalize -> conv3x3 stem -> 3 stages of pre-activation blocks -> BN-ReLU -> global
    avg pool -> Linear.

    ``depth`` = 6n + 4 (n blocks per stage); stage widths 16k, 32k, 64k for widen factor
    k, stem 16, all times ``width`` (rounded, at least 1). ``channels`` (``{"conv1": count,
    "block<s>.layer.<b>.conv1": count}``) sets single convs' widths, as a compact export
    does. The pool is global, so any input size works (32: the reference's 8x8 pool).
    """

    def __init__(
        self,
        depth: int,
        widen: int,
        *,
        num_classes: int,
        width: float = 1.0,
        mean: Sequence[float],
        std: Sequence[float],
        channels: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 (n >= 1), got {depth}")
        n = (depth - 4) // 6
        planes = [scaled(c, width) for c in (16 * widen, 32 * widen, 64 * widen)]
        defaults = {"conv1": scaled(16, width)}
        defaults.update(
            {f"block{s + 1}.layer.{b}.conv1": planes[s] for s in range(3) for b in range(n)}
        )
        counts = check_channels(channels, defaults)
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, counts["conv1"], 3, stride=1, padding=1, bias=False)
        in_planes = counts["conv1"]
        stages = []
        for s, stride in enumerate((1, 2, 2)):
            blocks = []
            for b in range(n):
                inner = counts[f"block{s + 1}.layer.{b}.conv1"]
                blocks.append(
                    PreActBlock(in_planes, planes[s], stride if b == 0 else 1, inner, b == 0)
                )
                in_planes = planes[s]
            stages.append(_Stage(blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        return self.fc(self.pool(out).flatten(1))

    def channel_groups(self) -> list[ChannelGroup]:
        """The stem's channels, then each block's inner channels; the stream is kept."""
        groups = [
            ChannelGroup(
                "conv1",
                "block1.layer.0.bn1",
                ("block1.layer.0.conv1", "block1.layer.0.convShortcut"),
            )
        ]
        groups += [
            ChannelGroup(f"{name}.conv1", f"{name}.bn2", (f"{name}.conv2",))
            for name, module in self.named_modules()
            if isinstance(module, PreActBlock)
        ]
        return groups


@register_model
def wrn28_10(
    *,
    num_classes: int,
    input_size: int = 32,
    width: float = 1.0,
    mean: Sequence[float],
    std: Sequence[float],
    channels: Mapping[str, int] | None = None,
) -> WideResNet:
    """WRN-28-10 (36.5 M parameters at width 1), RobustBench's standard CIFAR network."""
    del input_size  # global pooling makes the architecture size-independent
    return WideResNet(
        28, 10, num_classes=num_classes, width=width, mean=mean, std=std, channels=channels
    )


@register_model
def wrn34_10(
    *,
    num_classes: int,
    input_size: int = 32,
    width: float = 1.0,
    mean: Sequence[float],
    std: Sequence[float],
    channels: Mapping[str, int] | None = None,
) -> WideResNet:
    """WRN-34-10 (46.2 M parameters at width 1), the TRADES / HYDRA / MART network."""
    del input_size  # global pooling makes the architecture size-independent
    return WideResNet(
        34, 10, num_classes=num_classes, width=width, mean=mean, std=std, channels=channels
    )
