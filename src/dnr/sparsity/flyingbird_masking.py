"""FlyingBird's mask mechanics on top of :class:`~dnr.sparsity.masking.Masking`.

FlyingBird's release (sparse_learning's ``truncate_weights`` / ``apply_mask``) updates the
masks at counts its schedule decides — not DNR's REWIRE — and masks the optimizer's
momentum after every step. Those two operations live here, written against Masking's
public interface; the masks, their state dict and every other behaviour are Masking's.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from dnr.sparsity.mask import first_moment, growth_signals
from dnr.sparsity.masking import Masking
from dnr.sparsity.rewiring import (
    RewireStats,
    channel_keepers,
    magnitude_prune,
    momentum_regrow,
    prune_counts,
)

__all__ = ["FlyingBirdMasking", "update_counts"]


def update_counts(
    counts: Mapping[str, int],
    sizes: Mapping[str, int],
    protected: Mapping[str, int],
    rate: float,
    *,
    prune_ratio: float | None = None,
    growth_ratio: float | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """Per layer, how many active weights one update prunes and how many it regrows.

    Each layer prunes ``ceil(p · nnz_l)`` (within its unprotected entries) and regrows as
    many; FlyingBird+'s extra prune (``prune_ratio`` given) removes another
    ``ceil(p · prune_ratio · nnz_l)`` that is not regrown, and its extra growth
    (``growth_ratio`` given) regrows ``int(r_l · (1 + growth_ratio))``. A dense layer is
    left alone (the release's ``magnitude_death``).
    """
    names = list(counts)
    nnz = torch.tensor([counts[n] for n in names], dtype=torch.long)
    r_all = prune_counts(nnz, rate).tolist()
    ratio = prune_ratio if prune_ratio is not None else 0.0  # unused without the extra prune
    e_all = prune_counts(nnz, min(1.0, rate * ratio)).tolist()
    prune: dict[str, int] = {}
    grow: dict[str, int] = {}
    for name, r, e in zip(names, r_all, e_all):
        active, numel = counts[name], sizes[name]
        if active >= numel:
            prune[name] = grow[name] = 0
            continue
        free = active - protected[name]
        r = min(r, free)
        e = min(e, free - r) if prune_ratio is not None else 0
        prune[name] = r + e
        # the release regrows what the plain prune removed, × (1 + growth_ratio) when
        # growing; the extra prune is not regrown (so the density falls by it)
        g = int(r * (1.0 + growth_ratio)) if growth_ratio is not None else r
        grow[name] = min(g, numel - active + r + e)
    return prune, grow


class FlyingBirdMasking(Masking):
    """Masking whose updates prune and grow caller-given counts (:meth:`move_`)."""

    @torch.no_grad()
    def mask_momentum_(self) -> None:
        """Zero the optimizer's first-moment entries of inactive weights, as sparse_learning's
        ``apply_mask`` does after every step (FlyingBird's release). Never called by DNR, whose
        growth signal is exactly that momentum. No host sync."""
        if self.optimizer is None:
            return
        self.follow_devices()
        for name, p in self.params.items():
            buf = first_moment(self.optimizer, p)  # none before the first step
            if buf is not None:
                buf.mul_(self.masks[name])

    def protected_counts(self) -> dict[str, int]:
        """Per layer, the active entries ``protect_channels`` exempts from pruning (each
        channel's largest-|w| one; 0 everywhere without it). One host sync."""
        if not self.settings.protect_channels:
            return {n: 0 for n in self.params}
        self.follow_devices()
        kept = [
            torch.count_nonzero(channel_keepers(p, self.masks[n])) for n, p in self.params.items()
        ]
        return dict(zip(self.params, torch.stack(kept).cpu().tolist()))

    def _check_counts(self, prune: Mapping[str, int], grow: Mapping[str, int]) -> None:
        """ValueError for counts out of range (one host sync: the protected counts)."""
        names = self.layer_names
        if set(prune) != set(names) or set(grow) != set(names):
            raise ValueError("move_ needs a prune and a grow count for every prunable layer")
        protected = self.protected_counts()
        nnz, sizes = self.layer_counts(), self.layer_sizes()
        for n in names:
            if not 0 <= prune[n] <= nnz[n] - protected[n]:
                raise ValueError(f"{n}: cannot prune {prune[n]} of {nnz[n]} active entries")
            room = sizes[n] - nnz[n] + prune[n]
            if not 0 <= grow[n] <= room:
                raise ValueError(f"{n}: cannot grow {grow[n]} into {room}")

    @torch.no_grad()
    def move_(
        self,
        prune: Mapping[str, int],
        grow: Mapping[str, int],
        *,
        generator: torch.Generator | None = None,
        prune_rate: float = 0.0,
    ) -> RewireStats:
        """Prune ``prune[l]`` smallest-|w| active entries of each layer, then activate
        ``grow[l]`` inactive ones (just-pruned positions included) by ``grow_by``; the
        counts are the caller's, so the total may change (``density_target`` follows it).

        FlyingBird's mask update (sparse_learning's ``truncate_weights``): a pruned weight is
        zeroed, a pruned-and-regrown one keeps its value, a newly grown one starts at 0.
        The momentum is not touched (see :meth:`mask_momentum_`). With ``protect_channels``
        each channel's largest-|w| active weight is exempt: ``prune[l]`` must leave it
        (:meth:`protected_counts`). ``prune_rate`` is only reported. ValueError for counts
        out of range; two host syncs (the range check and the exactness check).
        """
        self.follow_devices()
        self._check_counts(prune, grow)  # sync 1 of 2
        names, nnz = self.layer_names, self.layer_counts()
        params = [self.params[n] for n in names]
        signals = growth_signals(self.settings.grow_by, self.optimizer, params, generator)
        protect = self.settings.protect_channels
        new_masks: list[Tensor] = []
        for name, p, signal in zip(names, params, signals):
            mask = self.masks[name]
            keep = channel_keepers(p, mask) if protect else None
            kept = magnitude_prune(p, mask, prune[name], num_active=nnz[name], protect=keep)
            new_masks.append(momentum_regrow(signal, kept, grow[name]))
        counts = torch.stack([torch.count_nonzero(m) for m in new_masks]).cpu().tolist()  # 2/2
        expected = [nnz[n] - prune[n] + grow[n] for n in names]
        if counts != expected:
            raise RuntimeError(f"mask update miscounted: {counts} active, expected {expected}")
        for p, new in zip(params, new_masks):
            p.mul_(new)  # pruned -> 0; pruned-and-regrown keep their value; grown were 0
        self.commit_(dict(zip(names, new_masks)), counts)
        self.target_active = sum(counts)
        if self.target_active != round(self.density_target * self.num_prunable):
            self.density_target = self.target_active / self.num_prunable  # FlyingBird+ drifts
        return self.rewire_stats(prune_rate, dict(prune), dict(grow))
