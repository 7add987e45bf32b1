"""Optimizers by name (``train.optimizer``), each with the first moment DNR grows by.

DNR regrows the inactive weights whose momentum is largest; which tensor that is depends on
the optimizer, so each entry names it (``moment_key``) and says whether the configured
optimizer keeps one at all. ``dnr.sparsity.mask.first_moment`` reads the same keys.

* ``sgd``: ``torch.optim.SGD(lr, momentum, weight_decay, nesterov)``; the signal is its
  ``momentum_buffer``, which ``train.momentum=0`` does not keep (refused for DNR).
* ``adamw``: ``torch.optim.AdamW(lr, betas=(train.momentum, 0.999), weight_decay)``; the
  signal is its ``exp_avg``. A regrown weight's ``exp_avg`` is reset under
  ``sparsity.grow_momentum=zero``, its ``exp_avg_sq`` kept (docs/method.md says why).
  AdamW wants other values than SGD: lr about 1e-3 and weight decay about 0.05 (decoupled,
  not an L2 term); nothing is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from dnr.config import Config, ConfigError
from dnr.registry import OPTIMIZERS

__all__ = ["ADAMW", "SGD", "OptimizerKind", "build_optimizer"]

#: AdamW's second-moment decay (PyTorch's and the Adam paper's default).
ADAM_BETA2 = 0.999


@dataclass(frozen=True)
class OptimizerKind:
    """How ``train.optimizer`` builds its optimizer, and where its first moment lives.

    ``build(cfg, params)``: the optimizer (the loop sets each step's lr itself);
    ``moment_key``: the per-parameter state entry DNR grows by; ``has_moment(cfg)``:
    whether the configured optimizer keeps it; ``check``: ``ConfigError`` for settings it
    cannot run with.
    """

    name: str
    description: str
    build: Callable[[Config, Iterable[nn.Parameter]], torch.optim.Optimizer]
    moment_key: str
    has_moment: Callable[[Config], bool]
    check: Callable[[Config], None]


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """``train.optimizer`` over all of ``model``'s parameters."""
    return OPTIMIZERS.get(cfg.train.optimizer).build(cfg, model.parameters())


def _sgd(cfg: Config, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    t = cfg.train
    return torch.optim.SGD(
        params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.nesterov
    )


def _check_sgd(cfg: Config) -> None:
    t = cfg.train
    if t.nesterov and t.momentum == 0:
        raise ConfigError("train.nesterov: Nesterov momentum needs train.momentum > 0")


def _adamw(cfg: Config, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    t = cfg.train
    return torch.optim.AdamW(
        params, lr=t.lr, betas=(t.momentum, ADAM_BETA2), weight_decay=t.weight_decay
    )


def _check_adamw(cfg: Config) -> None:
    if cfg.train.nesterov:
        raise ConfigError("train.nesterov applies to train.optimizer=sgd, not adamw")


SGD = OPTIMIZERS.register(
    OptimizerKind(
        "sgd",
        "SGD with momentum (train.momentum, train.nesterov); DNR grows by momentum_buffer",
        build=_sgd,
        moment_key="momentum_buffer",
        has_moment=lambda cfg: cfg.train.momentum > 0,
        check=_check_sgd,
    )
)

ADAMW = OPTIMIZERS.register(
    OptimizerKind(
        "adamw",
        "AdamW, betas (train.momentum, 0.999), decoupled weight decay; DNR grows by exp_avg",
        build=_adamw,
        moment_key="exp_avg",
        has_moment=lambda cfg: True,  # beta1 = 0 still keeps exp_avg (the last gradient)
        check=_check_adamw,
    )
)
