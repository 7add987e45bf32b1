"""``admm``: robust ADMM pruning (Ye et al., ICCV 2019), per-layer budgets, weights or filters.

Three stages in one ``dnr train``, as the release's three jobs: dense adversarial
``pretrain``; an ``admm`` stage at ``stage_lr`` (0.01) that adds
``ρ/2 · Σ_l ||W_l − Z_l + U_l||²`` to the hybrid loss, where ``updates`` times, evenly
spaced over the stage's steps, ``Z_l`` becomes ``W_l + U_l`` projected onto "at most k_l
nonzeros" (its k_l largest entries), ``U_l += W_l − Z_l`` accumulates the residual and ρ
grows ×``rho_growth`` (the release: ρ from 1e-3, ×1.3 per update, an update every ~20 epochs
of a ~200-epoch stage: 10 updates); then hard pruning to each layer's k_l largest weights
and masked adversarial ``finetune`` at ``stage_lr``. Like the release, only conv layers are
constrained (``dense_linear``): the classifier stays dense and the convs share what is left
of ``round(density · N)``, each at the same density. With ``sparsity.granularity: channel``
the constraint is on output channels (filter pruning): each channel group keeps its uniform
channel count of the channel-mode budget, Z keeps the largest-norm filters, and the
finetune stage fixes those channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dnr.errors import ConfigError
from dnr.sparsity.base import Progress, Stage, register_method
from dnr.sparsity.budgets import layer_budgets
from dnr.sparsity.channels import ChannelLayout
from dnr.sparsity.selection import top_k_mask, top_rows
from dnr.sparsity.staged import StagedPruning, split_epochs, staged
from dnr.statedict import canonical_name

__all__ = ["ADMM", "project", "project_rows"]


@torch.no_grad()
def project_rows(x: Tensor, k: int) -> Tensor:
    """``x`` with all but its ``k`` largest-norm output channels (rows) set to 0."""
    return x * top_rows(x, k).view(-1, *[1] * (x.dim() - 1)).to(x.dtype)


@torch.no_grad()
def project(x: Tensor, k: int) -> Tensor:
    """``x`` with all but its ``k`` largest-|x| entries set to 0 (ties → lower index)."""
    return x * top_k_mask(x.abs(), k).to(x.dtype)


def linear_weights(model: nn.Module) -> set[str]:
    """Canonical names of the weights of ``nn.Linear`` layers (the classifier)."""
    return {
        canonical_name(f"{name}.weight")
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
    }


def conv_only_budgets(
    weights: Mapping[str, Tensor], dense: set[str], density: float
) -> dict[str, int]:
    """``round(density · N)`` with the ``dense`` tensors kept whole and the others sharing
    the rest at one density (``ValueError`` if the dense ones alone exceed the budget)."""
    total = round(density * sum(w.numel() for w in weights.values()))
    free = {n: w.numel() for n, w in weights.items() if n not in dense}
    rest = total - sum(w.numel() for n, w in weights.items() if n in dense)
    if rest < 0 or not free:
        raise ValueError(
            f"density {density}: the dense classifier alone needs more than the "
            f"{total} weights of the budget; set sparsity.options.admm.dense_linear=false"
        )
    counts = layer_budgets(list(free.values()), rest / sum(free.values()))
    budgets = dict(zip(free, counts))
    return {n: budgets.get(n, w.numel()) for n, w in weights.items()}


@register_method
class ADMM(StagedPruning):
    """Dense pretraining, ADMM towards per-layer sparsity, hard pruning, masked finetuning."""

    name = "admm"
    description = "robust ADMM: dense pretrain, ADMM to per-layer sparsity, prune, finetune"
    granularities: ClassVar[tuple[str, ...]] = ("weight", "channel")

    @dataclass(frozen=True)
    class Options:
        #: dense epochs (None: a third of train.epochs, as the release's equal stages)
        pretrain_epochs: int | None = None
        #: epochs of the ADMM stage (None: a third of train.epochs)
        admm_epochs: int | None = None
        #: ρ at the start of the ADMM stage (release: 1e-3)
        rho: float = 1e-3
        #: ρ ×= rho_growth at every Z/U update (release: 1.3)
        rho_growth: float = 1.3
        #: Z/U updates in the ADMM stage, evenly spaced in steps (release: every ~20 of ~200)
        updates: int = 10
        #: peak LR of the ADMM and fine-tune stages, no warm-up (release: 0.01)
        stage_lr: float = 0.01
        #: keep nn.Linear layers dense, as the release constrains conv layers only
        dense_linear: bool = True

        def check(self, key: str) -> None:
            for name in ("rho", "rho_growth", "stage_lr"):
                if getattr(self, name) <= 0:
                    raise ConfigError(f"{key}.{name}: must be > 0, got {getattr(self, name)}")
            if self.updates < 1:
                raise ConfigError(f"{key}.updates: must be >= 1, got {self.updates}")
            for name in ("pretrain_epochs", "admm_epochs"):
                value = getattr(self, name)
                if value is not None and value < (0 if name == "pretrain_epochs" else 1):
                    raise ConfigError(f"{key}.{name}: must be >= {int(name != 'pretrain_epochs')}")

    @classmethod
    def stage_plan(cls, cfg: Any) -> list[Stage]:
        o, total = cls.options_of(cfg), cfg.train.epochs
        before = split_epochs(
            total,
            {"pretrain": o.pretrain_epochs, "admm": o.admm_epochs},
            {"pretrain": 1 / 3, "admm": 1 / 3},
        )
        plan = staged(total, before, o.stage_lr)
        return [
            Stage(s.name, s.epochs, lr=o.stage_lr, warmup=False) if s.name == "admm" else s
            for s in plan
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.z: dict[str, Tensor] = {}
        self.u: dict[str, Tensor] = {}
        self.rho = float(self.opts.rho)
        self._k: dict[str, int] | None = None  # the constraint's k per weight (lazy)
        self._dense: set[str] = set()  # weights kept dense (the classifier)
        self._constrained()  # a budget the constraint cannot meet fails before training

    def _constrained(self) -> tuple[dict[str, nn.Parameter], dict[str, int]]:
        """The weights under the sparsity constraint and each one's k: entries per layer
        (weight mode), or output channels per channel group's producer (channel mode)."""
        weights = self.weights()
        if self._k is None:  # fixed by the architecture and the budget: computed once
            if self.granularity != "channel":
                dense = linear_weights(self.model) if self.opts.dense_linear else set()
                try:
                    budgets = conv_only_budgets(weights, dense, self.cfg.sparsity.density)
                except ValueError as err:
                    raise ConfigError(f"sparsity.method=admm: {err}") from None
                self._dense = {n for n in weights if n in dense}
                self._k = {n: k for n, k in budgets.items() if n not in dense}
            else:
                try:
                    s = self.cfg.sparsity
                    layout = ChannelLayout(self.model, s.exclude, s.budget)
                    counts = layout.uniform_counts(layout.target(s.density))
                except ValueError as err:
                    raise ConfigError(f"sparsity.method=admm: {err}") from None
                names = [f"{g}.weight" for g in layout.names]
                self._k = dict(zip(names, counts))
        return {n: weights[n] for n in self._k}, self._k

    def _project(self, x: Tensor, k: int) -> Tensor:
        return project_rows(x, k) if self.granularity == "channel" else project(x, k)

    @torch.no_grad()
    def _update(self) -> None:
        """Z = proj(W + U); U += W − Z; ρ grows."""
        weights, budgets = self._constrained()
        for name, w in weights.items():
            self.z[name] = self._project(w.detach() + self.u[name], budgets[name])
            self.u[name] += w.detach() - self.z[name]
        self.rho *= float(self.opts.rho_growth)

    def _update_due(self, progress: Progress) -> bool:
        """``updates`` Z/U updates, evenly spaced over the ADMM stage's steps (a pure
        function of the step, so a resumed run updates where an uninterrupted one does)."""
        stage_steps = progress.stage_epochs * progress.steps_per_epoch
        done = progress.step - progress.stage_start * progress.steps_per_epoch
        updates = int(self.opts.updates)  # the j-th falls on the first step >= j·steps/updates
        return (
            0 < done <= stage_steps
            and (done * updates) // stage_steps > ((done - 1) * updates) // stage_steps
        )

    def begin_stage(self, stage: Stage, progress: Progress) -> None:
        if stage.name == "admm":
            self.optimizer.state.clear()  # the ADMM stage is a new job in the release
            weights, budgets = self._constrained()
            self.u = {n: torch.zeros_like(w) for n, w in weights.items()}
            self.z = {n: self._project(w.detach(), budgets[n]) for n, w in weights.items()}
            progress.log(
                f"admm: rho {self.rho:g} (x{self.opts.rho_growth:g} at each of "
                f"{self.opts.updates} Z/U updates), {self.granularity} budgets per layer"
                + (", classifier dense" if self._dense else "")
            )
        elif stage.name == "finetune":
            self.z, self.u = {}, {}
            super().begin_stage(stage, progress)

    def decide_masks(self) -> dict[str, Tensor]:
        weights, budgets = self._constrained()
        if self.granularity == "channel":  # each group's k largest-norm filters
            return {n.removesuffix(".weight"): top_rows(w, budgets[n]) for n, w in weights.items()}
        masks = {n: top_k_mask(w.abs(), budgets[n]) for n, w in weights.items()}
        every = self.weights()
        masks.update({n: torch.ones_like(every[n], dtype=torch.bool) for n in self._dense})
        return {n: masks[n] for n in every}  # in the model's order

    def loss_term(self, model: nn.Module) -> Tensor | None:
        if not self.z:
            return None
        weights, _ = self._constrained()
        total = torch.stack(
            [((w - self.z[n] + self.u[n]) ** 2).sum() for n, w in weights.items()]
        ).sum()
        return 0.5 * self.rho * total

    def after_step(self, progress: Progress) -> None:
        super().after_step(progress)
        if self.z and self._update_due(progress):
            self._update()

    def on_epoch_end(self, progress: Progress) -> dict[str, Any]:
        record = super().on_epoch_end(progress)
        if self.z:
            residual = sum(
                float((w.detach() - self.z[n]).norm() ** 2)
                for n, w in self._constrained()[0].items()
            )
            record["admm"] = {"rho": self.rho, "residual": residual**0.5}
        return record

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.z:
            state["admm"] = {"rho": self.rho, "z": dict(self.z), "u": dict(self.u)}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        admm = state.get("admm")
        if admm is not None:
            device = next(iter(self.weights().values())).device
            self._constrained()
            self.rho = float(admm["rho"])
            self.z = {n: t.to(device) for n, t in admm["z"].items()}
            self.u = {n: t.to(device) for n, t in admm["u"].items()}
