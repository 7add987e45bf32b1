"""``admm``: robust ADMM pruning (Ye et al., ICCV 2019), per-layer budgets, weights or filters.

Three stages in one ``dnr train``: dense adversarial ``pretrain``; an ``admm`` stage that
adds ``ρ/2 · Σ_l ||W_l − Z_l + U_l||²`` to the hybrid loss, where after every epoch
``Z_l`` is ``W_l + U_l`` projected onto "at most k_l nonzeros" (its k_l largest entries)
and ``U_l += W_l − Z_l`` accumulates the residual (ρ grows by ``rho_growth`` per epoch);
then hard pruning to each layer's k_l largest weights and masked adversarial ``finetune``.
k_l is layer l's uniform share of ``round(density · N)``, as the paper's per-layer
constraint. With ``sparsity.granularity: channel`` the constraint is on output channels
(filter pruning): each channel group keeps its uniform channel count of the channel-mode
budget, Z keeps the largest-norm filters, and the finetune stage fixes those channels.
Options: ``pretrain_epochs``, ``admm_epochs`` (default a third of the run each), ``rho``
(1e-2), ``rho_growth`` (1.0: constant).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from dnr.errors import ConfigError
from dnr.sparsity.base import Progress, Stage, method_options, register_method
from dnr.sparsity.channels import ChannelLayout
from dnr.sparsity.lwm import LWM, magnitude_masks
from dnr.sparsity.rewiring import _select

__all__ = ["ADMM", "check_three_stages", "project", "project_rows", "three_stages"]


def _split(cfg: Any, middle: str) -> tuple[int, int]:
    """Epochs of ``pretrain`` and of the middle stage (default: a third of the run each)."""
    opts, epochs = method_options(cfg), cfg.train.epochs
    pre, mid = opts.get("pretrain_epochs"), opts.get(f"{middle}_epochs")
    return (
        epochs // 3 if pre is None else int(pre),
        max(1, epochs // 3) if mid is None else int(mid),
    )


def three_stages(cfg: Any, middle: str) -> list[Stage]:
    """``pretrain`` → ``middle`` → ``finetune`` (empty stages left out)."""
    pre, mid = _split(cfg, middle)
    plan = [
        Stage("pretrain", pre),
        Stage(middle, mid),
        Stage("finetune", cfg.train.epochs - pre - mid),
    ]
    return [s for s in plan if s.epochs > 0]


def check_three_stages(cfg: Any, middle: str) -> None:
    """``ConfigError`` unless the stage lengths are integers that leave room to fine-tune."""
    opts, epochs = method_options(cfg), cfg.train.epochs
    for key in ("pretrain_epochs", f"{middle}_epochs"):
        value = opts.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(
                f"sparsity.options.{cfg.sparsity.method}.{key}: must be an integer, got {value!r}"
            )
    pre, mid = _split(cfg, middle)
    if pre < 0 or mid < 1 or pre + mid >= epochs:
        raise ConfigError(
            f"sparsity.options: {cfg.sparsity.method} needs pretrain_epochs >= 0, "
            f"{middle}_epochs >= 1 and room to fine-tune in train.epochs={epochs} "
            f"(got {pre} + {mid})"
        )


@torch.no_grad()
def top_rows(x: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` output channels (rows) of ``x`` with the largest norm."""
    return _select(x.detach().flatten(1).norm(dim=1).float(), k, largest=True)


@torch.no_grad()
def project_rows(x: Tensor, k: int) -> Tensor:
    """``x`` with all but its ``k`` largest-norm output channels (rows) set to 0."""
    return x * top_rows(x, k).view(-1, *[1] * (x.dim() - 1)).to(x.dtype)


@torch.no_grad()
def project(x: Tensor, k: int) -> Tensor:
    """``x`` with all but its ``k`` largest-|x| entries set to 0 (ties → lower index)."""
    keep = _select(x.abs().flatten().float(), k, largest=True)
    return x * keep.view(x.shape).to(x.dtype)


@register_method
class ADMM(LWM):
    """Dense pretraining, ADMM towards per-layer sparsity, hard pruning, masked finetuning."""

    name = "admm"
    description = "robust ADMM: dense pretrain, ADMM to per-layer sparsity, prune, finetune"
    granularities: ClassVar[tuple[str, ...]] = ("weight", "channel")
    option_defaults = {
        "pretrain_epochs": None,
        "admm_epochs": None,
        "rho": 1e-2,
        "rho_growth": 1.0,
    }

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        check_three_stages(cfg, "admm")
        for key in ("rho", "rho_growth"):
            value = method_options(cfg).get(key, cls.option_defaults[key])
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(
                    f"sparsity.options.{cfg.sparsity.method}.{key}: must be a positive number"
                )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.z: dict[str, Tensor] = {}
        self.u: dict[str, Tensor] = {}
        self.rho = float(self.option("rho"))
        self._k: dict[str, int] | None = None  # the constraint's k per weight (lazy)

    def stages(self) -> list[Stage]:
        return three_stages(self.cfg, "admm")

    def _constrained(self) -> tuple[dict[str, torch.nn.Parameter], dict[str, int]]:
        """The weights under the sparsity constraint and each one's k: entries per layer
        (weight mode), or output channels per channel group's producer (channel mode)."""
        weights = self._weights()
        if self._k is None:  # fixed by the architecture and the budget: computed once
            if self.granularity != "channel":
                self._k = self._budgets(weights)
            else:
                layout = ChannelLayout(self.model, self.cfg.sparsity.exclude)
                target = round(self.cfg.sparsity.density * layout.num_prunable)
                names = [f"{g}.weight" for g in layout.names]
                self._k = dict(zip(names, layout.uniform_counts(target)))
        return {n: weights[n] for n in self._k}, self._k

    def _project(self, x: Tensor, k: int) -> Tensor:
        return project_rows(x, k) if self.granularity == "channel" else project(x, k)

    @torch.no_grad()
    def _update(self) -> None:
        """Z = proj(W + U); U += W − Z."""
        weights, budgets = self._constrained()
        for name, w in weights.items():
            self.z[name] = self._project(w.detach() + self.u[name], budgets[name])
            self.u[name] += w.detach() - self.z[name]

    def begin_stage(self, stage: Stage, progress: Progress) -> None:
        if stage.name == "admm":
            weights, budgets = self._constrained()
            self.u = {n: torch.zeros_like(w) for n, w in weights.items()}
            self.z = {n: self._project(w.detach(), budgets[n]) for n, w in weights.items()}
            progress.log(f"admm: rho {self.rho:g}, {self.granularity} budgets per layer")
        elif stage.name == "finetune":
            self.z, self.u = {}, {}
            weights, budgets = self._constrained()
            if self.granularity == "channel":  # each group's k largest-norm filters
                masks = {
                    n.removesuffix(".weight"): top_rows(w, budgets[n]) for n, w in weights.items()
                }
            else:
                masks = magnitude_masks(weights, self.cfg.sparsity.density, "layer")
            self._build(masks)
            progress.log(f"admm: hard-pruned to density {self.density():.4f}; mask fixed")

    def loss_term(self, model: torch.nn.Module) -> Tensor | None:
        if not self.z:
            return None
        weights, _ = self._constrained()
        total = sum(((w - self.z[n] + self.u[n]) ** 2).sum() for n, w in weights.items())
        return 0.5 * self.rho * total  # type: ignore[return-value]

    def on_epoch_end(self, progress: Progress) -> dict[str, Any]:
        record = super().on_epoch_end(progress)
        if self.z:
            self._update()
            residual = sum(
                float((w.detach() - self.z[n]).norm() ** 2)
                for n, w in self._constrained()[0].items()
            )
            record["admm"] = {"rho": self.rho, "residual": residual**0.5}
            self.rho *= float(self.option("rho_growth"))
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
            device = next(iter(self._weights().values())).device
            self.rho = float(admm["rho"])
            self.z = {n: t.to(device) for n, t in admm["z"].items()}
            self.u = {n: t.to(device) for n, t in admm["u"].items()}

    def adopt_masks(self, state: Mapping[str, Any]) -> None:
        raise ValueError("admm finds its own mask; set train.init_masks=false")
