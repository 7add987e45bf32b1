"""``lasso``: robust group-lasso channel pruning — shrink whole channels, cut the smallest.

A ``sparsify`` stage of adversarial training with the group-lasso penalty
``λ · Σ_channels ||(filter_c, γ_c)||₂`` over every channel group (the filter *and* its
BatchNorm scale: BN undoes any shrinking of the filter alone, so only shrinking both turns a
channel off), then pruning to the channel-mode budget — every group keeps its strongest
channel, then channels join in order of their RMS group norm while the compacted network
stays within ``round(density · N)`` weights — and a ``finetune`` stage with the channels
fixed. Always channel granularity (whatever ``sparsity.granularity`` says); the result
exports with ``dnr export --format compact``. Options: ``sparsify_epochs`` (default half
the run), ``lam`` (λ, default 1e-4).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from dnr.errors import ConfigError
from dnr.sparsity.base import Progress, Stage, method_options, register_method
from dnr.sparsity.channels import ChannelLayout
from dnr.sparsity.lwm import LWM
from dnr.statedict import canonical_name

__all__ = ["GroupLasso", "channel_scores"]

_EPS = 1e-12  # keeps the norm's gradient finite at a zero channel


def _groups(model: nn.Module, layout: ChannelLayout) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(producer conv, its BN) per group (the layout has checked their types)."""
    modules = {canonical_name(n): m for n, m in model.named_modules()}
    return [
        (cast(nn.Conv2d, modules[g.producer]), cast(nn.BatchNorm2d, modules[g.norm]))
        for g in layout.groups
    ]


def group_norms(model: nn.Module, layout: ChannelLayout) -> list[Tensor]:
    """Per channel group, the norm of each channel's (filter, BN scale), differentiable."""
    return [
        (conv.weight.flatten(1).pow(2).sum(1) + bn.weight.pow(2) + _EPS).sqrt()
        for conv, bn in _groups(model, layout)
    ]


@torch.no_grad()
def channel_scores(model: nn.Module, layout: ChannelLayout) -> list[Tensor]:
    """RMS group norms (comparable across layers of different fan-in), on the CPU."""
    return [
        (norms / (conv.weight[0].numel() + 1) ** 0.5).cpu()
        for norms, (conv, _) in zip(group_norms(model, layout), _groups(model, layout))
    ]


def strongest_channels(scores: list[Tensor], layout: ChannelLayout, target: int) -> list[Tensor]:
    """Kept masks: each group's best channel, then the best remaining ones while they fit."""
    order = [torch.sort(s, descending=True, stable=True).indices.tolist() for s in scores]

    def priority(g: int, counts: list[int], _spent: list[int]) -> float:
        return float(scores[g][order[g][counts[g]]])  # the group's next-best channel

    counts = layout.grow([1] * len(scores), layout.sizes, target, priority)
    masks = []
    for g, size in enumerate(layout.sizes):
        mask = torch.zeros(size, dtype=torch.bool)
        mask[order[g][: counts[g]]] = True
        masks.append(mask)
    return masks


@register_method
class GroupLasso(LWM):
    """Group-lasso training, then the largest-norm channels kept, then masked finetuning."""

    name = "lasso"
    description = "robust group lasso: shrink channels (lambda), keep the strongest, finetune"
    granularities: ClassVar[tuple[str, ...]] = ("weight", "channel")
    option_defaults = {"sparsify_epochs": None, "lam": 1e-4}

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        opts, epochs = method_options(cfg), cfg.train.epochs
        s = opts.get("sparsify_epochs")
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < epochs):
            raise ConfigError(
                f"sparsity.options.{cfg.sparsity.method}.sparsify_epochs: must be an integer "
                f"in [0, {epochs}), got {s!r}"
            )
        lam = opts.get("lam", cls.option_defaults["lam"])
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
            raise ConfigError(
                f"sparsity.options.{cfg.sparsity.method}.lam: must be a number >= 0, got {lam!r}"
            )
        if cfg.sparsity.init != "uniform":
            raise ConfigError("sparsity.method=lasso prunes channels: set sparsity.init=uniform")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        try:
            self.layout = ChannelLayout(self.model, self.cfg.sparsity.exclude)
        except ValueError as err:
            raise ConfigError(f"sparsity.method=lasso: {err}") from None

    @property
    def granularity(self) -> str:
        return "channel"

    def stages(self) -> list[Stage]:
        epochs = self.cfg.train.epochs
        s = self.option("sparsify_epochs")
        s = epochs // 2 if s is None else int(s)
        finetune = Stage("finetune", epochs - s)
        return [Stage("sparsify", s), finetune] if s > 0 else [finetune]

    def loss_term(self, model: nn.Module) -> Tensor | None:
        lam = float(self.option("lam"))
        if self.masking is not None or lam == 0:
            return None
        return lam * sum(n.sum() for n in group_norms(self.model, self.layout))  # type: ignore[return-value]

    def begin_stage(self, stage: Stage, progress: Progress) -> None:
        if stage.name != "finetune":
            return
        target = round(self.cfg.sparsity.density * self.layout.num_prunable)
        if self.layout.minimum() > target:
            raise ConfigError(
                f"sparsity.density={self.cfg.sparsity.density}: one channel per group already "
                f"needs {self.layout.minimum()} weights, more than {target}"
            )
        masks = strongest_channels(channel_scores(self.model, self.layout), self.layout, target)
        self._build(dict(zip(self.layout.names, masks)))
        progress.log(f"lasso: kept the strongest channels, density {self.density():.4f}")

    def adopt_masks(self, state: Mapping[str, Any]) -> None:
        raise ValueError("lasso finds its own channels; set train.init_masks=false")
