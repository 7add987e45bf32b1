"""``lwm``: least weight magnitude — train dense, prune once by |w|, fine-tune the fixed mask.

The classic baseline of robust pruning (the LWM rows of HYDRA's tables), in one
``dnr train``: a ``pretrain`` stage of adversarial training with every weight, a one-shot
magnitude pruning to ``sparsity.density`` (``options.scope``: ``layer``, the reference, keeps
the same density in every layer; ``global`` ranks all prunable weights together), then a
``finetune`` stage at ``finetune_lr`` (0.01, HYDRA's fine-tune LR; no warm-up) in which the
mask never moves. With ``options.pretrain_epochs: 0`` and ``train.init_from=RUN_DIR`` it
prunes another run's trained dense weights instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from dnr.errors import ConfigError
from dnr.sparsity.base import Stage, register_method
from dnr.sparsity.budgets import layer_budgets
from dnr.sparsity.selection import select_k
from dnr.sparsity.staged import StagedPruning, split_epochs, staged

__all__ = ["LWM", "magnitude_masks"]

SCOPES = ("layer", "global")


@torch.no_grad()
def magnitude_masks(
    weights: Mapping[str, Tensor], density: float, scope: str = "layer"
) -> dict[str, Tensor]:
    """Keep the ``round(density · N)`` largest-|w| weights (ties → lower index).

    ``layer``: each tensor keeps its uniform share of the budget; ``global``: one ranking
    over every tensor (layers end at whatever density their magnitudes earn).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    names = list(weights)
    numels = [weights[n].numel() for n in names]
    scores = [weights[n].detach().abs().flatten().float() for n in names]
    if scope == "global":
        keep = select_k(torch.cat(scores), round(density * sum(numels)), largest=True)
        parts = keep.split(numels)
    else:
        counts = layer_budgets(numels, density, "uniform")
        parts = tuple(select_k(s, k, largest=True) for s, k in zip(scores, counts))
    return {n: p.view(weights[n].shape) for n, p in zip(names, parts)}


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")


@register_method
class LWM(StagedPruning):
    """Dense adversarial pretraining, one-shot magnitude pruning, masked fine-tuning."""

    name = "lwm"
    description = "least weight magnitude: train dense, prune by |w| once (per layer), fine-tune"

    @dataclass(frozen=True)
    class Options:
        #: dense epochs before pruning (None: half of train.epochs; 0 with train.init_from)
        pretrain_epochs: int | None = None
        #: ``layer`` (the reference LWM: every layer at the density) or ``global``
        scope: Literal["layer", "global"] = "layer"
        #: peak LR of the fine-tune stage (HYDRA's fine-tuning: 0.01)
        finetune_lr: float = 0.01

        def check(self, key: str) -> None:
            _positive(f"{key}.finetune_lr", self.finetune_lr)
            if self.pretrain_epochs is not None and self.pretrain_epochs < 0:
                raise ConfigError(
                    f"{key}.pretrain_epochs: must be >= 0, got {self.pretrain_epochs}"
                )

    @classmethod
    def stage_plan(cls, cfg: Any) -> list[Stage]:
        opts = cls.options_of(cfg)
        before = split_epochs(
            cfg.train.epochs, {"pretrain": opts.pretrain_epochs}, {"pretrain": 0.5}
        )
        return staged(cfg.train.epochs, before, opts.finetune_lr)

    def decide_masks(self) -> dict[str, Tensor]:
        return magnitude_masks(self.weights(), self.cfg.sparsity.density, self.opts.scope)
