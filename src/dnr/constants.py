"""Per-channel image statistics in [0, 1] units, shared by data sources and models."""

from __future__ import annotations

#: CIFAR statistics (the values the released DNR code uses); the models' default.
CIFAR_MEAN: tuple[float, float, float] = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD: tuple[float, float, float] = (63.0 / 255, 62.1 / 255, 66.7 / 255)
TINY_IMAGENET_MEAN: tuple[float, float, float] = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD: tuple[float, float, float] = (0.2302, 0.2265, 0.2262)
