"""``lwm``: least weight magnitude — train dense, prune once by |w|, fine-tune the fixed mask.

The classic three-step baseline of robust pruning, in one ``dnr train``: a ``pretrain``
stage of adversarial training with every weight, a one-shot magnitude pruning to
``sparsity.density`` (``options.scope``: ``global`` ranks all prunable weights together,
``layer`` keeps the same density in every layer), then a ``finetune`` stage in which the
mask never moves. With ``options.pretrain_epochs: 0`` and ``train.init_from=RUN_DIR`` it
prunes another run's trained dense weights instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from dnr.errors import ConfigError
from dnr.sparsity.base import Progress, Stage, method_options, register_method
from dnr.sparsity.budgets import layer_budgets
from dnr.sparsity.channel_masking import ChannelMasking
from dnr.sparsity.layers import prunable_parameters
from dnr.sparsity.masking import Masking, shared_options
from dnr.sparsity.rewiring import _select
from dnr.sparsity.static import MaskedMethod

__all__ = ["LWM", "magnitude_masks"]

SCOPES = ("global", "layer")


@torch.no_grad()
def magnitude_masks(
    weights: Mapping[str, Tensor], density: float, scope: str = "global"
) -> dict[str, Tensor]:
    """Keep the ``round(density · N)`` largest-|w| weights (ties → lower index).

    ``global``: one ranking over every tensor (layers end at whatever density their
    magnitudes earn); ``layer``: each tensor keeps its uniform share of the budget.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    names = list(weights)
    numels = [weights[n].numel() for n in names]
    scores = [weights[n].detach().abs().flatten().float() for n in names]
    if scope == "global":
        keep = _select(torch.cat(scores), round(density * sum(numels)), largest=True)
        parts = keep.split(numels)
    else:
        counts = layer_budgets(numels, density, "uniform")
        parts = tuple(_select(s, k, largest=True) for s, k in zip(scores, counts))
    return {n: p.view(weights[n].shape) for n, p in zip(names, parts)}


@register_method
class LWM(MaskedMethod):
    """Dense adversarial pretraining, one-shot magnitude pruning, masked fine-tuning."""

    name = "lwm"
    description = "least weight magnitude: train dense, prune by |w| once, fine-tune the mask"
    granularities: ClassVar[tuple[str, ...]] = ("weight",)
    option_defaults = {"pretrain_epochs": None, "scope": "global"}

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        opts = method_options(cfg)
        pre = opts.get("pretrain_epochs")
        if pre is not None and (
            isinstance(pre, bool) or not isinstance(pre, int) or not 0 <= pre < cfg.train.epochs
        ):
            raise ConfigError(
                f"sparsity.options.{cfg.sparsity.method}.pretrain_epochs: must be an integer in "
                f"[0, train.epochs={cfg.train.epochs}), got {pre!r}"
            )
        if opts.get("scope", "global") not in SCOPES:
            raise ConfigError(
                f"sparsity.options.{cfg.sparsity.method}.scope: must be one of {', '.join(SCOPES)}"
            )

    def __init__(self, cfg: Any, model: Any, optimizer: Any, generator: Any) -> None:
        # No mask yet: the weights stay dense until the finetune stage begins.
        super(MaskedMethod, self).__init__(cfg, model, optimizer, generator)
        self.masking: Masking | None = None
        self._initial_layer_density = {}

    def stages(self) -> list[Stage]:
        epochs = self.cfg.train.epochs
        pre = self.option("pretrain_epochs")
        pre = epochs // 2 if pre is None else int(pre)
        finetune = Stage("finetune", epochs - pre)
        return [Stage("pretrain", pre), finetune] if pre > 0 else [finetune]

    def begin_stage(self, stage: Stage, progress: Progress) -> None:
        if stage.name != "finetune":
            return
        masks = magnitude_masks(self._weights(), self.cfg.sparsity.density, self.option("scope"))
        self._build(masks)
        progress.log(
            f"lwm: pruned to density {self.masking.density():.4f} by "  # type: ignore[union-attr]
            f"{self.option('scope')} weight magnitude; the mask is fixed from here on"
        )

    def _build(self, masks: Mapping[str, Tensor]) -> None:
        """Fix ``masks``: per weight, or per channel group (producer -> kept channels)."""
        options = shared_options(self.cfg.sparsity)
        if self.granularity == "channel":
            self.masking = ChannelMasking(  # type: ignore[assignment]
                self.model, self.optimizer, initial_masks=masks, **options
            )
        else:
            self.masking = Masking(
                self.model, self.optimizer, protect_channels=False, initial_masks=masks, **options
            )
        self._initial_layer_density = self.masking.layer_densities()  # type: ignore[union-attr]

    def _weights(self) -> dict[str, torch.nn.Parameter]:
        return prunable_parameters(self.model, self.cfg.sparsity.exclude)

    def _budgets(self, weights: Mapping[str, Tensor]) -> dict[str, int]:
        """Each layer's uniform share of ``round(density · N)``."""
        counts = layer_budgets([w.numel() for w in weights.values()], self.cfg.sparsity.density)
        return dict(zip(weights, counts))

    def after_step(self, progress: Progress) -> None:
        if self.masking is not None:
            self.masking.apply_()

    def on_epoch_end(self, progress: Progress) -> dict[str, Any]:
        if self.masking is None:
            return {"density": 1.0}
        return super().on_epoch_end(progress)

    def density(self) -> float:
        return self.masking.density() if self.masking is not None else 1.0

    def stats(self) -> dict[str, Any]:
        if self.masking is None:
            return {"target_density": self.cfg.sparsity.density, "achieved_density": 1.0}
        return super().stats()

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() if self.masking is not None else {"method": self.name}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "masks" not in state:  # saved during pretraining: still dense
            self.masking = None
            return
        self._build(state["masks"])
        self.masking.load_state_dict(state)  # type: ignore[union-attr]

    def adopt_masks(self, state: Mapping[str, Any]) -> None:
        raise ValueError("lwm finds its own mask by magnitude; set train.init_masks=false")
