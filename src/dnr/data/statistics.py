"""Per-channel mean and standard deviation: given in the config, the dataset's own, or computed.

The model normalises its input with them (``dnr.models.layers.Normalize``), so they belong to
the dataset a model is trained on: CIFAR's values for a photo set of another kind shift every
first-layer activation. Computed statistics come from the training split only (after the
validation hold-out), so no validation or test pixel leaks into the model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import torch

from dnr.config import DataConfig
from dnr.data.source import DataError, DatasetMeta

__all__ = ["channel_stats", "resolve_stats"]

log = logging.getLogger(__name__)

_CHUNK = 4096  # images per step: bounds the copy of a large set


Triple = tuple[float, float, float]


def _triple(values: list[float] | torch.Tensor) -> Triple:
    v = [float(a) for a in values]
    return (v[0], v[1], v[2])


def channel_stats(x: torch.Tensor) -> tuple[Triple, Triple]:
    """Mean and (population) std per channel of uint8 (N, 3, H, W) images, in [0, 1] units.

    From each channel's histogram of the 256 pixel values, so sums are exact integers (a
    constant channel has a std of exactly 0) and a large set needs no wide copy of itself.
    """
    if len(x) == 0:
        raise DataError("cannot compute data.mean/data.std: the training split is empty")
    hist = torch.zeros(x.shape[1], 256, dtype=torch.int64)
    for lo in range(0, len(x), _CHUNK):
        chunk = x[lo : lo + _CHUNK].transpose(0, 1).reshape(x.shape[1], -1)
        for c in range(x.shape[1]):
            hist[c] += torch.bincount(chunk[c], minlength=256)
    values = torch.arange(256, dtype=torch.int64)
    n = x.numel() // x.shape[1]
    sums = (hist * values).sum(1).tolist()
    squares = (hist * values * values).sum(1).tolist()
    mean = [s / (255 * n) for s in sums]
    # n * sum(x^2) - sum(x)^2 = n^2 * variance, exact in Python integers
    std = [math.sqrt(n * q - s * s) / (255 * n) for s, q in zip(sums, squares)]
    return _triple(mean), _triple(std)


def _choose(
    given: list[float] | str | None, own: Triple, known: bool, computed: Triple | None
) -> Triple:
    """The configured values, else the computed ones where asked or needed, else the dataset's."""
    if isinstance(given, list):
        return _triple(given)
    if computed is not None and (given == "compute" or not known):
        return computed
    return own


def resolve_stats(meta: DatasetMeta, train_x: torch.Tensor, cfg: DataConfig) -> DatasetMeta:
    """``meta`` with the statistics the model will use: ``cfg.mean``/``cfg.std`` when given,
    computed from ``train_x`` for ``compute`` or when the dataset has none; else its own.

    With no training images (a test set alone, for ``dnr eval``) unknown statistics stay
    unknown: an evaluated model carries its own.
    """
    known = meta.has_stats
    wanted = [g for g in (cfg.mean, cfg.std) if g == "compute" or (g is None and not known)]
    computed = channel_stats(train_x) if wanted and len(train_x) else None
    mean = _choose(cfg.mean, meta.mean, known, computed[0] if computed else None)
    std = _choose(cfg.std, meta.std, known, computed[1] if computed else None)
    if computed is not None and std is computed[1] and min(std) <= 0:
        # A constant channel carries nothing to learn from: centre it, but do not divide by 0.
        log.warning(
            "%s: a colour channel of the training images is constant; its std is set to 1",
            meta.name,
        )
        std = (std[0] or 1.0, std[1] or 1.0, std[2] or 1.0)
    return replace(meta, mean=mean, std=std)
