"""``Masking``: the one object that owns all sparsity state of a run (irregular mode).

Usage, in the spirit of a torch optimizer::

    masking = Masking(model, optimizer, density=0.05)       # random masks, weights zeroed
    for epoch in range(epochs):
        for x, y in loader:
            loss.backward(); optimizer.step()
            masking.apply_()                                 # re-zero masked weights
        if epoch < epochs - 1:
            stats = masking.rewire(0.2)                    # prune 20 %, regrow by momentum
    torch.save({"masking": masking.state_dict(), ...}, path)

Invariants it maintains (docs/method.md):

* exactly ``round(density · N)`` active weights over the prunable tensors, at every step;
* masked weights are exactly zero after every ``apply_()`` — weight decay and momentum can
  move them during ``optimizer.step()``, ``apply_()`` puts them back to zero;
* the optimizer's momentum buffers are never masked: their values at inactive positions are
  the growth signal for rewiring.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from dnr.registry import GRANULARITIES
from dnr.sparsity.budgets import layer_budgets, random_mask
from dnr.sparsity.layers import prunable_parameters
from dnr.sparsity.mask import (
    MaskSettings,
    growth_signals,
    momentum_buffer,
    saved_masks,
    settings_of,
)
from dnr.sparsity.rewiring import (
    RewireStats,
    channel_keepers,
    magnitude_prune,
    momentum_regrow,
    normalized_momentum,
    rewire_counts,
)

__all__ = ["Masking"]

if TYPE_CHECKING:
    from dnr.config import Config

_STATE_FORMAT = "dnr.masking/1"


@GRANULARITIES.register(name="weight")
class Masking:
    """Owns the masks of the prunable tensors and rewires them (DNR, irregular mode).

    Args:
        model: the network (may be wrapped in DDP; names are stored without ``module.``).
        optimizer: the optimizer stepping ``model``; rewiring reads its momentum (SGD's
            ``momentum_buffer``, Adam's ``exp_avg``). ``None`` for masks that never rewire.
        settings: a :class:`~dnr.sparsity.mask.MaskSettings` (what each field does:
            docs/method.md), or its fields as keyword ``options`` (``density=0.05``).
        generator: CPU generator for the initial random masks (reproducibility).
        initial_masks: start from these masks (name -> bool tensor, exactly the budget in
            total) instead of random ones, e.g. a magnitude mask of pretrained weights.

    Masking is the mechanism; *when* to rewire is the sparsity method's decision
    (``dnr.sparsity.dnr.DNR`` rewires, ``dnr.sparsity.static.Static`` never does).
    """

    granularity: ClassVar[str] = "weight"
    description: ClassVar[str] = (
        "single weights: irregular masks at an exact weight budget (the paper's)"
    )

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        settings: MaskSettings | None = None,
        *,
        generator: torch.Generator | None = None,
        initial_masks: Mapping[str, Tensor] | None = None,
        **options: Any,
    ) -> None:
        self.settings = settings_of(settings, options)
        self.model = model
        self.optimizer = optimizer
        self.params = prunable_parameters(model, list(self.settings.exclude))
        if not self.params:
            raise ValueError(
                "the model has no prunable Conv2d/Linear weights"
                + (f" left after exclude={list(self.settings.exclude)}" if self.exclude else "")
            )
        self._numel = {n: p.numel() for n, p in self.params.items()}
        self.density_target = self.settings.density
        self.target_active = round(self.density_target * self.num_prunable)
        if initial_masks is not None:  # e.g. a magnitude mask of pretrained weights
            masks = {"layer_names": list(initial_masks), "masks": dict(initial_masks)}
            self.load_state_dict({**self.state_dict(masks=False), **masks})
            return
        protect = self.settings.protect_channels
        budgets = layer_budgets(
            list(self._numel.values()),
            self.density_target,
            self.settings.init,
            shapes=[tuple(p.shape) for p in self.params.values()],
            min_counts=[p.shape[0] for p in self.params.values()] if protect else None,
        )
        self.masks: dict[str, Tensor] = {
            name: random_mask(tuple(p.shape), k, generator, device=p.device, cover_rows=protect)
            for (name, p), k in zip(self.params.items(), budgets)
        }
        # Host-side copy of the per-layer active counts. Masks only change in rewire() and
        # load_state_dict(), which refresh it, so density queries never touch the device.
        self._nnz: dict[str, int] = dict(zip(self.params, budgets))
        self.apply_()

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """Any valid ``cfg.sparsity`` runs in weight mode."""

    @classmethod
    def from_config(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        s: Any,
        generator: torch.Generator,
    ) -> Masking:
        """Built from ``cfg.sparsity`` (a :class:`~dnr.config.SparsityConfig`)."""
        return cls(model, optimizer, MaskSettings.from_config(s), generator=generator)

    def extra_stats(self) -> dict[str, Any]:
        """Nothing beyond the per-layer counts (channel mode adds its channels)."""
        return {}

    # ------------------------------------------------------------------ properties

    @property
    def exclude(self) -> list[str]:
        return list(self.settings.exclude)

    @property
    def layer_names(self) -> list[str]:
        return list(self.params)

    @property
    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self.params.items()}

    @property
    def num_prunable(self) -> int:
        """N: number of prunable weights (excluded tensors not counted)."""
        return sum(self._numel.values())

    @property
    def num_active(self) -> int:
        return sum(self._nnz.values())

    def density(self) -> float:
        """Global density over the prunable tensors (no device access)."""
        return self.num_active / self.num_prunable

    def layer_densities(self) -> dict[str, float]:
        return {n: self._nnz[n] / self._numel[n] for n in self.params}

    def layer_counts(self) -> dict[str, int]:
        """Active weights per layer (kept on the host: no device sync)."""
        return {n: self._nnz[n] for n in self.params}

    def layer_sizes(self) -> dict[str, int]:
        """Prunable weights per layer."""
        return dict(self._numel)

    def __repr__(self) -> str:
        return (
            f"Masking(density={self.density_target}, init={self.settings.init!r}, "
            f"layers={len(self.params)}, active={self.num_active}/{self.num_prunable})"
        )

    # ------------------------------------------------------------------ per-step masking

    def follow_devices(self) -> None:
        """Move each mask to its parameter's device if the model was moved (no sync)."""
        for name, p in self.params.items():
            if self.masks[name].device != p.device:
                self.masks[name] = self.masks[name].to(p.device)

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every masked weight. Call after each ``optimizer.step()``.

        One in-place multiply per tensor: no host sync, no branching on tensor values. The
        optimizer's momentum buffers are deliberately left dense.
        """
        self.follow_devices()
        for name, p in self.params.items():
            p.mul_(self.masks[name])

    def to(self, device: torch.device | str) -> Masking:
        """Move the masks to ``device`` (they also follow their weights in apply_/rewire)."""
        self.masks = {n: m.to(device) for n, m in self.masks.items()}
        return self

    # ------------------------------------------------------------------ rewiring

    def rewire_stats(
        self,
        prune_rate: float,
        lost: Mapping[str, int],
        regrown: Mapping[str, int],
        s_hat: list[float] | None = None,
    ) -> RewireStats:
        """What a mask change did, per layer (``s_hat``: the ŝ that drove it, if any)."""
        names = self.layer_names
        return RewireStats(
            prune_rate=float(prune_rate),
            total_active=self.num_active,
            density=self.density(),
            lost={n: int(lost[n]) for n in names},
            regrown={n: int(regrown[n]) for n in names},
            layer_density=self.layer_densities(),
            normalized_momentum={} if s_hat is None else dict(zip(names, s_hat)),
        )

    def _decide_counts(
        self, params: list[nn.Parameter], masks: list[Tensor], momenta: list[Tensor], rate: float
    ) -> tuple[list[int], list[int], list[Tensor | None], Tensor]:
        """REWIRE's counts (lost, regrown per layer), each channel's protected entry and ŝ;
        one host sync (ŝ with the protected counts)."""
        names = self.layer_names
        s_hat = normalized_momentum(momenta, masks)
        keepers: list[Tensor | None] = [None] * len(names)
        n_kept = torch.zeros_like(s_hat)
        if self.settings.protect_channels:
            kept_rows = [channel_keepers(p, m) for p, m in zip(params, masks)]
            n_kept = torch.stack([torch.count_nonzero(k) for k in kept_rows]).to(s_hat)
            keepers = list(kept_rows)
        s_hat, n_protected = torch.cat([s_hat, n_kept]).cpu().split(len(names))
        nnz = torch.tensor([self._nnz[n] for n in names], dtype=torch.long)
        numel = torch.tensor([self._numel[n] for n in names], dtype=torch.long)
        r, g = rewire_counts(
            s_hat,
            n_protected.to(torch.long),
            nnz,
            numel,
            rate,
            regrow_pruned=self.settings.regrow_pruned,
            redistribution=self.settings.redistribution,
        )
        return r.tolist(), g.tolist(), keepers, s_hat

    @torch.no_grad()
    def rewire(self, prune_rate: float, generator: torch.Generator | None = None) -> RewireStats:
        """One REWIRE(p) of docs/method.md; returns what it did.

        1. ŝ = normalized momentum per layer (mean |momentum| over active entries).
        2. Prune r_l = ceil(p · nnz_l) smallest-|w| active entries per layer; R = Σ r_l.
           With ``protect_channels`` each output channel's largest-|w| active weight is
           exempt (r_l is capped accordingly).
        3. g = redistribute(R, shares, capacity_l = numel_l − (nnz_l − r_l)) with shares
           (1 − λ)·r_l/R + λ·ŝ_l (λ = ``redistribution``).
        4. Regrow g_l inactive entries with the largest |momentum| per layer. A newly
           grown weight starts at 0; a pruned-and-regrown one keeps its value when
           ``keep_regrown_values``. Positions pruned in step 2 are candidates too unless
           ``regrow_pruned=False`` (then capacity_l = numel_l − nnz_l). With
           ``grow_momentum="zero"`` the momentum of newly grown weights is reset.

        ``generator`` draws the grown positions of ``grow_by="random"`` (else unused:
        momentum and gradient growth draw nothing). Host syncs: two per call (the counts'
        inputs; the final exactness check).
        """
        if not 0.0 <= float(prune_rate) <= 1.0:
            raise ValueError(f"prune_rate must be in [0, 1], got {prune_rate}")
        if self.optimizer is None:
            raise RuntimeError("rewiring grows by momentum and needs the optimizer")
        self.follow_devices()
        names = self.layer_names
        params = [self.params[n] for n in names]
        masks = [self.masks[n] for n in names]
        momenta = [momentum_buffer(self.optimizer, p) for p in params]
        signals = growth_signals(self.settings.grow_by, self.optimizer, params, generator, momenta)
        r_list, g_list, keepers, s_hat = self._decide_counts(params, masks, momenta, prune_rate)
        kept_masks: list[Tensor] = []
        new_masks: list[Tensor] = []
        for name, p, mask, mom, keep, r_l, g_l in zip(
            names, params, masks, signals, keepers, r_list, g_list
        ):
            kept = magnitude_prune(p, mask, r_l, num_active=self._nnz[name], protect=keep)
            if self.settings.regrow_pruned:
                new = momentum_regrow(mom, kept, g_l)
            else:  # only positions inactive before this rewiring may grow
                new = kept | (momentum_regrow(mom, mask, g_l) & ~mask)
            kept_masks.append(kept)
            new_masks.append(new)
        counts = self._checked_counts(new_masks, r_list, g_list)
        for p, mask, mom, kept, new in zip(params, masks, momenta, kept_masks, new_masks):
            # Pruned weights go to 0 and newly grown ones start at 0; with
            # keep_regrown_values a pruned-and-regrown weight (in `new` and in `mask`)
            # keeps its value. Written without relying on apply_() having run.
            p.mul_(kept | (new & mask) if self.settings.keep_regrown_values else kept)
            if self.settings.grow_momentum == "zero":
                mom.masked_fill_(new & ~mask, 0.0)  # a zeros_like stand-in is harmless
        self.commit_(dict(zip(names, new_masks)), counts)
        lost, regrown = dict(zip(names, r_list)), dict(zip(names, g_list))
        return self.rewire_stats(prune_rate, lost, regrown, s_hat.tolist())

    def commit_(self, masks: Mapping[str, Tensor], counts: list[int]) -> None:
        """Adopt ``masks`` (in layer order) whose active ``counts`` the caller has checked;
        the weights are the caller's to update."""
        self.masks = dict(masks)
        self._nnz = dict(zip(self.layer_names, counts))

    def _checked_counts(
        self, new_masks: list[Tensor], lost: list[int], regrown: list[int]
    ) -> list[int]:
        """The new masks' active counts (sync 2 of 2): the budget is exact, checked before
        anything is modified."""
        counts = torch.stack([torch.count_nonzero(m) for m in new_masks]).cpu().tolist()
        nnz = [self._nnz[n] for n in self.layer_names]
        expected = [n - a + b for n, a, b in zip(nnz, lost, regrown)]
        if counts != expected or sum(counts) != self.target_active:
            raise RuntimeError(
                f"rewiring broke the budget: {sum(counts)} active, expected "
                f"{self.target_active} (per layer {counts} vs {expected})"
            )
        return list(counts)

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self, masks: bool = True) -> dict[str, Any]:
        """Everything needed to resume exactly; tensors (CPU bool masks) + plain types only,
        so it loads with ``torch.load(..., weights_only=True)`` on any machine. With
        ``masks=False``, the settings alone."""
        settings = {
            "format": _STATE_FORMAT,
            "granularity": self.granularity,
            **self.settings.state(),
            "density": self.density_target,
            "target_active": self.target_active,
        }
        if not masks:
            return settings
        return {
            **settings,
            "layer_names": self.layer_names,
            "layer_shapes": [list(s) for s in self.layer_shapes.values()],
            "masks": {n: m.detach().to("cpu", copy=True) for n, m in self.masks.items()},
        }

    def adopt(self, state: Mapping[str, Any]) -> None:
        """Take the masks of another state, keeping this object's settings (ValueError if
        they do not fit: other layers, shapes, granularity or budget)."""
        granularity = state.get("granularity", "weight") if isinstance(state, Mapping) else None
        if granularity != self.granularity:
            raise ValueError(f"those are {granularity}-mode masks, this run prunes weights")
        try:
            masks = {"layer_names": state["layer_names"], "masks": state["masks"]}
        except KeyError as err:
            raise ValueError(f"the masks' state lacks {err}") from None
        self.load_state_dict({**self.state_dict(), **masks})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore masks and settings from :meth:`state_dict`; masks go to each weight's device.

        The saved settings (density, rewiring options) replace the constructor's:
        a checkpoint resumes with the behaviour it was trained with. A state saved before an
        option existed restores what runs did then (:data:`~dnr.sparsity.mask.LEGACY_SETTINGS`).

        Raises ValueError (with the offending names) if the layers or shapes do not match this
        model, or if the masks do not hold exactly the saved budget. Re-applies the masks to
        the weights so the zero invariant holds immediately.
        """
        mine = self.layer_names
        new_masks = saved_masks(state, self.params)
        counts = torch.stack([torch.count_nonzero(new_masks[n]) for n in mine]).cpu().tolist()
        settings = MaskSettings.from_state(state)
        target = round(settings.density * self.num_prunable)
        if sum(counts) != target:
            raise ValueError(
                f"masking state holds {sum(counts)} active weights but density "
                f"{settings.density} of {self.num_prunable} needs {target}"
            )
        self.settings = settings
        self.density_target = settings.density
        self.target_active = target
        self.masks = new_masks
        self._nnz = dict(zip(mine, counts))
        self.apply_()
