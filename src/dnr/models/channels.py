"""Which output channels can be removed together: the one fact channel pruning needs from a model.

A *channel group* is a set of output channels that are produced by one conv, normalized by
one BatchNorm and read by one or more consumers (along their input dimension). Removing
channel ``c`` of a group removes row ``c`` of the producer, entry ``c`` of the BatchNorm and
input slice ``c`` of every consumer — and nothing else changes shape. Channels a residual
sum couples across blocks are not a group of this kind; models simply do not declare them
(ResNet keeps its residual stream at full width, see ``resnet.py``).

Models that support channel mode define ``channel_groups() -> list[ChannelGroup]`` and
accept ``channels={producer: count}`` to be built narrower (how a compact export is
rebuilt from ``model.json`` without pickled modules).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

__all__ = ["ChannelGroup", "channel_groups", "check_channels"]


@dataclass(frozen=True)
class ChannelGroup:
    """Module names (as in ``model.named_modules()``) of one removable set of channels."""

    producer: str  # Conv2d whose output channels these are (dim 0 of its weight)
    norm: str  # BatchNorm2d that follows it
    consumers: tuple[str, ...]  # Conv2d/Linear modules reading them (dim 1 of their weight)


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """The model's declared groups; ``ValueError`` if it declares none.

    A wrapper (DDP's ``.module``) is looked through: names are canonical, without prefix.
    """
    model = getattr(model, "module", model)
    declare = getattr(model, "channel_groups", None)
    if not callable(declare):
        name = getattr(model, "arch_config", {}).get("name", type(model).__name__)
        raise ValueError(f"model {name!r} does not declare channel groups (channel mode)")
    return list(declare())


def check_channels(
    channels: Mapping[str, int] | None, defaults: Mapping[str, int]
) -> dict[str, int]:
    """Per-producer channel counts: ``defaults`` overridden by ``channels`` (validated)."""
    out = dict(defaults)
    for name, count in (channels or {}).items():
        if name not in defaults:
            raise ValueError(
                f"channels: {name!r} is not a prunable conv of this model "
                f"(expected some of {sorted(defaults)})"
            )
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count:
            raise ValueError(f"channels: {name} must be a positive integer, got {count!r}")
        out[name] = count
    return out
