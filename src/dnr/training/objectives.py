"""Training objectives: how a step makes its training examples, and the loss it trains.

Each objective is an :class:`Objective` registered in ``dnr.registry.OBJECTIVES`` under the
name ``train.loss`` selects; the step (:mod:`dnr.training.step`) asks it for its
:class:`~dnr.training.step.TrainMode` (the attack) and its loss, never which one it runs.

* ``hybrid`` (the paper's): beta * CE(f(x), y) + (1 - beta) * CE(f(x_adv), y), examples
  from ``attack.train_mode`` (PGD, FGSM-RS or free); ``train.beta``.
* ``trades`` (Zhang et al. 2019): CE(f(x), y) + trades_beta * KL(f(x) || f(x_adv)), x_adv
  maximising that KL from x + 0.001 * N(0, 1); ``train.trades_beta`` (release: 6).
* ``mart`` (Wang et al. 2020): BCE(f(x_adv), y) + mart_beta * KL(f(x) || f(x_adv)) *
  (1 - f_y(x)), x_adv by PGD on CE from x + 0.001 * N(0, 1); ``train.mart_beta`` (release: 6).

TRADES and MART use ``attack.eps``, ``attack.step_size`` and ``attack.steps`` and run with
``attack.train_mode=pgd`` only (docs/method.md, "Training objectives").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnr.attacks import kl_pgd, small_start_pgd
from dnr.config import Config, ConfigError
from dnr.registry import OBJECTIVES
from dnr.training import step
from dnr.training.step import TRAIN_MODES, Adversary, StepOutput, TrainMode

__all__ = ["HYBRID", "MART", "TRADES", "Objective", "mart_loss", "trades_loss"]

#: The release's start: x + START_SCALE * N(0, 1) (TRADES and MART alike).
START_SCALE = 0.001

Loss = Callable[[nn.Module, Tensor, "Tensor | None", Tensor, Config], StepOutput]


@dataclass(frozen=True)
class Objective:
    """A training loss with the attack that makes its examples.

    ``mode(cfg)``: the :class:`TrainMode` whose adversary crafts ``x_adv``; ``adversarial
    (cfg)``: whether a step attacks at all (else ``loss`` gets ``x_adv=None``); ``loss``:
    the step's :class:`StepOutput` (it may be called inside bf16 autocast); ``check``:
    ``ConfigError`` for settings the objective cannot train with; ``sees_clean(cfg)``:
    whether an attacking step also classifies the clean batch (its training accuracy).
    """

    name: str
    description: str
    mode: Callable[[Config], TrainMode]
    adversarial: Callable[[Config], bool]
    loss: Loss
    check: Callable[[Config], None]
    sees_clean: Callable[[Config], bool] = lambda cfg: True


def _clean_ce(model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
    """Plain CE(clean): a step that does not attack."""
    logits = model(x)
    return StepOutput(F.cross_entropy(logits, y), logits, None)


# ------------------------------------------------------------------ hybrid (the paper's)


def _hybrid_adversarial(cfg: Config) -> bool:
    a, mode = cfg.attack, TRAIN_MODES[cfg.attack.train_mode]
    return cfg.train.beta < 1.0 and a.eps > 0 and (a.steps > 0 or not mode.uses_steps)


def _hybrid(
    model: nn.Module, x: Tensor, x_adv: Tensor | None, y: Tensor, cfg: Config
) -> StepOutput:
    # looked up on the module at call time: tests replace step.hybrid_loss to count or
    # interrupt steps, and the replacement must be what trains
    return step.hybrid_loss(model, x, x_adv, y, cfg.train.beta)


HYBRID = OBJECTIVES.register(
    Objective(
        "hybrid",
        "beta*CE(clean) + (1-beta)*CE(adv), the paper's; any attack.train_mode (train.beta)",
        mode=lambda cfg: TRAIN_MODES[cfg.attack.train_mode],
        adversarial=_hybrid_adversarial,
        loss=_hybrid,
        check=lambda cfg: None,
        sees_clean=lambda cfg: cfg.train.beta > 0,  # a pass of weight 0 is skipped
    )
)


# ------------------------------------------------------------------ TRADES and MART


def _pgd_only(name: str) -> Callable[[Config], None]:
    """The release's attack is PGD-like: a fast mode would train another method."""

    def check(cfg: Config) -> None:
        if cfg.attack.train_mode != "pgd":
            raise ConfigError(
                f"train.loss={name} makes its own PGD examples; attack.train_mode="
                f"{cfg.attack.train_mode} applies to train.loss=hybrid only (set it to pgd)"
            )

    return check


def _release_adversary(attack: Callable[..., Tensor]) -> Adversary:
    """An :data:`Adversary` running ``attack`` with ``attack.eps/step_size/steps``."""

    def adversary(
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        cfg: Config,
        generator: torch.Generator | None,
        noise: Tensor | None,
    ) -> Tensor:
        a = cfg.attack
        return attack(
            model,
            x,
            y,
            eps=a.eps,
            step_size=a.step_size,
            steps=a.steps,
            start_scale=START_SCALE,
            generator=generator,
            noise=noise,
            amp=cfg.train.bf16,
        )

    return adversary


def _release_mode(name: str, attack: Callable[..., Tensor]) -> TrainMode:
    # start="always": the release's Gaussian start is drawn whatever attack.random_start says
    adversary = _release_adversary(attack)
    return TrainMode(name, adversary, uses_steps=True, start="always", single_step=False)


_TRADES_MODE = _release_mode("trades", kl_pgd)
_MART_MODE = _release_mode("mart", small_start_pgd)


def _kl_rows(p_clean: Tensor, logits_adv: Tensor) -> Tensor:
    """Per example KL(p_clean || softmax(logits_adv)), both differentiable."""
    log_q = F.log_softmax(logits_adv.float(), dim=1)
    return F.kl_div(log_q, p_clean, reduction="none").sum(dim=1)


def trades_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """CE(f(x), y) + beta * mean KL(f(x) || f(x_adv)), gradients through both sides (as
    the release: its KL target ``softmax(model(x_natural))`` is not detached)."""
    clean = logits_clean.float()
    p_clean = F.softmax(clean, dim=1)
    return F.cross_entropy(clean, y) + beta * _kl_rows(p_clean, logits_adv).mean()


def mart_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """The release's MART loss: boosted CE on x_adv, + beta * KL(f(x) || f(x_adv)) weighted
    per example by 1 - f_y(x) (with the release's 1e-12 / 1.0001 / 1.0000001 guards)."""
    adv = logits_adv.float()
    p_adv = F.softmax(adv, dim=1)
    top2 = torch.argsort(p_adv, dim=1)[:, -2:]
    other = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])  # likeliest wrong class
    boosted = F.cross_entropy(adv, y) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), other)
    p_clean = F.softmax(logits_clean.float(), dim=1)
    p_true = p_clean.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(p_adv + 1e-12), p_clean, reduction="none").sum(dim=1)
    return boosted + beta * (kl * (1.0000001 - p_true)).mean()


def _pair_loss(
    formula: Callable[[Tensor, Tensor, Tensor, float], Tensor], beta: Callable[[Config], float]
) -> Loss:
    """A loss of f(x) and f(x_adv): one clean and one adversarial pass in train mode."""

    def loss(
        model: nn.Module, x: Tensor, x_adv: Tensor | None, y: Tensor, cfg: Config
    ) -> StepOutput:
        if x_adv is None:
            return _clean_ce(model, x, y)
        logits_clean, logits_adv = model(x), model(x_adv)
        return StepOutput(formula(logits_clean, logits_adv, y, beta(cfg)), logits_clean, logits_adv)

    return loss


def _attacks_with_pgd(cfg: Config) -> bool:
    return cfg.attack.eps > 0 and cfg.attack.steps > 0


TRADES = OBJECTIVES.register(
    Objective(
        "trades",
        "CE(clean) + trades_beta*KL(clean||adv), adv by KL-PGD (Zhang et al. 2019)",
        mode=lambda cfg: _TRADES_MODE,
        adversarial=lambda cfg: _attacks_with_pgd(cfg) and cfg.train.trades_beta > 0,
        loss=_pair_loss(trades_loss, lambda cfg: cfg.train.trades_beta),
        check=_pgd_only("trades"),
    )
)

MART = OBJECTIVES.register(
    Objective(
        "mart",
        "boosted CE(adv) + mart_beta*KL weighted by 1-p_y(clean) (Wang et al. 2020)",
        mode=lambda cfg: _MART_MODE,
        adversarial=_attacks_with_pgd,
        loss=_pair_loss(mart_loss, lambda cfg: cfg.train.mart_beta),
        check=_pgd_only("mart"),
    )
)
