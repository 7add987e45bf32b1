"""``ChannelMasking``: whole output channels at a budget of compacted weights or MACs.

The same object as :class:`~dnr.sparsity.masking.Masking` at the granularity of channel
groups (``dnr.models.channels``): one boolean vector per group, applied after every step and
rewired — prune the smallest filter norms, regrow the largest momentum norms, move the
per-group budgets by normalized momentum (docs/method.md, "Channel mode"). Invariants:

* a pruned channel is **silent**: its filter, BN scale and shift, and its input slice in
  every consumer are exactly zero, so its output is 0 in train and eval mode, it gets no
  gradient, and removing it changes no logit;
* every group keeps a channel; the compacted network stays within one channel's worth below
  the budget;
* a regrown channel starts with a fresh filter (PyTorch's default init), BN scale 1, shift 0,
  fresh running statistics and a **zero** input slice in its consumers: a rewiring changes
  the network's function only by what it prunes (and BatchNorm never divides by a zero
  variance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from dnr.errors import ConfigError
from dnr.registry import GRANULARITIES
from dnr.sparsity.channel_rewiring import decide_channels
from dnr.sparsity.channels import ChannelLayout
from dnr.sparsity.mask import MaskSettings, momentum_buffer, settings_of
from dnr.sparsity.rewiring import RewireStats, normalized_momentum
from dnr.statedict import canonical_name

__all__ = ["ChannelMasking"]

if TYPE_CHECKING:
    from dnr.config import Config

_STATE_FORMAT = "dnr.channel_masking/1"


@GRANULARITIES.register(name="channel")
class ChannelMasking:
    """Owns the kept channels of every channel group and rewires them.

    Args:
        model: the network; must declare ``channel_groups()`` (VGG16, ResNet-18).
        optimizer: rewiring reads its momentum (``None`` for masks that never rewire).
        settings: a :class:`~dnr.sparsity.mask.MaskSettings` (or its fields as keyword
            ``options``): ``density`` is the fraction of the prunable weights (or MACs, with
            ``budget="macs"``) the compacted network keeps; ``exclude`` and the rewiring
            options act as in weight mode, per channel instead of per weight; ``init`` must
            be ``uniform`` (ERK is a per-weight rule).
        generator: CPU generator for the initial random channels.
        initial_masks: kept channels to start from (producer -> bool vector, within the
            budget) instead of random ones.
    """

    granularity: ClassVar[str] = "channel"
    description: ClassVar[str] = (
        "whole output channels; the budget counts the compacted network's weights "
        "(or its MACs: sparsity.budget=macs)"
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
        self.check_init(self.settings.init)
        self.model = model
        self.optimizer = optimizer
        self.layout = ChannelLayout(model, list(self.settings.exclude), self.settings.budget)
        self.density_target = self.settings.density
        #: the budget, in its unit (weights, or MACs per image): density · the dense cost
        self.target_active = self.layout.target(self.density_target)
        modules = {canonical_name(n): m for n, m in model.named_modules()}
        params = dict(model.named_parameters())
        self._params = {canonical_name(n): p for n, p in params.items()}
        self._producers = [modules[g.producer] for g in self.layout.groups]
        self._norms = [modules[g.norm] for g in self.layout.groups]
        if initial_masks is not None:  # e.g. the largest-norm channels after group lasso
            self.adopt({"granularity": self.granularity, "masks": initial_masks})
            return
        counts = self.layout.uniform_counts(self.target_active)
        self.masks: dict[str, Tensor] = {}
        for name, size, k in zip(self.layout.names, self.layout.sizes, counts):
            keep = torch.zeros(size, dtype=torch.bool)
            keep[torch.randperm(size, generator=generator)[:k]] = True
            self.masks[name] = keep
        self._set_masks(self.masks)

    @staticmethod
    def check_init(init: str) -> None:
        """Channel mode starts from a uniform channel fraction (ERK is a per-weight rule)."""
        if init != "uniform":
            raise ValueError(
                "channel mode starts from a uniform channel fraction; set init=uniform "
                "(ERK is a per-weight rule)"
            )

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """:meth:`check_init` on ``sparsity.init``, early (config validation)."""
        try:
            cls.check_init(cfg.sparsity.init)
        except ValueError as err:
            raise ConfigError(f"sparsity.init: {err}") from None

    @property
    def exclude(self) -> list[str]:
        return list(self.settings.exclude)

    @classmethod
    def from_config(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        s: Any,
        generator: torch.Generator,
    ) -> ChannelMasking:
        """Built from ``cfg.sparsity``."""
        return cls(model, optimizer, MaskSettings.from_config(s), generator=generator)

    # ------------------------------------------------------------------ counts

    def channel_counts(self) -> list[int]:
        return list(self._counts)

    def kept_channels(self) -> dict[str, list[int]]:
        """Sorted kept output-channel indices per group (what a compact export keeps)."""
        return {n: m.nonzero().flatten().tolist() for n, m in self.masks.items()}

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layout.layers]

    @property
    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        return {layer.name: layer.shape for layer in self.layout.layers}

    @property
    def num_prunable(self) -> int:
        return self.layout.num_prunable

    @property
    def num_active(self) -> int:
        """Prunable weights of the compacted network (= nonzero-capable weights here)."""
        return self.layout.params(self._counts)

    def density(self) -> float:
        return self.num_active / self.num_prunable

    def layer_counts(self) -> dict[str, int]:
        return {layer.name: layer.size(self._counts) for layer in self.layout.layers}

    def layer_densities(self) -> dict[str, float]:
        return {
            layer.name: layer.size(self._counts) / math.prod(layer.shape)
            for layer in self.layout.layers
        }

    def extra_stats(self) -> dict[str, Any]:
        """Channel counts and kept indices per group, for ``model.json``; with a MACs budget,
        the MACs kept (the weight density then says less about the budget)."""
        cost, dense = self.layout.cost(self._counts), self.layout.total_cost
        macs = {"budget": "macs", "macs": cost, "macs_dense": dense, "macs_density": cost / dense}
        channels = zip(self.layout.names, self._counts, self.layout.sizes)
        return {
            **(macs if self.layout.budget == "macs" else {}),
            "channels": {n: {"kept": k, "total": s} for n, k, s in channels},
            "kept_channels": self.kept_channels(),
        }

    def __repr__(self) -> str:
        return (
            f"ChannelMasking(density={self.density_target}, groups={len(self.masks)}, "
            f"active={self.num_active}/{self.num_prunable})"
        )

    # ------------------------------------------------------------------ applying

    def _set_masks(self, masks: Mapping[str, Tensor]) -> None:
        """Adopt ``masks`` and precompute the per-weight broadcast factors for apply_()."""
        self.masks = {n: masks[n].to("cpu", torch.bool) for n in self.layout.names}
        self._counts = [int(self.masks[n].sum()) for n in self.layout.names]
        vectors = [self.masks[n] for n in self.layout.names]
        self._factors: list[tuple[Tensor, Tensor | None, Tensor | None]] = []
        for layer in self.layout.layers:
            p = self._params[layer.name]
            out = in_ = None
            if layer.out_group is not None:
                out = vectors[layer.out_group].to(p.device, p.dtype).view(-1, *[1] * (p.dim() - 1))
            if layer.in_group is not None:
                repeat = layer.shape[1] // layer.in_full  # a Linear's positions per channel
                vec = vectors[layer.in_group].repeat_interleave(repeat).to(p.device, p.dtype)
                in_ = vec.view(1, -1, *[1] * (p.dim() - 2))
            self._factors.append((p, out, in_))
        self._bn_factors = [
            (bn, m.to(bn.weight.device, bn.weight.dtype)) for bn, m in zip(self._norms, vectors)
        ]
        self._device = self._factors[0][0].device
        self.apply_()

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every pruned channel's filter, BN scale/shift and consumer slices.

        In-place multiplies by precomputed factors: no host sync. Call after each step.
        """
        if self._factors[0][0].device != self._device:
            self._set_masks(self.masks)  # the model moved: rebuild the factors (and apply)
            return
        for p, out, in_ in self._factors:
            if out is not None:
                p.mul_(out)
            if in_ is not None:
                p.mul_(in_)
        for bn, m in self._bn_factors:
            bn.weight.mul_(m)
            bn.bias.mul_(m)

    # ------------------------------------------------------------------ rewiring

    def _active(self, group: int) -> Tensor:
        """Boolean mask of the producer's active weights: kept rows x kept inputs."""
        layer = self.layout.producer(group)
        p, out, in_ = self._factors[self.layout.layers.index(layer)]
        active = torch.ones_like(p, dtype=torch.bool)
        for factor in (out, in_):
            if factor is not None:
                active = active & (factor != 0)
        return active

    def _signals(self) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """ŝ per group, and each producer's filter and momentum norms per channel: on the
        host, in one transfer."""
        names, sizes = self.layout.names, self.layout.sizes
        weights = [prod.weight for prod in self._producers]
        momenta = [momentum_buffer(self.optimizer, w) for w in weights]
        s_hat = normalized_momentum(momenta, [self._active(g) for g in range(len(names))])
        w_norm = [w.detach().flatten(1).norm(dim=1).float() for w in weights]
        m_norm = [m.detach().flatten(1).norm(dim=1).float() for m in momenta]
        flat = torch.cat([s_hat, *w_norm, *m_norm]).cpu()
        s_hat_h, rest = flat[: len(names)], flat[len(names) :]
        return s_hat_h, list(rest[: sum(sizes)].split(sizes)), list(rest[sum(sizes) :].split(sizes))

    @torch.no_grad()
    def rewire(self, prune_rate: float, generator: torch.Generator | None = None) -> RewireStats:
        """One REWIRE(p) over channels; returns what it did (counts are channels).

        ŝ_g is the normalized momentum of each group's producer; the kept channels with the
        smallest filter norm are pruned and those with the largest momentum norm regrown
        (:func:`~dnr.sparsity.channel_rewiring.decide_channels`); then pruned channels are
        silenced, grown ones initialised (``generator`` draws their filters) and the masks
        re-applied.
        """
        if not 0.0 <= float(prune_rate) <= 1.0:
            raise ValueError(f"prune_rate must be in [0, 1], got {prune_rate}")
        if self.optimizer is None:
            raise RuntimeError("rewiring grows by momentum and needs the optimizer")
        names = self.layout.names
        s_hat, w_norm, m_norm = self._signals()
        old = [self.masks[n] for n in names]
        pruned, new_masks = decide_channels(
            self.layout,
            old,
            s_hat,
            w_norm,
            m_norm,
            prune_rate,
            self.target_active,
            regrow_pruned=self.settings.regrow_pruned,
            redistribution=self.settings.redistribution,
        )
        if self.layout.cost([int(m.sum()) for m in new_masks]) > self.target_active:
            raise RuntimeError("channel rewiring exceeded the budget")  # grow() forbids it
        self._reinitialise(old, pruned, new_masks, generator)
        self._set_masks(dict(zip(names, new_masks)))
        return RewireStats(
            prune_rate=float(prune_rate),
            total_active=self.num_active,
            density=self.density(),
            lost={n: int((o & ~p).sum()) for n, o, p in zip(names, old, pruned)},
            regrown={n: int((nw & ~p).sum()) for n, nw, p in zip(names, new_masks, pruned)},
            layer_density=self.layer_densities(),
            normalized_momentum=dict(zip(names, s_hat.tolist())),
        )

    def _reinitialise(
        self,
        old: list[Tensor],
        pruned: list[Tensor],
        new: list[Tensor],
        generator: torch.Generator | None,
    ) -> None:
        """Fresh running statistics for channels that died or are born; a fresh filter,
        BN scale 1 / shift 0 and zero consumer slices for those born (a channel pruned and
        regrown in this rewiring is born again unless ``keep_regrown_values``)."""
        for g, (conv, bn) in enumerate(zip(self._producers, self._norms)):
            born = new[g] & ~old[g]
            if not self.settings.keep_regrown_values:
                born |= new[g] & old[g] & ~pruned[g]
            touched = (old[g] & ~new[g]) | born
            if not bool(touched.any()):
                continue
            dev = conv.weight.device
            bn.running_mean[touched.to(dev)] = 0.0
            bn.running_var[touched.to(dev)] = 1.0
            if not bool(born.any()):
                continue
            idx = born.nonzero().flatten().to(dev)
            bound = 1.0 / math.sqrt(conv.weight[0].numel())  # PyTorch's default conv init
            fresh = torch.rand((len(idx), *conv.weight.shape[1:]), generator=generator)
            conv.weight[idx] = (fresh * (2 * bound) - bound).to(dev, conv.weight.dtype)
            bn.weight[idx] = 1.0
            bn.bias[idx] = 0.0
            for name in self.layout.groups[g].consumers:  # function-preserving growth
                self._consumer_slice_zero(name, g, idx)
            if self.settings.grow_momentum == "zero":
                for p in (conv.weight, bn.weight, bn.bias):
                    momentum_buffer(self.optimizer, p)[idx] = 0.0

    def _consumer_slice_zero(self, consumer: str, group: int, idx: Tensor) -> None:
        w = self._params[f"{consumer}.weight"]
        repeat = w.shape[1] // self.layout.sizes[group]
        cols = (idx[:, None] * repeat + torch.arange(repeat, device=idx.device)).flatten()
        w[:, cols] = 0.0
        if self.settings.grow_momentum == "zero":
            momentum_buffer(self.optimizer, w)[:, cols] = 0.0

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": _STATE_FORMAT,
            "granularity": self.granularity,
            **self.settings.state(),
            "density": self.density_target,
            "layer_names": self.layout.names,
            "masks": {n: m.clone() for n, m in self.masks.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (``ValueError`` if it does not fit this model); the
        saved rewiring options replace the constructor's, as in weight mode."""
        if not isinstance(state, Mapping) or "density" not in state:
            raise ValueError("channel masking state lacks 'density'")
        settings = MaskSettings.from_state(state)
        if list(settings.exclude) != self.exclude:
            raise ValueError(
                f"channel masks were saved with exclude={state.get('exclude')}, "
                f"this model prunes with exclude={self.exclude}"
            )
        if settings.budget != self.layout.budget:
            raise ValueError(
                f"channel masks were saved under a {settings.budget} budget, "
                f"this run counts {self.layout.budget}"
            )
        self.check_init(settings.init)
        self.density_target = settings.density
        self.target_active = self.layout.target(settings.density)
        self.adopt(state)
        self.settings = settings

    def adopt(self, state: Mapping[str, Any]) -> None:
        """Take the kept channels of another state (``ValueError`` if they do not fit)."""
        if not isinstance(state, Mapping) or "masks" not in state:
            raise ValueError("the masks' state lacks 'masks'")
        if state.get("granularity", "weight") != self.granularity:
            raise ValueError(
                f"those are {state.get('granularity', 'weight')}-mode masks, "
                "this run prunes channels"
            )
        masks = {canonical_name(n): torch.as_tensor(m) for n, m in state["masks"].items()}
        mine = self.layout.names
        if sorted(masks) != sorted(mine):
            raise ValueError(
                f"channel groups differ: saved {sorted(masks)[:4]}..., model {mine[:4]}..."
            )
        bad = [
            n
            for n, size in zip(mine, self.layout.sizes)
            if tuple(masks[n].shape) != (size,) or not bool(masks[n].any())
        ]
        if bad:
            raise ValueError(f"channel masks do not fit groups {bad} (size, or no channel kept)")
        if self.layout.cost([int(masks[n].sum()) for n in mine]) > self.target_active:
            raise ValueError(
                f"those channels need more {self.layout.budget} than this run's budget"
            )
        self._set_masks({n: masks[n].to(torch.bool) for n in mine})
