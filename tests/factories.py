"""Model factories a test names as ``model.name=factories:<callable>`` (tests/ is on the
path under pytest): foreign networks that run everywhere, without torchvision or timm."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class TinyNet(nn.Module):
    """conv-BN-ReLU-pool, conv-BN-ReLU, one residual block, pool, linear: two removable
    channel groups (conv1 -> conv2, block_a -> block_b) and two coupled by the residual add
    (conv2, block_b), which channel groups must leave alone."""

    def __init__(self, num_classes: int = 10, base: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, base, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(base, 2 * base, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * base)
        self.block_a = nn.Conv2d(2 * base, 2 * base, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(2 * base)
        self.block_b = nn.Conv2d(2 * base, 2 * base, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(2 * base)
        self.head = nn.Linear(2 * base, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(x + self.bn_b(self.block_b(F.relu(self.bn_a(self.block_a(x))))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def tiny_net(num_classes: int = 10, base: int = 8) -> TinyNet:
    """The factory form a user writes: ``model.name=factories:tiny_net``."""
    return TinyNet(num_classes, base)


def broken_net(num_classes: int = 10) -> nn.Module:
    """A factory whose call fails (a user bug): one line, exit 2."""
    raise RuntimeError("this factory is broken")


def not_a_net(num_classes: int = 10) -> str:
    """A factory that returns something other than a module."""
    return "not a module"
