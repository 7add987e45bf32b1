"""``hydra``: HYDRA (Sehwag et al., NeurIPS 2020) — learn which pretrained weights to keep.

The release (inspire-group/hydra @9d41c93) runs three jobs; here they are the three stages of
one ``dnr train``, in the release's proportions (100 + 20 + 100 epochs: shares 100/220,
20/220 and the rest of ``train.epochs``, the prune stage at least one epoch):

* ``pretrain`` — dense adversarial training (the shared recipe: ``train.lr``, warm-up, …).
* ``prune`` — every conv / linear weight and bias is frozen at its pretrained value; the
  BatchNorm affine parameters keep training (the release's ``freeze_vars(model, "weight"
  / "bias")`` skip BatchNorm unless ``--freeze-bn``). One importance score per prunable
  weight, initialised as the release's ``initialize_scaled_score``:
  ``s = sqrt(6 / fan_in) · w / max|w|`` per layer (so the first mask is exactly layer-wise
  LWM). The network runs with ``w ⊙ top-k(|s|)``, the same fraction k kept in every layer
  (``GetSubnet`` on ``popup_scores.abs()``); straight through the top-k and the ``abs``, the
  score gradient is ``∂L/∂s = ∂L/∂w_eff ⊙ w ⊙ sign(s)``. Scores are trained by SGD,
  momentum 0.9, weight decay 1e-4, at ``score_lr`` (0.1) on a cosine over the stage's steps
  without warm-up (a pure function of the step: resume needs no schedule state). The stage's
  own LR (``Stage.lr``) is ``score_lr`` too, as the release trains scores and BatchNorm with
  one optimizer.
* ``finetune`` — the mask of the final scores is fixed; the kept weights train again from
  their pretrained values at ``finetune_lr`` (0.01, the release's ``--lr 0.01``) without
  warm-up, with the BatchNorm parameters the prune stage left.

The trainer's optimizer steps every parameter: the method puts the frozen ones back (times
the current mask) after every step, so the trainer needs no special case. As in the release,
each stage starts with fresh optimizer momentum (three jobs, three optimizers).

Remaining departures (shared recipe): the hybrid loss instead of TRADES (β = 6), the trainer's
``train.weight_decay`` / ``train.schedule`` for the BatchNorm parameters and the fine-tune,
a per-step cosine for the scores instead of the release's per-epoch one, and k as each
layer's uniform share of ``round(density · N)`` (the release: ``numel − int((1 − k) · numel)``
per layer; at most one weight apart).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dnr.errors import ConfigError
from dnr.sparsity.base import Progress, Stage, register_method
from dnr.sparsity.lwm import magnitude_masks
from dnr.sparsity.selection import top_k_mask
from dnr.sparsity.staged import StagedPruning, split_epochs, staged
from dnr.statedict import canonical_name

__all__ = ["Hydra", "cosine_lr", "scaled_scores", "score_gradient", "trained_in_prune"]

#: The release's SGD on the scores (configs/configs.yml: momentum 0.9, wd 1e-4).
SCORE_MOMENTUM = 0.9
SCORE_WEIGHT_DECAY = 1e-4
#: Shares of ``train.epochs`` before fine-tuning: the release's 100 / 20 / 100 epochs.
SHARES = {"pretrain": 100 / 220, "prune": 20 / 220}


@torch.no_grad()
def scaled_scores(weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The release's ``initialize_scaled_score``: ``sqrt(6 / fan_in) · w / max|w|`` per
    tensor (fan_in = input channels × kernel size; ``in_features`` for a linear layer)."""
    out = {}
    for name, w in weights.items():
        fan_in = w[0].numel()
        out[name] = math.sqrt(6.0 / fan_in) * w.detach() / w.detach().abs().max().clamp_min(1e-12)
    return out


def score_gradient(grad_eff: Tensor, weight: Tensor, score: Tensor) -> Tensor:
    """``∂L/∂s`` through ``w ⊙ GetSubnet(|s|)``: straight through the top-k, then ``abs``."""
    return grad_eff * weight * score.detach().sign()


def cosine_lr(peak: float, epoch_progress: float, epochs: float) -> float:
    """Cosine from ``peak`` to 0 over ``epochs`` (fractional epoch ``epoch_progress``)."""
    t = min(max(epoch_progress / max(epochs, 1e-12), 0.0), 1.0)
    return 0.5 * peak * (1.0 + math.cos(math.pi * t))


def trained_in_prune(module: nn.Module) -> bool:
    """Whether ``module``'s own parameters train in the prune stage: BatchNorm's (the release's
    ``freeze_vars`` skips ``nn.BatchNorm2d``; SyncBatchNorm is its ``train.sync_bn`` form)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


@register_method
class Hydra(StagedPruning):
    """Dense pretraining, score optimisation with frozen weights, masked finetuning."""

    name = "hydra"
    description = "HYDRA: pretrain, learn importance scores with weights frozen, finetune"

    @dataclass(frozen=True)
    class Options:
        #: dense epochs (None: 100/220 of train.epochs; 0 with train.init_from)
        pretrain_epochs: int | None = None
        #: epochs of score learning (None: 20/220 of train.epochs, at least 1)
        prune_epochs: int | None = None
        #: peak LR of the prune stage: the scores' cosine and the BatchNorm parameters
        score_lr: float = 0.1
        #: peak LR of the fine-tune stage, no warm-up (the release's --lr 0.01)
        finetune_lr: float = 0.01

        def check(self, key: str) -> None:
            for name in ("score_lr", "finetune_lr"):
                if getattr(self, name) <= 0:
                    raise ConfigError(f"{key}.{name}: must be > 0, got {getattr(self, name)}")
            if self.pretrain_epochs is not None and self.pretrain_epochs < 0:
                raise ConfigError(f"{key}.pretrain_epochs: must be >= 0")
            if self.prune_epochs is not None and self.prune_epochs < 1:
                raise ConfigError(f"{key}.prune_epochs: must be >= 1")

    @classmethod
    def stage_plan(cls, cfg: Any) -> list[Stage]:
        o, total = cls.options_of(cfg), cfg.train.epochs
        before = split_epochs(
            total, {"pretrain": o.pretrain_epochs, "prune": o.prune_epochs}, SHARES
        )
        return [
            Stage(s.name, s.epochs, lr=o.score_lr, warmup=False) if s.name == "prune" else s
            for s in staged(total, before, o.finetune_lr)
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scores: dict[str, Tensor] = {}
        self.frozen: dict[str, Tensor] = {}  # canonical name → pretrained value
        self.score_opt: torch.optim.Optimizer | None = None
        self._k: dict[str, int] = {}

    # ------------------------------------------------------------------ the prune stage

    def _frozen_parameters(self) -> dict[str, Tensor]:
        """Every parameter the release freezes in its prune job: all but BatchNorm's."""
        trained = {
            id(p)
            for m in self.model.modules()
            if trained_in_prune(m)
            for p in m.parameters(recurse=False)
        }
        return {
            canonical_name(n): p for n, p in self.model.named_parameters() if id(p) not in trained
        }

    def _start_scores(self, scores: Mapping[str, Tensor], frozen: Mapping[str, Tensor]) -> None:
        self.scores = {n: s.detach().clone().requires_grad_(True) for n, s in scores.items()}
        self._k = self.uniform_budgets(self.weights())  # per-layer k, fixed for the stage
        self.frozen = {n: t.detach().clone() for n, t in frozen.items()}
        self.score_opt = torch.optim.SGD(
            list(self.scores.values()),
            lr=float(self.opts.score_lr),
            momentum=SCORE_MOMENTUM,
            weight_decay=SCORE_WEIGHT_DECAY,
        )
        self._restore()

    def _masks(self) -> dict[str, Tensor]:
        """Each layer's top-k of ``|s|``."""
        return {n: top_k_mask(s.detach().abs(), self._k[n]) for n, s in self.scores.items()}

    @torch.no_grad()
    def _restore(self) -> None:
        """Frozen parameters back to their value; prunable ones times top-k(|s|)."""
        masks = self._masks()
        for name, p in self.model.named_parameters():
            key = canonical_name(name)
            if key in masks:
                p.copy_(self.frozen[key] * masks[key])
            elif key in self.frozen:
                p.copy_(self.frozen[key])

    def score_lr(self, progress: Progress) -> float:
        """The scores' LR for the step just taken: ``score_lr`` on a cosine over the stage,
        at the same fractional epoch as the trainer's schedule."""
        epoch = (progress.step - 1) / progress.steps_per_epoch - progress.stage_start
        return cosine_lr(float(self.opts.score_lr), epoch, progress.stage_epochs)

    def begin_stage(self, stage: Stage, progress: Progress) -> None:
        if stage.name == "prune":
            self.optimizer.state.clear()  # a fresh job's optimizer (the BatchNorm momentum)
            self._start_scores(scaled_scores(self.weights()), self._frozen_parameters())
            progress.log(
                f"hydra: conv/linear weights and biases frozen, BatchNorm trained; scores "
                f"sqrt(6/fan_in)·w/max|w|, SGD lr {self.opts.score_lr} (cosine), "
                f"momentum {SCORE_MOMENTUM}, wd {SCORE_WEIGHT_DECAY}"
            )
        elif stage.name == "finetune":
            with torch.no_grad():  # the pretrained weights, then the learned mask
                for name, p in self.model.named_parameters():
                    key = canonical_name(name)
                    if key in self.frozen:
                        p.copy_(self.frozen[key])
            self.optimizer.state.clear()  # a fresh job's optimizer
            super().begin_stage(stage, progress)  # fix_masks(decide_masks())
            self.scores, self.frozen, self.score_opt, self._k = {}, {}, None, {}

    def decide_masks(self) -> dict[str, Tensor]:
        if not self.scores:  # no score learned (yet): the scaled init's mask, i.e. LWM
            self._k = self.uniform_budgets(self.weights())
            return {
                n: top_k_mask(s.abs(), self._k[n]) for n, s in scaled_scores(self.weights()).items()
            }
        return self._masks()

    def after_step(self, progress: Progress) -> None:
        if self.score_opt is None:
            super().after_step(progress)
            return
        lr = self.score_lr(progress)
        for group in self.score_opt.param_groups:
            group["lr"] = lr
        weights = self.weights()
        for name, score in self.scores.items():
            grad = weights[name].grad  # ∂L/∂w_eff: the model runs with w ⊙ top-k(|s|)
            score.grad = None if grad is None else score_gradient(grad, self.frozen[name], score)
        self.score_opt.step()
        self._restore()

    def on_epoch_end(self, progress: Progress) -> dict[str, Any]:
        if self.score_opt is None:
            return super().on_epoch_end(progress)
        masks = self._masks()  # the network runs at the budget: top-k of every layer
        kept = sum(int(m.sum()) for m in masks.values())
        lwm = magnitude_masks({n: self.frozen[n] for n in masks}, self.cfg.sparsity.density)
        moved = sum(int((m & ~lwm[n]).sum()) for n, m in masks.items())
        return {
            "density": kept / sum(m.numel() for m in masks.values()),
            "hydra": {"kept_not_lwm": moved / max(kept, 1)},  # kept weights LWM would prune
        }

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.score_opt is not None:
            state["hydra"] = {
                "scores": {n: s.detach() for n, s in self.scores.items()},
                "frozen": dict(self.frozen),
                "optimizer": self.score_opt.state_dict(),
            }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        hydra = state.get("hydra")
        if hydra is not None:
            device = next(iter(self.weights().values())).device
            self._start_scores(
                {n: t.to(device) for n, t in hydra["scores"].items()},
                {n: t.to(device) for n, t in hydra["frozen"].items()},
            )
            assert self.score_opt is not None
            self.score_opt.load_state_dict(hydra["optimizer"])
