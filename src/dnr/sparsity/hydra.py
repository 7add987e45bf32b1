"""``hydra``: HYDRA (Sehwag et al., NeurIPS 2020) — learn which pretrained weights to keep.

Three stages in one ``dnr train``: dense adversarial ``pretrain``; a ``prune`` stage in which
every parameter is frozen at its pretrained value and an importance score per weight,
initialised proportional to ``|w|``, is trained under the adversarial (hybrid) loss: the
network runs with ``w ⊙ top-k(scores)`` per layer and, straight through the top-k, the
score gradient is ``∂L/∂w_eff ⊙ w``; then ``finetune``: the mask of the final scores is
fixed and the kept weights train again. k is each layer's uniform share of
``round(density · N)``, as in HYDRA. Options: ``pretrain_epochs``, ``prune_epochs``
(default a third of the run each), ``score_lr`` (0.1; SGD, momentum 0.9, on the scores).

The frozen weights are kept by restoring them after every optimizer step (the trainer's
optimizer moves them; the method puts them back), so the trainer needs no special case.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from dnr.errors import ConfigError
from dnr.sparsity.admm import check_three_stages, three_stages
from dnr.sparsity.base import Progress, Stage, method_options, register_method
from dnr.sparsity.lwm import LWM
from dnr.sparsity.rewiring import _select

__all__ = ["Hydra", "top_k_mask"]


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` largest scores (ties → lower index)."""
    return _select(scores.detach().flatten(), k, largest=True).view(scores.shape)


@register_method
class Hydra(LWM):
    """Dense pretraining, score optimisation with frozen weights, masked finetuning."""

    name = "hydra"
    description = "HYDRA: pretrain, learn importance scores with weights frozen, finetune"
    option_defaults = {"pretrain_epochs": None, "prune_epochs": None, "score_lr": 0.1}

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        check_three_stages(cfg, "prune")
        lr = method_options(cfg).get("score_lr", cls.option_defaults["score_lr"])
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
            raise ConfigError(
                f"sparsity.options.{cfg.sparsity.method}.score_lr: must be a positive number, "
                f"got {lr!r}"
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scores: dict[str, Tensor] = {}
        self.frozen: dict[str, Tensor] = {}
        self.score_opt: torch.optim.Optimizer | None = None
        self._k: dict[str, int] = {}

    def stages(self) -> list[Stage]:
        return three_stages(self.cfg, "prune")

    def _start_scores(self, scores: Mapping[str, Tensor], frozen: Mapping[str, Tensor]) -> None:
        self.scores = {n: s.detach().clone().requires_grad_(True) for n, s in scores.items()}
        self._k = self._budgets(self._weights())  # per-layer k, fixed for the stage
        self.frozen = {n: t.detach().clone() for n, t in frozen.items()}
        self.score_opt = torch.optim.SGD(
            list(self.scores.values()), lr=float(self.option("score_lr")), momentum=0.9
        )
        self._restore()

    @torch.no_grad()
    def _restore(self) -> None:
        """Every parameter back to its frozen value; prunable ones times top-k(scores)."""
        budgets = self._k
        for name, p in self.model.named_parameters():
            key = name.removeprefix("module.")
            if key in self.scores:
                p.copy_(self.frozen[key] * top_k_mask(self.scores[key], budgets[key]))
            elif key in self.frozen:
                p.copy_(self.frozen[key])

    def begin_stage(self, stage: Stage, progress: Progress) -> None:
        if stage.name == "prune":
            weights = self._weights()
            frozen = {n.removeprefix("module."): p for n, p in self.model.named_parameters()}
            scale = {n: w.detach().abs().max().clamp_min(1e-12) for n, w in weights.items()}
            scores = {n: w.detach().abs() / scale[n] for n, w in weights.items()}  # ∝ |w|
            self._start_scores(scores, frozen)
            progress.log("hydra: weights frozen; learning importance scores")
        elif stage.name == "finetune":
            budgets = self._budgets(self._weights())
            masks = {n: top_k_mask(s, budgets[n]) for n, s in self.scores.items()}
            with torch.no_grad():  # the pretrained weights, then the learned mask
                for name, p in self.model.named_parameters():
                    p.copy_(self.frozen[name.removeprefix("module.")])
            self.scores, self.frozen, self.score_opt = {}, {}, None
            self.optimizer.state.clear()  # momentum of the frozen phase is meaningless
            self._build(masks)
            progress.log(f"hydra: mask of the learned scores fixed, density {self.density():.4f}")

    def after_step(self, progress: Progress) -> None:
        if self.score_opt is None:
            super().after_step(progress)
            return
        weights = self._weights()
        for name, score in self.scores.items():  # straight through top-k: dL/ds = dL/dw_eff ⊙ w
            grad = weights[name].grad
            score.grad = None if grad is None else grad.detach() * self.frozen[name]
        self.score_opt.step()
        self._restore()

    def on_epoch_end(self, progress: Progress) -> dict[str, Any]:
        if self.score_opt is None:
            return super().on_epoch_end(progress)
        weights = self._weights()  # the network runs at the budget: top-k of every layer
        kept = sum(self._budgets(weights).values())
        return {"density": kept / sum(w.numel() for w in weights.values())}

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
            device = next(iter(self._weights().values())).device
            self._start_scores(
                {n: t.to(device) for n, t in hydra["scores"].items()},
                {n: t.to(device) for n, t in hydra["frozen"].items()},
            )
            assert self.score_opt is not None
            self.score_opt.load_state_dict(hydra["optimizer"])

    def adopt_masks(self, state: Mapping[str, Any]) -> None:
        raise ValueError("hydra learns its own mask; set train.init_masks=false")
