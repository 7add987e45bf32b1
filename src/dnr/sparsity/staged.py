"""Staged pruning — train, decide a mask once, fine-tune it: the shape of lwm, admm, lasso, hydra.

Every staged baseline of the field runs as its authors ran it in separate jobs: a dense
adversarial ``pretrain``, sometimes a method-specific middle stage (ADMM's penalty, HYDRA's
score search, the lasso's shrinking), then one mask decision and a ``finetune`` of the fixed
mask. Here those jobs are the stages of one run. A stage owns its recipe (``Stage.lr``,
``Stage.warmup``): fine-tuning trained weights starts at the release's fine-tune LR without a
warm-up, as a fresh fine-tuning job would. A subclass fills in :meth:`stages` and the pure
decision :meth:`decide_masks`; this base owns the masks once they exist.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dnr.errors import ConfigError
from dnr.sparsity.base import Progress, SparsityMethod, Stage
from dnr.sparsity.budgets import layer_budgets
from dnr.sparsity.channel_masking import ChannelMasking
from dnr.sparsity.layers import prunable_parameters
from dnr.sparsity.mask import MaskSettings
from dnr.sparsity.masking import Masking
from dnr.sparsity.static import MaskedMethod

__all__ = ["StagedPruning", "split_epochs", "staged"]


def split_epochs(
    total: int, given: Mapping[str, int | None], shares: Mapping[str, float]
) -> dict[str, int]:
    """Epochs of the stages before fine-tuning: a given count as it is, ``None`` as
    ``round(share · total)`` (at least 1), so a short run keeps the release's proportions."""
    return {
        name: int(n) if n is not None else max(1, round(shares[name] * total))
        for name, n in given.items()
    }


def staged(total: int, before: Mapping[str, int], finetune_lr: float) -> list[Stage]:
    """The stages ``before`` (name → epochs; empty ones left out), then ``finetune`` with
    the rest of ``total`` at ``finetune_lr`` without warm-up — the recipe of a fine-tuning
    job that starts from trained weights."""
    plan = [Stage(name, n) for name, n in before.items() if n > 0]
    return [*plan, Stage("finetune", total - sum(before.values()), lr=finetune_lr, warmup=False)]


class StagedPruning(MaskedMethod):
    """Dense until ``finetune`` begins; then the mask of :meth:`decide_masks`, fixed."""

    granularities: ClassVar[tuple[str, ...]] = ("weight",)

    def __init__(
        self, cfg: Any, model: nn.Module, optimizer: torch.optim.Optimizer, generator: Any
    ) -> None:
        # No mask yet: the weights stay dense until the finetune stage begins.
        SparsityMethod.__init__(self, cfg, model, optimizer, generator)
        # None until the mask is fixed (MaskedMethod's is never None: hence not MaskSet here)
        self.masking: Any = None
        self._initial_layer_density: dict[str, float] = {}

    # ------------------------------------------------------------------ what a subclass says

    @classmethod
    @abstractmethod
    def stage_plan(cls, cfg: Any) -> list[Stage]:
        """The stages for ``cfg``, ending with :func:`finetune_stage` (checked early, by
        :meth:`check_config`, before anything trains)."""

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        stages = cls.stage_plan(cfg)
        if stages[-1].name != "finetune" or stages[-1].epochs < 1:
            shown = " + ".join(f"{s.name} {s.epochs}" for s in stages[:-1])
            raise ConfigError(
                f"sparsity.options.{cfg.sparsity.method}: stages of {shown} epochs leave no "
                f"epoch to fine-tune in train.epochs={cfg.train.epochs}"
            )

    def stages(self) -> list[Stage]:
        return self.stage_plan(self.cfg)

    @abstractmethod
    def decide_masks(self) -> dict[str, Tensor]:
        """The masks to fine-tune (weight name, or channel group in channel mode → mask)."""

    # ------------------------------------------------------------------ shared parts

    def begin_stage(self, stage: Stage, progress: Progress) -> None:
        if stage.name == "finetune":
            self.optimizer.state.clear()  # a fine-tuning job starts with fresh momentum
            self.fix_masks(self.decide_masks())
            progress.log(
                f"{self.name}: pruned to density {self.density():.4f}; the mask is fixed "
                f"from here on (fine-tune LR {stage.lr}, no warm-up)"
            )

    def fix_masks(self, masks: Mapping[str, Tensor]) -> None:
        """Fix ``masks``: per weight, or per channel group (producer -> kept channels)."""
        settings = MaskSettings.from_config(self.cfg.sparsity).replace(init="uniform")
        if self.granularity == "channel":
            self.masking = ChannelMasking(self.model, self.optimizer, settings, initial_masks=masks)
        else:
            self.masking = Masking(
                self.model,
                self.optimizer,
                settings.replace(protect_channels=False),
                initial_masks=masks,
            )
        self._initial_layer_density = self.masking.layer_densities()

    def weights(self) -> dict[str, nn.Parameter]:
        """The prunable weights (``sparsity.exclude`` left out)."""
        return prunable_parameters(self.model, self.cfg.sparsity.exclude)

    def uniform_budgets(self, weights: Mapping[str, Tensor]) -> dict[str, int]:
        """Each tensor's uniform share of ``round(density · N)``."""
        counts = layer_budgets([w.numel() for w in weights.values()], self.cfg.sparsity.density)
        return dict(zip(weights, counts))

    # ------------------------------------------------------------------ the masks, once fixed

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
        if "masks" not in state:  # saved before the fine-tune stage: still dense
            self.masking = None
            return
        self.fix_masks(state["masks"])
        self.masking.load_state_dict(state)

    def adopt_masks(self, state: Mapping[str, Any]) -> None:
        raise ValueError(f"{self.name} finds its own mask; set train.init_masks=false")
