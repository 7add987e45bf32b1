"""One training step, public: attack, hybrid loss, update, sparsity hook.

Benchmarks and tests call :func:`train_step` directly; the epoch loop is this plus
bookkeeping. Per step::

    x_adv = PGD(model, x, y)                        # BN frozen, input gradient only
    loss  = beta * CE(model(x), y) + (1 - beta) * CE(model(x_adv), y) [+ method's term]
    loss.backward(); optimizer.step(); method.after_step(progress)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnr.attacks import pgd
from dnr.config import Config
from dnr.distributed import unwrap
from dnr.sparsity import Progress, SparsityMethod

__all__ = ["StepOutput", "hybrid_loss", "train_step"]


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


def attacks_in_training(cfg: Config) -> bool:
    """Whether training examples are adversarial (beta < 1 and a non-trivial attack)."""
    a = cfg.attack
    return cfg.train.beta < 1.0 and a.steps > 0 and a.eps > 0


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
) -> StepOutput:
    """One optimizer step of adversarial training per ``cfg``; advances ``progress.step``.

    ``generator`` (on the data's device) draws the attack's random starts, unless ``noise``
    gives them (a rank's slice of the global batch's draws). ``model`` may be wrapped in
    DDP: the losses go through the wrapper (gradients are averaged over ranks), the attack
    and the method's loss term use the plain module. The learning rate is the caller's to
    set. No host synchronisation.
    """
    plain = unwrap(model)
    x_adv = None
    if attacks_in_training(cfg):
        a = cfg.attack
        x_adv = pgd(
            plain,
            x,
            y,
            eps=a.eps,
            step_size=a.step_size,
            steps=a.steps,
            random_start=a.random_start,
            generator=generator,
            noise=noise,
        )
    autocast = (
        torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
        if cfg.train.bf16
        else contextlib.nullcontext()
    )
    with autocast:
        out = hybrid_loss(model, x, x_adv, y, cfg.train.beta)
        extra = method.loss_term(plain)
        if extra is not None:
            out.loss = out.loss + extra
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    progress.step += 1
    method.after_step(progress)
    return out
