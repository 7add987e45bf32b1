"""Channel budgets: what a set of kept channels costs in the compacted network, and how to
fill a parameter budget one channel at a time.

The budget of channel mode is counted in weights of the *physically compacted* network
(docs/method.md): keeping ``k`` of a group's channels keeps ``k`` rows of its producer and
``k`` input slices of every consumer, so a layer between two groups costs
``k_out · k_in · kernel`` weights. The cost is a product of two groups' counts, not a sum of
per-channel costs, so budgets are met greedily: channels are added one at a time while the
next one still fits, which lands within one channel's worth of parameters below the target.

With ``budget="macs"`` the same machinery counts multiply-accumulates per image instead: a
layer's weight costs its output positions (``H_out · W_out``, read from one forward pass at
the model's input size), so an early, high-resolution layer's channel is dearer than a late
one's — what a user who prunes channels for speed pays for.

Everything here works on host integers: a network has a few thousand channels at most, and
the counts decide shapes, which the host needs anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import get_args

from torch import nn

from dnr.config import ChannelBudget
from dnr.models.channels import ChannelGroup, channel_groups
from dnr.sparsity.layers import output_positions, prunable_parameters
from dnr.statedict import canonical_name

__all__ = ["BUDGETS", "ChannelLayout", "LayerCost"]

#: what a channel-mode budget counts: the compacted network's weights, or its MACs per image
BUDGETS: tuple[str, ...] = get_args(ChannelBudget)


@dataclass(frozen=True)
class LayerCost:
    """How one prunable weight's size depends on the kept channels.

    ``out_group`` / ``in_group``: index of the group that sets its output / input channels
    (``None``: that side keeps its full width); ``unit``: weights per (output, input
    channel) pair — the kernel size, or a Linear consumer's spatial positions per channel.
    """

    name: str
    shape: tuple[int, ...]
    out_group: int | None
    in_group: int | None
    out_full: int
    in_full: int
    unit: int
    #: what one of its weights costs in the budget: 1 (a weights budget), or its output
    #: positions per image (a MACs budget: a conv's weight is used at every position)
    per_weight: int = 1

    def size(self, counts: Sequence[int]) -> int:
        """Its weights when compacted to ``counts`` channels per group."""
        out = counts[self.out_group] if self.out_group is not None else self.out_full
        inp = counts[self.in_group] if self.in_group is not None else self.in_full
        return out * inp * self.unit

    def cost(self, counts: Sequence[int]) -> int:
        """What it costs in the budget's unit, compacted to ``counts``."""
        return self.size(counts) * self.per_weight


class ChannelLayout:
    """The channel groups of a model and the prunable weights whose size they set.

    ``exclude`` (fnmatch patterns, as for irregular mode) keeps weights dense and out of N;
    a group whose producer is excluded is not prunable. ``ValueError`` for a model that
    declares no groups or whose declared groups do not fit its modules.
    """

    def __init__(
        self, model: nn.Module, exclude: Iterable[str] = (), budget: str = "weights"
    ) -> None:
        if budget not in BUDGETS:
            raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
        prunable = prunable_parameters(model, exclude)
        if not prunable:
            raise ValueError("the model has no prunable Conv2d/Linear weights")
        modules = {canonical_name(n): m for n, m in model.named_modules()}
        self.groups: list[ChannelGroup] = [
            g for g in channel_groups(model) if f"{g.producer}.weight" in prunable
        ]
        if not self.groups:
            raise ValueError("no channel group is left to prune (check sparsity.exclude)")
        self.sizes: list[int] = [self._check_group(g, modules) for g in self.groups]
        for role in ("producer", "norm", "consumers"):  # e.g. a consumer read by two groups
            named = [
                m
                for g in self.groups
                for m in ((getattr(g, role),) if role != "consumers" else g.consumers)
            ]
            repeated = sorted({m for m in named if named.count(m) > 1})
            if repeated:
                raise ValueError(f"channel groups share {role} {repeated}")
        out_of = {f"{g.producer}.weight": i for i, g in enumerate(self.groups)}
        in_of = {f"{c}.weight": i for i, g in enumerate(self.groups) for c in g.consumers}
        #: the budget's unit: "weights", or "macs" (multiply-accumulates per image)
        self.budget = budget
        per_weight: dict[str, int] = {}
        if budget == "macs":  # one forward pass at the model's input size
            size = int(getattr(model, "arch_config", {}).get("input_size", 32))
            per_weight = {f"{m}.weight": n for m, n in output_positions(model, size).items()}
        self.layers: list[LayerCost] = []
        for name, p in prunable.items():
            out_g, in_g = out_of.get(name), in_of.get(name)
            out_full = p.shape[0]
            in_full = self.sizes[in_g] if in_g is not None else (p.shape[1] if p.dim() > 1 else 1)
            self.layers.append(
                LayerCost(
                    name,
                    tuple(p.shape),
                    out_g,
                    in_g,
                    out_full,
                    in_full,
                    p.numel() // (out_full * in_full),
                    per_weight.get(name, 1),
                )
            )
        self.num_prunable = sum(math.prod(layer.shape) for layer in self.layers)
        #: the whole network's cost in the budget's unit (num_prunable for weights)
        self.total_cost = self.cost(self.sizes)
        self._touching: list[list[LayerCost]] = [
            [layer for layer in self.layers if i in (layer.out_group, layer.in_group)]
            for i in range(len(self.groups))
        ]

    @staticmethod
    def _check_group(group: ChannelGroup, modules: dict[str, nn.Module]) -> int:
        producer, norm = modules.get(group.producer), modules.get(group.norm)
        if not isinstance(producer, nn.Conv2d) or producer.groups != 1:
            raise ValueError(f"channel group {group.producer}: not a plain Conv2d")
        size = producer.out_channels
        if (
            not isinstance(norm, nn.modules.batchnorm._BatchNorm)
            or norm.num_features != size
            or not norm.affine
        ):
            raise ValueError(f"channel group {group.producer}: {group.norm} is not its affine BN")
        for name in group.consumers:
            consumer = modules.get(name)
            fits = (  # a conv reads the channels; a Linear may read positions per channel
                isinstance(consumer, nn.Conv2d)
                and consumer.groups == 1
                and consumer.in_channels == size
            ) or (isinstance(consumer, nn.Linear) and consumer.in_features % size == 0)
            if not fits:
                raise ValueError(f"channel group {group.producer}: {name} cannot consume it")
        return size

    def producer(self, group: int) -> LayerCost:
        """The layer whose output channels ``group`` is."""
        return next(layer for layer in self.layers if layer.out_group == group)

    @property
    def names(self) -> list[str]:
        """Group names: their producers' module names."""
        return [g.producer for g in self.groups]

    def params(self, counts: Sequence[int]) -> int:
        """Prunable weights of the network compacted to ``counts`` channels per group."""
        return sum(layer.size(counts) for layer in self.layers)

    def target(self, density: float) -> int:
        """The budget at ``density``: that share of the dense network's cost."""
        return round(float(density) * self.total_cost)

    def cost(self, counts: Sequence[int]) -> int:
        """The compacted network's cost in the budget's unit (weights, or MACs per image)."""
        return sum(layer.cost(counts) for layer in self.layers)

    def marginal(self, counts: Sequence[int], group: int) -> int:
        """What one more channel of ``group`` costs at ``counts``, in the budget's unit."""
        grown = list(counts)
        grown[group] += 1
        return sum(layer.cost(grown) - layer.cost(counts) for layer in self._touching[group])

    def minimum(self) -> int:
        """The cost of the narrowest network: one channel per group."""
        return self.cost([1] * len(self.groups))

    def grow(
        self,
        counts: Sequence[int],
        limits: Sequence[int],
        target: int,
        priority: Callable[[int, list[int], list[int]], float],
    ) -> list[int]:
        """Add channels one at a time, while the next one fits under ``target`` (in the
        budget's unit).

        Each channel goes to the group with the highest ``priority(g, counts, spent)``
        among those below ``limits[g]`` whose next channel fits (ties → lower index);
        ``spent[g]`` is the cost added to group ``g`` so far. Stops when no channel
        fits, so the result is within one channel's worth below ``target`` (or at the
        limits).
        """
        counts, spent = list(counts), [0] * len(counts)
        remaining = target - self.cost(counts)
        while True:
            best, best_key, best_cost = -1, -math.inf, 0
            for g in range(len(counts)):
                if counts[g] >= limits[g]:
                    continue
                cost = self.marginal(counts, g)
                if cost > remaining:
                    continue
                key = priority(g, counts, spent)
                if key > best_key:
                    best, best_key, best_cost = g, key, cost
            if best < 0:
                return counts
            counts[best] += 1
            spent[best] += best_cost
            remaining -= best_cost

    def uniform_counts(self, target: int) -> list[int]:
        """Counts keeping (nearly) the same fraction of every group, within one channel of
        ``target`` (in the budget's unit). ``ValueError`` if one channel per group already
        exceeds it."""
        if self.minimum() > target:
            raise ValueError(
                f"one channel per group already needs {self.minimum()} {self.budget}, more than "
                f"the budget of {target} ({target / self.total_cost:.4g} of {self.total_cost}); "
                "raise sparsity.density"
            )
        return self.grow(
            [1] * len(self.groups),
            self.sizes,
            target,
            lambda g, counts, spent: -counts[g] / self.sizes[g],  # emptiest group first
        )
