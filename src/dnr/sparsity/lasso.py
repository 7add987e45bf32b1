"""``lasso``: robust group-lasso channel pruning — shrink whole channels to zero, cut, fine-tune.

A ``sparsify`` stage of adversarial training with the group-lasso penalty
``λ · Σ_channels ||(filter_c, γ_c, β_c)||₂`` over every channel group (the filter *and* its
BatchNorm scale and shift: BN undoes any shrinking of the filter alone, and a live shift keeps
a dead filter's channel on), applied as a **proximal step** after every optimizer step —
group soft-thresholding ``v ← v · max(0, 1 − lr·λ/||v||)`` — so channels reach exactly zero
(a penalty added to the loss only oscillates around zero with SGD). λ is calibrated, not
guessed: at the stage's start it is set so that shrinking alone would zero the fraction of
channels the budget removes (``lam`` is its floor), and after every step at which the
fraction of zero channels is behind a schedule rising linearly to that target over the
first ``ramp`` of the stage, λ grows ×``lam_growth`` (and eases off as much when ahead)
— so the cut that follows removes the channels the lasso has already switched off. Both
are logged (``lasso`` in ``metrics.jsonl``). Then the channel-mode budget is filled with the
strongest channels — every group keeps its best one, then channels join in order of their
RMS group norm while the compacted network stays within ``round(density · N)`` weights —
and a ``finetune`` stage at ``finetune_lr`` fixes them. Channel granularity only: its result
is compared with channel-mode methods and exports with ``dnr export --format compact``.
(DNR's lasso baseline released no training code; this is the standard proximal method.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from dnr.errors import ConfigError
from dnr.sparsity.base import Progress, Stage, register_method
from dnr.sparsity.channels import ChannelLayout
from dnr.sparsity.staged import StagedPruning, split_epochs, staged
from dnr.statedict import canonical_name

__all__ = ["GroupLasso", "channel_scores", "group_norms"]

#: a channel whose group norm is at most this is counted as removed by the lasso
ZERO = 1e-8


def _groups(model: nn.Module, layout: ChannelLayout) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(producer conv, its BN) per group (the layout has checked their types)."""
    modules = {canonical_name(n): m for n, m in model.named_modules()}
    return [
        (cast(nn.Conv2d, modules[g.producer]), cast(nn.BatchNorm2d, modules[g.norm]))
        for g in layout.groups
    ]


@torch.no_grad()
def group_norms(model: nn.Module, layout: ChannelLayout) -> list[Tensor]:
    """Per channel group, the norm of each channel's (filter, BN scale, BN shift)."""
    return [
        (conv.weight.flatten(1).pow(2).sum(1) + bn.weight.pow(2) + bn.bias.pow(2)).sqrt()
        for conv, bn in _groups(model, layout)
    ]


@torch.no_grad()
def channel_scores(model: nn.Module, layout: ChannelLayout) -> list[Tensor]:
    """RMS group norms (comparable across layers of different fan-in), on the CPU."""
    return [
        (norms / (conv.weight[0].numel() + 2) ** 0.5).cpu()
        for norms, (conv, _) in zip(group_norms(model, layout), _groups(model, layout))
    ]


@torch.no_grad()
def shrink_groups(model: nn.Module, layout: ChannelLayout, threshold: float) -> None:
    """The group-lasso proximal step: every channel's (filter, γ, β) scaled by
    ``max(0, 1 − threshold / norm)`` — exactly zero where the norm is below ``threshold``."""
    for norms, (conv, bn) in zip(group_norms(model, layout), _groups(model, layout)):
        scale = (1 - threshold / norms.clamp_min(1e-30)).clamp_min(0)
        conv.weight.mul_(scale.view(-1, *[1] * (conv.weight.dim() - 1)).to(conv.weight.dtype))
        bn.weight.mul_(scale.to(bn.weight.dtype))
        bn.bias.mul_(scale.to(bn.bias.dtype))


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
class GroupLasso(StagedPruning):
    """Proximal group-lasso training, then the strongest channels kept, then finetuning."""

    name = "lasso"
    description = "robust group lasso: proximal shrinking of channels, keep the strongest, finetune"
    granularities: ClassVar[tuple[str, ...]] = ("channel",)

    @dataclass(frozen=True)
    class Options:
        #: epochs of lasso training from scratch (None: half of train.epochs)
        sparsify_epochs: int | None = None
        #: floor of the calibrated λ
        lam: float = 1e-4
        #: λ ×= lam_growth after a step whose zero-channel fraction is behind schedule
        lam_growth: float = 1.1
        #: fraction of the stage over which the zero-channel target is reached
        ramp: float = 0.75
        #: peak LR of the fine-tune stage, no warm-up (as the other staged baselines)
        finetune_lr: float = 0.01

        def check(self, key: str) -> None:
            if self.sparsify_epochs is not None and self.sparsify_epochs < 1:
                raise ConfigError(
                    f"{key}.sparsify_epochs: must be >= 1, got {self.sparsify_epochs}"
                )
            if self.lam < 0:
                raise ConfigError(f"{key}.lam: must be >= 0, got {self.lam}")
            if self.lam_growth < 1:
                raise ConfigError(f"{key}.lam_growth: must be >= 1, got {self.lam_growth}")
            if not 0 < self.ramp <= 1:
                raise ConfigError(f"{key}.ramp: must be in (0, 1], got {self.ramp}")
            if self.finetune_lr <= 0:
                raise ConfigError(f"{key}.finetune_lr: must be > 0, got {self.finetune_lr}")

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        if cfg.sparsity.granularity != "channel":
            raise ConfigError(
                "sparsity.method=lasso removes whole channels: set sparsity.granularity=channel "
                "(and compare it with channel-mode methods)"
            )
        super().check_config(cfg)

    @classmethod
    def stage_plan(cls, cfg: Any) -> list[Stage]:
        o, total = cls.options_of(cfg), cfg.train.epochs
        before = split_epochs(total, {"sparsify": o.sparsify_epochs}, {"sparsify": 0.5})
        return staged(total, before, o.finetune_lr)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        try:
            self.layout = ChannelLayout(self.model, self.cfg.sparsity.exclude)
        except ValueError as err:
            raise ConfigError(f"sparsity.method=lasso: {err}") from None
        self.target = round(self.cfg.sparsity.density * self.layout.num_prunable)
        if self.layout.minimum() > self.target:
            raise ConfigError(
                f"sparsity.density={self.cfg.sparsity.density}: one channel per group already "
                f"needs {self.layout.minimum()} weights, more than {self.target}"
            )
        kept = sum(self.layout.uniform_counts(self.target))
        #: the fraction of channels the budget removes: what the lasso should zero
        self.zero_target = 1 - kept / sum(self.layout.sizes)
        self.lam: float | None = None  # calibrated when the sparsify stage begins

    def zero_fraction(self) -> float:
        """Fraction of all channels whose group norm is (numerically) zero."""
        norms = torch.cat([n.cpu() for n in group_norms(self.model, self.layout)])
        return float((norms <= ZERO).float().mean())

    def begin_stage(self, stage: Stage, progress: Progress) -> None:
        if stage.name == "sparsify":
            # shrinking alone (lr·λ per step, half the peak LR on average) zeroes a channel
            # of norm q in the stage: q = the norm below which the budget's cut lies
            norms = torch.cat([n.cpu() for n in group_norms(self.model, self.layout)])
            q = float(torch.quantile(norms.double(), self.zero_target))
            steps = stage.epochs * progress.steps_per_epoch
            peak = stage.lr if stage.lr is not None else self.cfg.train.lr
            self.lam = max(float(self.opts.lam), q / (0.5 * peak * steps))
            progress.log(
                f"lasso: lambda {self.lam:.3g} calibrated to zero {self.zero_target:.0%} of "
                "the channels by proximal shrinking"
            )
        super().begin_stage(stage, progress)

    def scheduled_zeros(self, progress: Progress) -> float:
        """The zero-channel fraction due by now: rising linearly to the target over ``ramp``
        of the stage (a pure function of the step: a resumed run follows the same path)."""
        stage_steps = progress.stage_epochs * progress.steps_per_epoch
        done = progress.step - progress.stage_start * progress.steps_per_epoch
        return self.zero_target * min(1.0, done / max(1.0, self.opts.ramp * stage_steps))

    def after_step(self, progress: Progress) -> None:
        if self.masking is None and self.lam:
            lr = float(self.optimizer.param_groups[0]["lr"])
            shrink_groups(self.model, self.layout, lr * self.lam)
            zero, due = self.zero_fraction(), self.scheduled_zeros(progress)
            if zero < due:  # behind: shrink harder
                self.lam *= float(self.opts.lam_growth)
            elif zero > due + 1 / sum(self.layout.sizes):  # ahead: ease off (never below lam)
                self.lam = max(float(self.opts.lam), self.lam / float(self.opts.lam_growth))
        super().after_step(progress)

    def on_epoch_end(self, progress: Progress) -> dict[str, Any]:
        record = super().on_epoch_end(progress)
        if self.masking is None and self.lam is not None:
            record["lasso"] = {
                "lambda": self.lam,
                "zero_fraction": self.zero_fraction(),
                "target": self.zero_target,
            }
        return record

    def decide_masks(self) -> dict[str, Tensor]:
        masks = strongest_channels(
            channel_scores(self.model, self.layout), self.layout, self.target
        )
        return dict(zip(self.layout.names, masks))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "lasso_lambda": self.lam}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state.items() if k != "lasso_lambda"})
        self.lam = state.get("lasso_lambda")
