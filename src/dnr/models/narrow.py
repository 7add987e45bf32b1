"""Building a model narrower than its constructor does: its channel groups cut in place.

Built-in architectures take ``channels={producer: count}`` and build themselves narrower; a
foreign network's constructor knows no such argument. For those, :func:`narrow_channels`
cuts each named group of the built model down to its first ``count`` channels: rows of the
producer and its BatchNorm, input slices of every consumer. Values do not matter (a state
dict is loaded next: this is how a compact export is rebuilt from ``model.json``); shapes
and the modules' own size attributes do, and the modules keep their classes and settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch import Tensor, nn

from dnr.models.channels import channel_groups, check_channels

__all__ = ["narrow_channels"]


def _cut(module: nn.Module, name: str, dim: int, count: int) -> None:
    """Keep the first ``count`` entries of tensor ``name`` along ``dim`` (parameter or buffer)."""
    value = getattr(module, name, None)
    if not isinstance(value, Tensor):
        return
    cut = value.narrow(dim, 0, count).clone()
    if isinstance(value, nn.Parameter):
        setattr(module, name, nn.Parameter(cut, requires_grad=value.requires_grad))
    else:
        setattr(module, name, cut)


@torch.no_grad()
def narrow_channels(model: nn.Module, channels: Mapping[str, int]) -> nn.Module:
    """Cut ``model``'s channel groups to ``channels[producer]`` channels each, in place.

    ``ValueError`` for a name that is no group's producer, or a count that is not an
    integer in ``[1, the group's width]``. Returns ``model``.
    """
    groups = {g.producer: g for g in channel_groups(model)}
    modules = dict(model.named_modules())
    widths = {p: int(cast(nn.Conv2d, modules[p]).out_channels) for p in groups}
    counts = check_channels(channels, widths)
    for producer, count in counts.items():
        full = widths[producer]
        if count > full:
            raise ValueError(f"channels: {producer} has {full} channels, cannot keep {count}")
        if count == full:
            continue
        group = groups[producer]
        conv, norm = modules[producer], modules[group.norm]
        for name in ("weight", "bias"):
            _cut(conv, name, 0, count)
        conv.out_channels = count
        for name in ("weight", "bias", "running_mean", "running_var"):
            _cut(norm, name, 0, count)
        norm.num_features = count
        for consumer_name in group.consumers:
            consumer = modules[consumer_name]
            if isinstance(consumer, nn.Linear):
                per_channel = consumer.in_features // full  # positions per channel
                _cut(consumer, "weight", 1, count * per_channel)
                consumer.in_features = count * per_channel
            else:
                _cut(consumer, "weight", 1, count)
                consumer.in_channels = count
    return model
