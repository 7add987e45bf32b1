"""Pure decisions behind channel-mode rewiring: which channels to prune and to regrow.

The channel counterpart of ``rewiring.py``: functions of host tensors, counts and a
:class:`~dnr.sparsity.channels.ChannelLayout` (what kept channels cost) — no modules, no
optimizer — so each step of a channel REWIRE is testable on its own.
:class:`~dnr.sparsity.channel_masking.ChannelMasking` gathers the inputs and applies the
result. Ties go to the lower channel index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from dnr.sparsity.channels import ChannelLayout
from dnr.sparsity.rewiring import regrowth_shares

__all__ = ["decide_channels", "grow_channels", "prune_channels"]


def prune_channels(masks: Sequence[Tensor], norms: Sequence[Tensor], rate: float) -> list[Tensor]:
    """Each group's kept channels less its ``min(ceil(p · k), k − 1)`` smallest-norm ones
    (no group empties)."""
    pruned = []
    for mask, norm in zip(masks, norms):
        count = int(mask.sum())
        r = min(math.ceil(float(rate) * count), count - 1)
        order = sorted(mask.nonzero().flatten().tolist(), key=lambda c: (float(norm[c]), c))
        kept = mask.clone()
        kept[order[:r]] = False
        pruned.append(kept)
    return pruned


def grow_channels(
    layout: ChannelLayout,
    old: Sequence[Tensor],
    pruned: Sequence[Tensor],
    momentum_norms: Sequence[Tensor],
    shares: Sequence[float],
    target: int,
    *,
    regrow_pruned: bool,
) -> list[Tensor]:
    """Regrow channels one at a time, each to the group furthest below its share of the
    freed budget, the channel with the largest momentum norm first, until the next would
    exceed ``target``. Without ``regrow_pruned``, channels dead before this rewiring come
    first; channels pruned in it return only if those cannot fill the budget."""
    after_prune = [int(m.sum()) for m in pruned]
    total = target - layout.cost(after_prune)

    def priority(g: int, _counts: list[int], spent: list[int]) -> float:
        return shares[g] * total - spent[g]

    counts = after_prune
    if not regrow_pruned:  # first only channels dead before this rewiring
        fresh_limits = [a + int((~m).sum()) for a, m in zip(after_prune, old)]
        counts = layout.grow(counts, fresh_limits, target, priority)
    # (then, or with regrow_pruned, any dead channel: the budget is always met)
    counts = layout.grow(counts, layout.sizes, target, priority)
    grown_masks = []
    for g, (was, kept, norm) in enumerate(zip(old, pruned, momentum_norms)):
        candidates = (~kept).nonzero().flatten().tolist()

        def rank(c: int, was: Tensor = was, norm: Tensor = norm) -> tuple[bool, float, int]:
            later = not regrow_pruned and bool(was[c])  # pruned now: after the fresh ones
            return (later, -float(norm[c]), c)

        grown = sorted(candidates, key=rank)[: counts[g] - after_prune[g]]
        mask = kept.clone()
        mask[grown] = True
        grown_masks.append(mask)
    return grown_masks


def decide_channels(
    layout: ChannelLayout,
    old: Sequence[Tensor],
    s_hat: Tensor,
    weight_norms: Sequence[Tensor],
    momentum_norms: Sequence[Tensor],
    rate: float,
    target: int,
    *,
    regrow_pruned: bool,
    redistribution: float,
) -> tuple[list[Tensor], list[Tensor]]:
    """One channel REWIRE(p)'s masks: ``(after pruning, after regrowth)`` per group.

    The regrowth shares are ``(1 − λ)·freed_g/Σfreed + λ·ŝ_g`` of the budget the pruning
    freed, ``freed_g`` what group g's pruned channels cost with every other group as it was.
    """
    pruned = prune_channels(old, weight_norms, rate)
    counts = [int(m.sum()) for m in old]
    freed = []
    for g, kept in enumerate(pruned):
        partial = list(counts)
        partial[g] = int(kept.sum())
        freed.append(layout.cost(counts) - layout.cost(partial))
    shares = regrowth_shares(
        s_hat.double(), torch.tensor(freed, dtype=torch.float64), redistribution
    ).tolist()
    grown = grow_channels(
        layout, old, pruned, momentum_norms, shares, target, regrow_pruned=regrow_pruned
    )
    return pruned, grown
