"""``flyingbird``: dynamic sparse adversarial training with gradient regrowth (Chen et al.,
ICLR 2022, "Sparsity Winning Twice") — the closest contrast to DNR.

Same loop, schedule, prune rate, BN refresh and budget as ``dnr``; two things differ, and
they are exactly what DNR claims matters: inactive weights regrow by the magnitude of the
last step's dense *gradient* (RigL-style) instead of momentum, and every layer regrows what
it lost, so the per-layer budgets set at initialisation (``sparsity.init``: ``uniform`` or
``erk``) never move between layers.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from dnr.sparsity.base import register_method
from dnr.sparsity.dnr import DNR
from dnr.sparsity.masking import Masking, shared_options

__all__ = ["FlyingBird"]


@register_method
class FlyingBird(DNR):
    """Prune by |w|, regrow by |gradient|, per-layer budgets fixed."""

    name = "flyingbird"
    description = "dynamic sparse training: prune by |w|, regrow by |gradient|, fixed layer budgets"
    granularities: ClassVar[tuple[str, ...]] = ("weight",)

    def build_masks(self, generator: torch.Generator) -> Masking:
        s = self.cfg.sparsity
        options = {**shared_options(s), "redistribution": 0.0}  # budgets never move
        return Masking(
            self.model,
            self.optimizer,
            init=s.init,
            generator=generator,
            protect_channels=s.protect_channels,
            grow_by="gradient",
            **options,
        )
