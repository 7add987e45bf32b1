"""``lasso``: robust group-lasso channel pruning — shrink whole channels to zero, cut, fine-tune.

A ``sparsify`` stage of adversarial training with a group-lasso penalty
``λ · Σ_c √p_c · ||(filter_c, γ_c, β_c)||₂`` on channels (the filter *and* its BatchNorm
scale and shift: BN undoes any shrinking of the filter alone, and a live shift keeps a dead
filter's channel on; ``√p_c``, the root of the group's size, is Yuan & Lin's weighting, which
makes the penalty act on a channel's RMS so wide filters are not favoured), applied as a
**proximal step** after every optimizer step — group soft-thresholding, so channels reach
exactly zero (a penalty added to the loss only oscillates around zero with SGD).

The cut keeps each layer's uniform share of the budget (the static channel mask's
allocation), its strongest channels by group RMS: norms are not comparable across layers
(fan-in sets a filter's scale, and BN undoes it), and a global ranking measured at the
comparison's scale kept one channel in each of the last five layers. The penalty falls on
the channels **below the cut** — those it would remove now, re-decided a hundred times a
stage, so a channel the gradients make strong climbs out of it — as growing regularisation
does (Wang et al., ICLR 2021, GReg-1): a uniform penalty strong enough to switch off the
budget's share within a stage shrinks the kept channels with it, and measured at the
comparison's scale it left the network at chance after one epoch. The per-step shrink of a
channel's RMS, ``threshold = lr·λ``, is paced, not guessed: at every re-decision it is set
so that shrinking alone would bring the strongest channel below the cut to zero by the end
of the ``ramp`` (the weakest go first; a channel the gradients defend raises the pace at the
next re-decision), never below group lasso at ``lam``; pacing the threshold, not λ, keeps a
warm-up's tiny learning rate from winding λ up. Both are logged (``lasso`` in
``metrics.jsonl``). At the cut, a kept channel that is exactly zero is re-initialised (a
zero channel gets no gradient and would waste its budget), and a ``finetune`` stage at
``finetune_lr`` fixes the mask. Channel granularity only: its result is compared with
channel-mode methods and exports with ``dnr export --format compact``. (DNR's lasso
baseline released no training code; this is the standard proximal method, targeted as
above.)
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
from dnr.sparsity.selection import top_k_mask
from dnr.sparsity.staged import StagedPruning, split_epochs, staged
from dnr.statedict import canonical_name

__all__ = ["GroupLasso", "channel_scores", "group_norms", "revive_channels", "shrink_groups"]

#: a channel whose group norm is at most this is counted as removed by the lasso
ZERO = 1e-8

#: how often a sparsify stage re-decides which channels are below the cut
RECUTS = 100


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


def _group_sizes(model: nn.Module, layout: ChannelLayout) -> list[int]:
    """Entries of one channel's (filter, γ, β) per group: ``p`` of the √p weighting."""
    return [conv.weight[0].numel() + 2 for conv, _ in _groups(model, layout)]


@torch.no_grad()
def channel_scores(model: nn.Module, layout: ChannelLayout) -> list[Tensor]:
    """RMS group norms (the root of the group's size divided out), on the CPU."""
    return [
        (norms / size**0.5).cpu()
        for norms, size in zip(group_norms(model, layout), _group_sizes(model, layout))
    ]


@torch.no_grad()
def shrink_groups(
    model: nn.Module, layout: ChannelLayout, threshold: float, targets: list[Tensor]
) -> None:
    """The group-lasso proximal step on the ``targets`` channels (a bool mask per group):
    each one's (filter, γ, β) scaled by ``max(0, 1 − threshold·√p / norm)`` — its RMS lowered
    by ``threshold``, exactly zero where the RMS is below it."""
    for rms, target, (conv, bn) in zip(
        channel_scores(model, layout), targets, _groups(model, layout)
    ):
        scale = torch.where(target, (1 - threshold / rms.clamp_min(1e-30)).clamp_min(0), 1.0)
        scale = scale.to(conv.weight.device)
        conv.weight.mul_(scale.view(-1, *[1] * (conv.weight.dim() - 1)).to(conv.weight.dtype))
        bn.weight.mul_(scale.to(bn.weight.dtype))
        bn.bias.mul_(scale.to(bn.bias.dtype))


@torch.no_grad()
def revive_channels(
    model: nn.Module, layout: ChannelLayout, kept: list[Tensor], generator: torch.Generator
) -> int:
    """Re-initialise the kept channels whose filter and BN scale are exactly zero
    (Kaiming-normal filter, γ = 1, β = 0): BN normalises a zero filter's output to 0, so
    the filter and γ get no gradient and only the constant β could move — a kept one would
    waste its budget. Returns how many there were."""
    revived = 0
    for mask, (conv, bn) in zip(kept, _groups(model, layout)):
        silent = (conv.weight.detach().flatten(1).abs().sum(1) == 0) & (bn.weight.detach() == 0)
        dead = (mask.cpu() & silent.cpu()).nonzero().flatten()
        if len(dead) == 0:
            continue
        fan_in = conv.weight[0].numel()
        fresh = torch.randn((len(dead), *conv.weight.shape[1:]), generator=generator)
        index = dead.to(conv.weight.device)
        conv.weight[index] = (fresh * (2 / fan_in) ** 0.5).to(conv.weight)
        bn.weight[index], bn.bias[index] = 1.0, 0.0
        if bn.running_mean is not None and bn.running_var is not None:  # stale: all zero
            bn.running_mean[index], bn.running_var[index] = 0.0, 1.0
        revived += len(dead)
    return revived


def strongest_channels(scores: list[Tensor], counts: list[int]) -> list[Tensor]:
    """Kept masks: the ``counts[g]`` strongest channels of each group ``g``."""
    return [top_k_mask(score, k) for score, k in zip(scores, counts)]


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
        #: floor of λ: the shrink is never weaker than plain group lasso at this λ
        lam: float = 1e-4
        #: fraction of the stage by whose end the channels below the cut are zero
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
            s = self.cfg.sparsity
            self.layout = ChannelLayout(self.model, s.exclude, s.budget)
        except ValueError as err:
            raise ConfigError(f"sparsity.method=lasso: {err}") from None
        self.target = self.layout.target(self.cfg.sparsity.density)
        try:  # channels kept per group: the uniform fraction of the budget, as the static mask
            self.counts = self.layout.uniform_counts(self.target)
        except ValueError as err:
            raise ConfigError(f"sparsity.density={self.cfg.sparsity.density}: {err}") from None
        self.cut: list[Tensor] | None = None  # channels below the cut (sparsify stage)
        self.threshold: float | None = None  # per-step RMS shrink, set when sparsify begins
        self.lam: float | None = None  # the λ of the last step (threshold / lr), logged

    @property
    def zero_target(self) -> float:
        """The share of channels below the cut: what the lasso should switch off."""
        if self.cut is None:
            return 0.0
        return sum(int(c.sum()) for c in self.cut) / sum(self.layout.sizes)

    def zero_fraction(self) -> float:
        """Fraction of all channels whose group norm is (numerically) zero."""
        norms = torch.cat([n.cpu() for n in group_norms(self.model, self.layout)])
        return int((norms <= ZERO).sum()) / len(norms)

    def recut(self, progress: Progress) -> None:
        """Re-decide the channels below the cut and the pace:
        the threshold that brings the strongest of them to zero by the end of the ramp."""
        scores = channel_scores(self.model, self.layout)
        self.cut = [~k for k in strongest_channels(scores, self.counts)]
        done, total = self._stage_steps(progress)
        remaining = max(1.0, self.opts.ramp * total - done)
        below = torch.cat(scores)[torch.cat(self.cut)]
        self.threshold = float(below.max()) / remaining if len(below) else 0.0

    def begin_stage(self, stage: Stage, progress: Progress) -> None:
        if stage.name == "sparsify":
            self.recut(progress)
            progress.log(
                f"lasso: shrinking the {self.zero_target:.0%} of channels below the cut to "
                f"zero by {self.opts.ramp:.0%} of the stage ({self.threshold:.3g} RMS a step)"
            )
        super().begin_stage(stage, progress)  # at finetune: the cut
        if stage.name == "finetune":
            self.threshold = self.cut = None
            # kept channels the lasso left at exactly zero restart from a fresh init (seeded
            # by train.seed: a pure function of the run), else they would waste their budget
            kept = [self.masking.masks[n] for n in self.layout.names]
            generator = torch.Generator().manual_seed(int(self.cfg.train.seed))
            revived = revive_channels(self.model, self.layout, kept, generator)
            if revived:
                progress.log(f"lasso: {revived} kept channels were exactly zero: re-initialised")

    def _stage_steps(self, progress: Progress) -> tuple[int, int]:
        """(steps done in this stage, steps in it): a pure function of the step, so a
        resumed run re-decides at the same steps."""
        done = progress.step - progress.stage_start * progress.steps_per_epoch
        return done, progress.stage_epochs * progress.steps_per_epoch

    def after_step(self, progress: Progress) -> None:
        if self.masking is None and self.cut is not None:
            done, total = self._stage_steps(progress)
            if done % max(1, round(total / RECUTS)) == 0:
                self.recut(progress)
            assert self.threshold is not None
            lr = float(self.optimizer.param_groups[0]["lr"])
            shrink = max(self.threshold, lr * float(self.opts.lam))
            shrink_groups(self.model, self.layout, shrink, self.cut)
            self.lam = shrink / lr if lr > 0 else None
        super().after_step(progress)

    def on_epoch_end(self, progress: Progress) -> dict[str, Any]:
        record = super().on_epoch_end(progress)
        if self.masking is None and self.threshold is not None:
            record["lasso"] = {
                "threshold": self.threshold,
                "lambda": self.lam,
                "zero_fraction": self.zero_fraction(),
                "target": self.zero_target,
            }
        return record

    def decide_masks(self) -> dict[str, Tensor]:
        masks = strongest_channels(channel_scores(self.model, self.layout), self.counts)
        return dict(zip(self.layout.names, masks))

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "lasso_threshold": self.threshold,
            "lasso_lambda": self.lam,
            "lasso_cut": self.cut,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        mine = ("lasso_threshold", "lasso_lambda", "lasso_cut")
        super().load_state_dict({k: v for k, v in state.items() if k not in mine})
        self.threshold, self.lam = state.get("lasso_threshold"), state.get("lasso_lambda")
        cut = state.get("lasso_cut")
        self.cut = [torch.as_tensor(c, dtype=torch.bool).cpu() for c in cut] if cut else None
