"""The one object an evaluation hands to every attack and sanity check.

``evaluate_model`` resolves its options once (device, batch size, number of classes, the
subset of examples, whether bars show) and freezes them here, so the attack runners and
the checks read the same values instead of each taking the same dozen keywords.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["EvalContext"]


@dataclass(frozen=True)
class EvalContext:
    """What every attack of one evaluation shares.

    ``model`` is the fp32, eval-mode, frozen model (inside :func:`~dnr.robustness.engine.
    fp32_eval`); ``x``/``y`` the evaluated examples (the subset already taken, labels
    long); ``seed`` the evaluation seed each attack derives its own from; ``progress``
    whether bars are drawn (already resolved against the terminal).
    """

    model: nn.Module
    x: Tensor
    y: Tensor
    norm: str
    seed: int
    batch_size: int
    device: torch.device
    num_classes: int
    progress: bool
