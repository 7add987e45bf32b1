"""One training step, public: attack, objective's loss, update, sparsity hook.

Benchmarks and tests call :func:`train_step` directly; the epoch loop is this plus
bookkeeping. Per step::

    x_adv = attack(model, x, y)                     # BN frozen, input gradient only
    loss  = objective(model, x, x_adv, y) [+ method's term]
    loss.backward(); optimizer.step(); method.after_step(progress)

The objective is ``train.loss``'s (:mod:`dnr.training.objectives`, registered in
``dnr.registry.OBJECTIVES``); the default, the paper's hybrid, trains
beta * CE(model(x), y) + (1 - beta) * CE(model(x_adv), y) on the training mode's examples
(``attack.train_mode``, :data:`TRAIN_MODES`): PGD, or FGSM from a random start. ``free``
training instead replays the batch ``attack.replays`` times, each replay one such step
whose backward pass also yields the input gradient that moves the perturbation (no
separate attack pass at all). TRADES and MART bring their own attacks.

Momentum-driven rewiring reads the optimizer's momentum, which accumulates the gradients of
whatever loss is trained: with a fast mode, the momentum that decides DNR's regrowth comes
from FGSM-RS or free examples instead of PGD ones (docs/method.md, "Fast training modes").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnr.attacks import fgsm_rs, pgd
from dnr.config import Config
from dnr.distributed import unwrap
from dnr.registry import OBJECTIVES
from dnr.sparsity import Progress, SparsityMethod

__all__ = [
    "TRAIN_MODES",
    "Adversary",
    "StepOutput",
    "StepState",
    "TrainMode",
    "accumulate",
    "attacks_in_training",
    "clean_logits_in_training",
    "hybrid_loss",
    "train_mode",
    "train_step",
]


@dataclass
class StepOutput:
    """The step's loss and logits, already used by ``backward``: read them, do not backprop."""

    loss: Tensor
    logits_clean: Tensor | None
    logits_adv: Tensor | None


def hybrid_loss(
    model: nn.Module, x: Tensor, x_adv: Tensor | None, y: Tensor, beta: float
) -> StepOutput:
    """beta * CE(clean) + (1 - beta) * CE(adv); plain CE(clean) when there is no attack.

    A forward pass whose weight is 0 is skipped.
    """
    if x_adv is None:
        logits = model(x)
        return StepOutput(F.cross_entropy(logits, y), logits, None)
    loss = torch.zeros((), device=x.device)
    logits_clean = None
    if beta > 0:
        logits_clean = model(x)
        loss = loss + beta * F.cross_entropy(logits_clean, y)
    logits_adv = model(x_adv)
    loss = loss + (1.0 - beta) * F.cross_entropy(logits_adv, y)
    return StepOutput(loss, logits_clean, logits_adv)


Adversary = Callable[
    [nn.Module, Tensor, Tensor, Config, "torch.Generator | None", "Tensor | None"], Tensor
]


def _pgd_adversary(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: Config,
    generator: torch.Generator | None,
    noise: Tensor | None,
) -> Tensor:
    """The configured PGD (``attack.*``)."""
    a = cfg.attack
    return pgd(
        model,
        x,
        y,
        eps=a.eps,
        step_size=a.step_size,
        steps=a.steps,
        random_start=a.random_start,
        generator=generator,
        noise=noise,
        amp=cfg.train.bf16,
    )


def _fgsm_rs_adversary(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: Config,
    generator: torch.Generator | None,
    noise: Tensor | None,
) -> Tensor:
    """FGSM-RS: one ``attack.fgsm_step``-eps step from a random start (Wong et al. 2020)."""
    a = cfg.attack
    step = a.fgsm_step * a.eps
    return fgsm_rs(
        model, x, y, eps=a.eps, step_size=step, generator=generator, noise=noise, amp=cfg.train.bf16
    )


@dataclass(frozen=True)
class TrainMode:
    """How a training mode makes its adversarial examples, as the loop needs to know it.

    ``adversary`` crafts ``x_adv`` before the update (None: ``free``, whose perturbation
    comes from the update's own backward pass); ``uses_steps``: ``attack.steps`` matters;
    ``start``: whether the adversary draws a random start (``"config"``: when
    ``attack.random_start``; the loop draws it per global batch); ``single_step``: prone
    to catastrophic overfitting, so the loop stops a run whose validation PGD accuracy
    collapses (Wong et al.'s early-stop guard).
    """

    name: str
    adversary: Adversary | None
    uses_steps: bool
    start: Literal["config", "always", "never"]
    single_step: bool

    def replays(self, cfg: Config) -> int:
        """Optimizer steps per batch (one whenever training is not adversarial)."""
        return cfg.attack.replays if self.adversary is None and attacks_in_training(cfg) else 1

    def draws_start(self, cfg: Config) -> bool:
        return self.start == "always" or (self.start == "config" and cfg.attack.random_start)


TRAIN_MODES: dict[str, TrainMode] = {
    "pgd": TrainMode("pgd", _pgd_adversary, uses_steps=True, start="config", single_step=False),
    "fgsm_rs": TrainMode(
        "fgsm_rs", _fgsm_rs_adversary, uses_steps=False, start="always", single_step=True
    ),
    "free": TrainMode("free", None, uses_steps=False, start="never", single_step=True),
}


def train_mode(cfg: Config) -> TrainMode:
    """How ``train.loss``'s objective makes its examples: for the hybrid loss the
    :class:`TrainMode` that ``attack.train_mode`` names; TRADES and MART their own."""
    return OBJECTIVES.get(cfg.train.loss).mode(cfg)


def clean_logits_in_training(cfg: Config) -> bool:
    """Whether a training step classifies the clean batch (its training clean accuracy)."""
    return not attacks_in_training(cfg) or bool(OBJECTIVES.get(cfg.train.loss).sees_clean(cfg))


def attacks_in_training(cfg: Config) -> bool:
    """Whether training examples are adversarial (the objective's call: for the hybrid
    loss, beta < 1 and a non-trivial attack)."""
    return bool(OBJECTIVES.get(cfg.train.loss).adversarial(cfg))


@torch.no_grad()
def accumulate(sums: Tensor, out: StepOutput, y: Tensor) -> None:
    """Add a step's loss x n, clean correct, adversarial correct and n to ``sums`` (4 values).

    On the device, so the training loop reads them once per epoch, not once per step.
    """
    sums[0] += out.loss.detach().float() * y.numel()
    sums[3] += y.numel()
    if out.logits_clean is not None:
        sums[1] += (out.logits_clean.argmax(1) == y).sum()
    if out.logits_adv is not None:
        sums[2] += (out.logits_adv.argmax(1) == y).sum()


@dataclass
class StepState:
    """What one step hands to the next: ``free`` training's perturbation (else unused)."""

    delta: Tensor | None = None


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    cfg: Config,
    method: SparsityMethod,
    progress: Progress,
    generator: torch.Generator | None = None,
    *,
    noise: Tensor | None = None,
    state: StepState | None = None,
) -> StepOutput:
    """Adversarial training on one batch per ``cfg``; advances ``progress.step``.

    One optimizer step, or ``attack.replays`` of them in ``free`` mode (which carries its
    perturbation to the next batch in ``state``; without one it starts from zero each
    call). ``generator`` (on the data's device) draws the attack's random starts, unless
    ``noise`` gives them (a rank's slice of the global batch's draws). ``model`` may be
    wrapped in DDP: the losses go through the wrapper (gradients are averaged over ranks),
    the attack and the method's loss term use the plain module. The learning rate is the
    caller's to set. No host synchronisation. Returns the (last) step's loss and logits.
    """
    plain = unwrap(model)
    if cfg.train.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    mode = train_mode(cfg)
    if not attacks_in_training(cfg):
        return _update(model, plain, optimizer, x, None, y, cfg, method, progress)
    if mode.adversary is not None:
        x_adv = mode.adversary(plain, x, y, cfg, generator, noise)
        return _update(model, plain, optimizer, x, x_adv, y, cfg, method, progress)
    return _free(model, plain, optimizer, x, y, cfg, method, progress, state or StepState())


def _update(
    model: nn.Module,
    plain: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    x_adv: Tensor | None,
    y: Tensor,
    cfg: Config,
    method: SparsityMethod,
    progress: Progress,
) -> StepOutput:
    """The objective's loss (+ the method's term), backward, optimizer step, the method's
    hook."""
    autocast = (
        torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
        if cfg.train.bf16
        else contextlib.nullcontext()
    )
    with autocast:
        out = OBJECTIVES.get(cfg.train.loss).loss(model, x, x_adv, y, cfg)
        extra = method.loss_term(plain)
        if extra is not None:
            out.loss = out.loss + extra
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    progress.step += 1
    method.after_step(progress)
    return out


def _free(
    model: nn.Module,
    plain: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    cfg: Config,
    method: SparsityMethod,
    progress: Progress,
    state: StepState,
) -> StepOutput:
    """Free adversarial training (Shafahi et al. 2019): each replay is one weight update
    whose backward pass also gives d(loss)/d(x_adv), and moves the perturbation by one
    eps-sized signed step; the perturbation carries over to the next batch (a batch of
    another size starts from zero). BatchNorm stays in training mode, as in the paper."""
    eps = cfg.attack.eps
    delta = state.delta
    if delta is None or delta.shape != x.shape:
        delta = torch.zeros_like(x)
    out = None
    for _ in range(cfg.attack.replays):
        x_adv = (x + delta).clamp_(0.0, 1.0).requires_grad_(True)
        out = _update(model, plain, optimizer, x, x_adv, y, cfg, method, progress)
        assert x_adv.grad is not None
        delta = (delta + eps * x_adv.grad.sign()).clamp_(-eps, eps)
    state.delta = delta.detach()
    assert out is not None
    return out
