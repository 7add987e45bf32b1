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

from collections.abc import Iterable, Mapping
from typing import Any, get_args

import torch
from torch import Tensor, nn

from dnr.config import GrowMomentum, SparsityInit
from dnr.registry import GRANULARITIES
from dnr.sparsity.budgets import layer_budgets, random_mask, redistribute
from dnr.sparsity.layers import prunable_parameters
from dnr.sparsity.rewiring import (
    RewireStats,
    channel_keepers,
    magnitude_prune,
    momentum_regrow,
    normalized_momentum,
    prune_counts,
    regrowth_shares,
)
from dnr.statedict import canonical_name

__all__ = ["Masking"]

#: Initial per-layer allocations: ``sparsity.init``'s, and IGQ (FlyingBird's, chosen by
#: that method's own option).
INITS: tuple[str, ...] = (*get_args(SparsityInit), "igq")
GROW_MOMENTUM: tuple[str, ...] = get_args(GrowMomentum)
_STATE_FORMAT = "dnr.masking/1"
# Optimizer state keys holding a first-moment (momentum) estimate, in lookup order:
# SGD's buffer; Adam/AdamW's exp_avg as a fallback so the class works with them too.
_MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")
#: What regrowth ranks inactive weights by: the optimizer's momentum (DNR, sparse momentum),
#: the last step's dense gradient (RigL-style, FlyingBird's option) or a uniform random draw
#: from the rewiring's generator (SET-style, FlyingBird's released default).
GROW_SIGNALS = ("momentum", "gradient", "random")


def momentum_buffer(optimizer: torch.optim.Optimizer | None, param: Tensor) -> Tensor:
    """The optimizer's first-moment buffer of ``param`` (SGD's, or Adam's ``exp_avg``).

    No buffer yet (before the first step): a zero signal; growth then falls back to the
    deterministic lowest-index tie-break, and ŝ to uniform. The returned buffer is the
    optimizer's own tensor, so zeroing entries of it resets their momentum.
    """
    state = optimizer.state.get(param, {}) if optimizer is not None else {}
    for key in _MOMENTUM_KEYS:
        buf = state.get(key)
        if isinstance(buf, Tensor) and buf.shape == param.shape:
            return buf
    return torch.zeros_like(param)


def shared_options(s: Any) -> dict[str, Any]:
    """The ``cfg.sparsity`` settings every mask class takes (weight and channel mode)."""
    return {
        "density": s.density,
        "exclude": tuple(s.exclude),
        "regrow_pruned": s.regrow_pruned,
        "keep_regrown_values": s.keep_regrown_values,
        "redistribution": s.redistribution,
        "grow_momentum": s.grow_momentum,
    }


@GRANULARITIES.register(name="weight")
class Masking:
    """Owns the masks of the prunable tensors and rewires them (DNR, irregular mode).

    Args:
        model: the network (may be wrapped in DDP; names are stored without ``module.``).
        optimizer: the optimizer stepping ``model``; rewiring reads its ``momentum_buffer``
            state (``exp_avg`` for Adam-type optimizers). May be ``None`` for masks that
            never rewire (a static mask) or when only loading/applying masks.
        density: fraction of prunable weights kept active, in (0, 1].
        init: per-layer budgets at initialisation, ``"uniform"``, ``"erk"`` or ``"igq"``.
        exclude: fnmatch patterns of weight names kept dense and out of N.
        generator: CPU generator for the initial random masks (reproducibility).
        regrow_pruned: whether positions pruned in a rewiring may be regrown in the same
            rewiring (default True, as in sparse momentum: a weight that is small but has
            the largest momentum comes back). With False, regrowth only picks positions
            that were inactive before the rewiring.
        keep_regrown_values: a weight pruned and regrown in the same rewiring keeps its
            value (sparse_learning's behaviour) instead of restarting at 0.
        protect_channels: every output channel keeps at least one active weight — at
            init (no channel starts dead) and through every rewiring (its largest-|w|
            active weight is never pruned), so no layer ever empties either.
        redistribution: λ in [0, 1], how much of the pruned budget moves between layers
            by normalized momentum (see :func:`regrowth_shares`); 1 = the paper.
        grow_momentum: ``"zero"`` the optimizer momentum of newly grown weights, so a grown
            weight's first steps follow its fresh gradient rather than a stale
            accumulation, or ``"keep"`` it (the paper / sparse momentum).
        grow_by: rank inactive weights for regrowth by ``"momentum"`` (DNR), by the
            last backward pass's dense ``"gradient"`` (RigL / FlyingBird) or pick them
            uniformly at ``"random"`` (SET / FlyingBird's release; needs a generator).
        initial_masks: start from these masks (name -> bool tensor, exactly the budget in
            total) instead of random ones, e.g. a magnitude mask of pretrained weights.

    The defaults are the project's (docs/method.md gives the measurements); the paper's
    rewiring is ``keep_regrown_values=False, protect_channels=False, redistribution=1,
    grow_momentum="keep"``.

    Masking is the mechanism; *when* to rewire is the sparsity method's decision
    (``dnr.sparsity.dnr.DNR`` rewires, ``dnr.sparsity.static.Static`` never does).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        density: float,
        init: str = "uniform",
        exclude: Iterable[str] = (),
        generator: torch.Generator | None = None,
        regrow_pruned: bool = True,
        keep_regrown_values: bool = True,
        protect_channels: bool = True,
        redistribution: float = 0.3,
        grow_momentum: str = "zero",
        grow_by: str = "momentum",
        initial_masks: Mapping[str, Tensor] | None = None,
    ) -> None:
        if grow_by not in GROW_SIGNALS:
            raise ValueError(f"grow_by must be one of {GROW_SIGNALS}, got {grow_by!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not 0.0 < float(density) <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        if not 0.0 <= float(redistribution) <= 1.0:
            raise ValueError(f"redistribution must be in [0, 1], got {redistribution}")
        if grow_momentum not in GROW_MOMENTUM:
            raise ValueError(f"grow_momentum must be one of {GROW_MOMENTUM}, got {grow_momentum!r}")
        self.model = model
        self.optimizer = optimizer
        self.density_target = float(density)
        self.init = init
        self.exclude: list[str] = list(exclude)
        self.regrow_pruned = bool(regrow_pruned)
        self.keep_regrown_values = bool(keep_regrown_values)
        self.protect_channels = bool(protect_channels)
        self.redistribution = float(redistribution)
        self.grow_momentum = grow_momentum
        self.grow_by = grow_by
        self._params = prunable_parameters(model, self.exclude)
        if not self._params:
            raise ValueError(
                "the model has no prunable Conv2d/Linear weights"
                + (f" left after exclude={self.exclude}" if self.exclude else "")
            )
        self._numel = {n: p.numel() for n, p in self._params.items()}
        self.target_active = round(self.density_target * self.num_prunable)
        if initial_masks is not None:  # e.g. a magnitude mask of pretrained weights
            settings = {k: v for k, v in self.state_dict(masks=False).items()}
            self.load_state_dict(
                {**settings, "layer_names": list(initial_masks), "masks": dict(initial_masks)}
            )
            return
        budgets = layer_budgets(
            list(self._numel.values()),
            self.density_target,
            init,
            shapes=[tuple(p.shape) for p in self._params.values()],
            min_counts=[p.shape[0] for p in self._params.values()] if protect_channels else None,
        )
        self.masks: dict[str, Tensor] = {
            name: random_mask(
                tuple(p.shape), k, generator, device=p.device, cover_rows=protect_channels
            )
            for (name, p), k in zip(self._params.items(), budgets)
        }
        # Host-side copy of the per-layer active counts. Masks only change in rewire() and
        # load_state_dict(), which refresh it, so density queries never touch the device.
        self._nnz: dict[str, int] = dict(zip(self._params, budgets))
        self.apply_()

    granularity = "weight"
    description = "single weights: irregular masks at an exact weight budget (the paper's)"

    @classmethod
    def from_config(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        s: Any,
        generator: torch.Generator,
    ) -> Masking:
        """Built from ``cfg.sparsity`` (a :class:`~dnr.config.SparsityConfig`)."""
        return cls(
            model,
            optimizer,
            init=s.init,
            generator=generator,
            protect_channels=s.protect_channels,
            **shared_options(s),
        )

    def extra_stats(self) -> dict[str, Any]:
        """Nothing beyond the per-layer counts (channel mode adds its channels)."""
        return {}

    # ------------------------------------------------------------------ properties

    @property
    def layer_names(self) -> list[str]:
        return list(self._params)

    @property
    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self._params.items()}

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
        return {n: self._nnz[n] / self._numel[n] for n in self._params}

    def layer_counts(self) -> dict[str, int]:
        """Active weights per layer (kept on the host: no device sync)."""
        return {n: self._nnz[n] for n in self._params}

    def __repr__(self) -> str:
        return (
            f"Masking(density={self.density_target}, init={self.init!r}, "
            f"layers={len(self._params)}, active={self.num_active}/{self.num_prunable})"
        )

    # ------------------------------------------------------------------ per-step masking

    def _follow_devices(self) -> None:
        """Move each mask to its parameter's device if the model was moved (no sync)."""
        for name, p in self._params.items():
            if self.masks[name].device != p.device:
                self.masks[name] = self.masks[name].to(p.device)

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every masked weight. Call after each ``optimizer.step()``.

        One in-place multiply per tensor: no host sync, no branching on tensor values. The
        optimizer's momentum buffers are deliberately left dense.
        """
        self._follow_devices()
        for name, p in self._params.items():
            p.mul_(self.masks[name])

    def to(self, device: torch.device | str) -> Masking:
        """Move the masks to ``device`` (they also follow their weights in apply_/rewire)."""
        self.masks = {n: m.to(device) for n, m in self.masks.items()}
        return self

    # ------------------------------------------------------------------ rewiring

    def _momentum(self, param: nn.Parameter) -> Tensor:
        return momentum_buffer(self.optimizer, param)

    @staticmethod
    def _gradient(param: nn.Parameter) -> Tensor:
        """The dense gradient of the last backward pass (zero before the first one)."""
        return param.grad if param.grad is not None else torch.zeros_like(param)

    @staticmethod
    def _random_signal(param: nn.Parameter, generator: torch.Generator | None) -> Tensor:
        """Uniform [0, 1) scores for random growth, drawn on the generator's device (CPU by
        default, so every device draws the same positions)."""
        if generator is None:
            raise ValueError("random growth needs a generator (it draws the grown positions)")
        draw = torch.rand(param.shape, generator=generator, device=generator.device)
        return draw.to(param.device)

    def _signals(
        self,
        params: list[nn.Parameter],
        momenta: list[Tensor] | None,
        generator: torch.Generator | None,
    ) -> list[Tensor]:
        """What regrowth ranks the inactive entries of each layer by (``grow_by``)."""
        if self.grow_by == "momentum":
            return momenta if momenta is not None else [self._momentum(p) for p in params]
        if self.grow_by == "gradient":
            return [self._gradient(p) for p in params]
        return [self._random_signal(p, generator) for p in params]

    @torch.no_grad()
    def mask_momentum_(self) -> None:
        """Zero the optimizer's first-moment entries of inactive weights, as sparse_learning's
        ``apply_mask`` does after every step (FlyingBird's release). Never called by DNR, whose
        growth signal is exactly that momentum. No host sync."""
        if self.optimizer is None:
            return
        self._follow_devices()
        for name, p in self._params.items():
            state = self.optimizer.state.get(p, {})
            for key in _MOMENTUM_KEYS:  # none before the first step (or without momentum)
                buf = state.get(key)
                if isinstance(buf, Tensor) and buf.shape == p.shape:
                    buf.mul_(self.masks[name])
                    break

    def protected_counts(self) -> dict[str, int]:
        """Per layer, the active entries ``protect_channels`` exempts from pruning (each
        channel's largest-|w| one; 0 everywhere without it). One host sync."""
        if not self.protect_channels:
            return {n: 0 for n in self._params}
        self._follow_devices()
        kept = [
            torch.count_nonzero(channel_keepers(p, self.masks[n])) for n, p in self._params.items()
        ]
        return dict(zip(self._params, torch.stack(kept).cpu().tolist()))

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
        names = self.layer_names
        if set(prune) != set(names) or set(grow) != set(names):
            raise ValueError("move_ needs a prune and a grow count for every prunable layer")
        self._follow_devices()
        protected = self.protected_counts()  # sync 1 of 2 (none without protect_channels)
        for n in names:
            nnz, numel = self._nnz[n], self._numel[n]
            if not 0 <= prune[n] <= nnz - protected[n]:
                raise ValueError(f"{n}: cannot prune {prune[n]} of {nnz} active entries")
            if not 0 <= grow[n] <= numel - nnz + prune[n]:
                raise ValueError(f"{n}: cannot grow {grow[n]} into {numel - nnz + prune[n]}")
        params = [self._params[n] for n in names]
        masks = [self.masks[n] for n in names]
        signals = self._signals(params, None, generator)
        new_masks: list[Tensor] = []
        for name, p, mask, signal in zip(names, params, masks, signals):
            keep = channel_keepers(p, mask) if self.protect_channels else None
            kept = magnitude_prune(p, mask, prune[name], num_active=self._nnz[name], protect=keep)
            new_masks.append(momentum_regrow(signal, kept, grow[name]))
        counts = torch.stack([torch.count_nonzero(m) for m in new_masks]).cpu().tolist()  # 2/2
        expected = [self._nnz[n] - prune[n] + grow[n] for n in names]
        if counts != expected:
            raise RuntimeError(f"mask update miscounted: {counts} active, expected {expected}")
        for p, new in zip(params, new_masks):
            p.mul_(new)  # pruned -> 0; pruned-and-regrown keep their value; grown were 0
        self.masks = dict(zip(names, new_masks))
        self._nnz = dict(zip(names, counts))
        self.target_active = sum(counts)
        if self.target_active != round(self.density_target * self.num_prunable):
            self.density_target = self.target_active / self.num_prunable  # FlyingBird+ drifts
        return RewireStats(
            prune_rate=float(prune_rate),
            total_active=self.num_active,
            density=self.density(),
            lost={n: int(prune[n]) for n in names},
            regrown={n: int(grow[n]) for n in names},
            layer_density=self.layer_densities(),
        )

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
        momentum and gradient growth draw nothing). Host syncs: two per call
        (ŝ and the protected counts to decide the counts; the
        final exactness check).
        """
        if not 0.0 <= float(prune_rate) <= 1.0:
            raise ValueError(f"prune_rate must be in [0, 1], got {prune_rate}")
        if self.optimizer is None:
            raise RuntimeError("rewiring grows by momentum and needs the optimizer")
        self._follow_devices()
        names = self.layer_names
        params = [self._params[n] for n in names]
        masks = [self.masks[n] for n in names]
        momenta = [self._momentum(p) for p in params]
        signals = self._signals(params, momenta, generator)

        s_hat = normalized_momentum(momenta, masks)
        keepers: list[Tensor | None] = [None] * len(names)
        n_kept = torch.zeros_like(s_hat)
        if self.protect_channels:
            kept_rows = [channel_keepers(p, m) for p, m in zip(params, masks)]
            n_kept = torch.stack([torch.count_nonzero(k) for k in kept_rows]).to(s_hat)
            keepers = list(kept_rows)
        s_hat, n_protected = torch.cat([s_hat, n_kept]).cpu().split(len(names))  # sync 1 of 2
        n_protected = n_protected.to(torch.long)
        nnz = torch.tensor([self._nnz[n] for n in names], dtype=torch.long)
        numel = torch.tensor([self._numel[n] for n in names], dtype=torch.long)
        r = torch.minimum(prune_counts(nnz, float(prune_rate)), nnz - n_protected)
        capacity = numel - nnz + r if self.regrow_pruned else numel - nnz
        shares = regrowth_shares(s_hat.to(torch.float64), r, self.redistribution)
        g = redistribute(int(r.sum()), shares, capacity)
        r_list, g_list = r.tolist(), g.tolist()

        kept_masks: list[Tensor] = []
        new_masks: list[Tensor] = []
        for name, p, mask, mom, keep, r_l, g_l in zip(
            names, params, masks, signals, keepers, r_list, g_list
        ):
            kept = magnitude_prune(p, mask, r_l, num_active=self._nnz[name], protect=keep)
            if self.regrow_pruned:
                new = momentum_regrow(mom, kept, g_l)
            else:  # only positions inactive before this rewiring may grow
                new = kept | (momentum_regrow(mom, mask, g_l) & ~mask)
            kept_masks.append(kept)
            new_masks.append(new)

        # sync 2 of 2: the budget is exact, checked before anything is modified.
        counts = torch.stack([torch.count_nonzero(m) for m in new_masks]).cpu().tolist()
        expected = [n - a + b for n, a, b in zip(nnz.tolist(), r_list, g_list)]
        if counts != expected or sum(counts) != self.target_active:
            raise RuntimeError(
                f"rewiring broke the budget: {sum(counts)} active, expected "
                f"{self.target_active} (per layer {counts} vs {expected})"
            )
        for p, mask, mom, kept, new in zip(params, masks, momenta, kept_masks, new_masks):
            # Pruned weights go to 0 and newly grown ones start at 0; with
            # keep_regrown_values a pruned-and-regrown weight (in `new` and in `mask`)
            # keeps its value. Written without relying on apply_() having run.
            p.mul_(kept | (new & mask) if self.keep_regrown_values else kept)
            if self.grow_momentum == "zero":
                mom.masked_fill_(new & ~mask, 0.0)  # a zeros_like stand-in is harmless
        self.masks = dict(zip(names, new_masks))
        self._nnz = dict(zip(names, counts))
        return RewireStats(
            prune_rate=float(prune_rate),
            total_active=self.num_active,
            density=self.density(),
            lost=dict(zip(names, r_list)),
            regrown=dict(zip(names, g_list)),
            layer_density=self.layer_densities(),
            normalized_momentum=dict(zip(names, s_hat.tolist())),
        )

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self, masks: bool = True) -> dict[str, Any]:
        """Everything needed to resume exactly; tensors (CPU bool masks) + plain types only,
        so it loads with ``torch.load(..., weights_only=True)`` on any machine. With
        ``masks=False``, the settings alone."""
        settings = {
            "format": _STATE_FORMAT,
            "granularity": self.granularity,
            "density": self.density_target,
            "init": self.init,
            "exclude": list(self.exclude),
            "regrow_pruned": self.regrow_pruned,
            "keep_regrown_values": self.keep_regrown_values,
            "protect_channels": self.protect_channels,
            "redistribution": self.redistribution,
            "grow_momentum": self.grow_momentum,
            "grow_by": self.grow_by,
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
        option existed restores the paper's behaviour for it.

        Raises ValueError (with the offending names) if the layers or shapes do not match this
        model, or if the masks do not hold exactly the saved budget. Re-applies the masks to
        the weights so the zero invariant holds immediately.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"masking state must be a mapping, got {type(state).__name__}")
        required = ("density", "init", "exclude", "layer_names", "masks")
        missing_keys = [k for k in required if k not in state]
        if missing_keys:
            raise ValueError(f"masking state is missing {', '.join(missing_keys)}")
        mine = self.layer_names
        theirs = [canonical_name(n) for n in state["layer_names"]]
        masks_in = {canonical_name(n): m for n, m in state["masks"].items()}
        missing = [n for n in mine if n not in masks_in]
        unexpected = [n for n in theirs if n not in self._params]
        if missing or unexpected:
            raise ValueError(
                "masking state does not match the model's prunable layers: "
                f"missing {missing or 'none'}, unexpected {unexpected or 'none'}"
            )
        bad = [
            f"{n}: saved {tuple(masks_in[n].shape)} vs model {tuple(self._params[n].shape)}"
            for n in mine
            if tuple(masks_in[n].shape) != tuple(self._params[n].shape)
        ]
        if bad:
            raise ValueError("masking state has mismatched shapes: " + "; ".join(bad))
        new_masks = {
            n: torch.as_tensor(masks_in[n]).to(
                device=self._params[n].device, dtype=torch.bool, copy=True
            )
            for n in mine
        }
        counts = torch.stack([torch.count_nonzero(new_masks[n]) for n in mine]).cpu().tolist()
        density = float(state["density"])
        target = round(density * self.num_prunable)
        if sum(counts) != target:
            raise ValueError(
                f"masking state holds {sum(counts)} active weights but density {density} "
                f"of {self.num_prunable} needs {target}"
            )
        self.density_target = density
        self.target_active = target
        self.init = str(state["init"])
        self.exclude = list(state["exclude"])
        self.regrow_pruned = bool(state.get("regrow_pruned", True))
        # Masks saved before these options existed came from the paper's behaviour.
        self.keep_regrown_values = bool(state.get("keep_regrown_values", False))
        self.protect_channels = bool(state.get("protect_channels", False))
        self.redistribution = float(state.get("redistribution", 1.0))
        grow = state.get("grow_momentum", "keep")
        if grow not in GROW_MOMENTUM:
            raise ValueError(f"masking state has unknown grow_momentum {grow!r}")
        if not 0.0 <= float(state.get("redistribution", 1.0)) <= 1.0:
            raise ValueError(
                f"masking state has redistribution {state['redistribution']} outside [0, 1]"
            )
        self.grow_momentum = str(grow)
        grow_by = state.get("grow_by", "momentum")
        if grow_by not in GROW_SIGNALS:
            raise ValueError(f"masking state has unknown grow_by {grow_by!r}")
        self.grow_by = str(grow_by)
        self.masks = new_masks
        self._nnz = dict(zip(mine, counts))
        self.apply_()
