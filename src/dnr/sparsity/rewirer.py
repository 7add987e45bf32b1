"""``Rewirer``: DNR's schedule over a mask object — the one implementation of *when* to rewire.

Two drivers run it: the registered ``dnr`` method (``dnr train``), which passes the step and
run length from its :class:`~dnr.sparsity.base.Progress`, and ``dnr.DNR`` (a user's own
loop), which counts them itself. Both call :meth:`Rewirer.after_step` after every optimizer
step and :meth:`Rewirer.at_epoch_end` at every epoch end; the rewiring itself (prune by
|w|, regrow by momentum) is the mask object's, and the BatchNorm refresh that follows it is
here, so neither driver can drift from the other.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dnr.models.batchnorm import refresh_batchnorm_stats
from dnr.sparsity.mask import MaskSet
from dnr.sparsity.rewiring import RewireStats
from dnr.sparsity.schedules import RewireSchedule

__all__ = ["BatchSource", "GeneratorSource", "Rewirer", "Rewiring"]

#: Makes the generator a rewiring draws from (called only when a rewiring happens).
GeneratorSource = Callable[[], torch.Generator]
#: Makes the clean input batches a BN refresh runs on (``None``: no refresh possible).
BatchSource = Callable[[], Iterable[Tensor]] | None


@dataclass(frozen=True)
class Rewiring:
    """What one rewiring did: when, at what prune rate, per-layer moves, BN batches used."""

    step: int
    stats: RewireStats
    refreshed: int

    def record(self) -> dict[str, Any]:
        """The fields ``metrics.jsonl`` records for it (``dnr train``'s ``rewire`` list)."""
        s = self.stats
        return {"prune_rate": s.prune_rate, "lost": s.lost, "regrown": s.regrown}


class Rewirer:
    """Runs ``schedule`` over ``masking``: re-masks after every step, rewires when due, then
    re-estimates ``model``'s BatchNorm statistics.

    Holds no counters of its own: every call says which step it is and how long the run is,
    so resuming needs only the mask object's state.
    """

    def __init__(self, model: nn.Module, masking: MaskSet, schedule: RewireSchedule) -> None:
        self.model = model
        self.masking = masking
        self.schedule = schedule

    def after_step(
        self, step: int, total_steps: int, generator: GeneratorSource, batches: BatchSource
    ) -> Rewiring | None:
        """After optimizer step ``step`` (1-based): weights back on the budget; rewire if due."""
        self.masking.apply_()  # weight decay and momentum moved masked weights: back to 0
        if self.schedule.due_after_step(step, total_steps):
            return self.rewire(step, total_steps, generator, batches)
        return None

    def at_epoch_end(
        self, step: int, total_steps: int, generator: GeneratorSource, batches: BatchSource
    ) -> Rewiring | None:
        """At the end of an epoch that ended after ``step`` steps: rewire if due."""
        if self.schedule.due_at_epoch_end(step, total_steps):
            return self.rewire(step, total_steps, generator, batches)
        return None

    def rewire(
        self, step: int, total_steps: int, generator: GeneratorSource, batches: BatchSource
    ) -> Rewiring:
        """One rewiring at the annealed prune rate of ``step``, then the BN refresh."""
        rate = self.schedule.rate(step, total_steps)
        stats = self.masking.rewire(rate, generator())  # the generator draws grown channels
        return Rewiring(step, stats, self.refresh(batches))

    def refresh(self, batches: BatchSource) -> int:
        """Re-estimate BN statistics on the first ``refresh_batches`` batches; returns how
        many were used (0 when the refresh is off or there is nothing to run it on)."""
        n = self.schedule.refresh_batches
        if n == 0 or batches is None:
            return 0
        return refresh_batchnorm_stats(self.model, itertools.islice(batches(), n))
