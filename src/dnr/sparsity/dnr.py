"""``dnr``: Dynamic Network Rewiring — prune by magnitude, regrow by momentum (docs/method.md).

Rewiring happens at the end of each epoch (or every ``sparsity.rewire_every`` steps) until
``sparsity.rewire_until`` of the run, with a prune rate that anneals over that window; after
each rewiring BatchNorm statistics are re-estimated on a few seeded clean batches.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dnr.errors import ConfigError
from dnr.models.batchnorm import refresh_batchnorm_stats
from dnr.sparsity.base import Progress, Stage, register_method
from dnr.sparsity.schedules import cosine_prune_rate
from dnr.sparsity.static import MaskedMethod

if TYPE_CHECKING:
    from dnr.config import Config


def rewire_window(cfg: Config, total_steps: int) -> int:
    """The step before which masks may move (exclusive); the prune rate anneals over it."""
    return max(1, int(round(cfg.sparsity.rewire_until * total_steps)))


def rewiring_warning(cfg: Config, steps_per_epoch: int) -> str | None:
    """A message if no rewiring falls inside the window: DNR would silently train a static mask."""
    s = cfg.sparsity
    total = steps_per_epoch * cfg.train.epochs
    if (s.rewire_every or steps_per_epoch) < rewire_window(cfg, total):
        return None
    return (
        f"warning: no rewiring falls before sparsity.rewire_until={s.rewire_until} of "
        f"this {total}-step run, so DNR trains its initial mask like "
        "sparsity.method=static; rewire more often (sparsity.rewire_every) or later"
    )


@register_method
class DNR(MaskedMethod):
    """Momentum-driven rewiring of a weight or channel mask at a fixed budget."""

    name = "dnr"
    description = "dynamic network rewiring: prune by |w|, regrow by momentum (tuned defaults)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[dict[str, Any]] = []  # rewirings since the last epoch end

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        if cfg.train.momentum == 0:
            raise ConfigError("sparsity.method=dnr grows by momentum: train.momentum must be > 0")

    def begin_stage(self, stage: Stage, progress: Progress) -> None:
        warning = rewiring_warning(self.cfg, progress.steps_per_epoch)
        if warning:
            progress.log(warning)

    def _rewire(self, progress: Progress) -> dict[str, Any]:
        s = self.cfg.sparsity
        rate = cosine_prune_rate(
            progress.step,
            rewire_window(self.cfg, progress.total_steps),
            s.prune_rate,
            s.prune_rate_min,
        )
        stats = self.masking.rewire(rate, progress.generator("rewire"))  # draws grown channels
        if s.bn_refresh_batches > 0 and progress.batches is not None:
            # clean batches of the next epoch: seeded, no RNG drawn
            batches = (x for x, _ in progress.batches(progress.epoch + 1))
            refresh_batchnorm_stats(self.model, itertools.islice(batches, s.bn_refresh_batches))
        return {"prune_rate": stats.prune_rate, "lost": stats.lost, "regrown": stats.regrown}

    def _in_window(self, progress: Progress) -> bool:
        return progress.step < rewire_window(self.cfg, progress.total_steps)

    def after_step(self, progress: Progress) -> None:
        super().after_step(progress)
        every = self.cfg.sparsity.rewire_every
        if every > 0 and progress.step % every == 0 and self._in_window(progress):
            self._pending.append(self._rewire(progress))

    def state_dict(self) -> dict[str, Any]:
        # the epoch's rewirings so far (rewire_every > 0): a step-level checkpoint inside the
        # epoch must bring them back for the epoch's metrics record
        return {**super().state_dict(), "pending_rewires": [dict(r) for r in self._pending]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state.items() if k != "pending_rewires"})
        self._pending = [dict(r) for r in state.get("pending_rewires", [])]

    def epoch_end_update(self, progress: Progress) -> dict[str, Any]:
        if self.cfg.sparsity.rewire_every == 0 and self._in_window(progress):
            self._pending.append(self._rewire(progress))
        records, self._pending = self._pending, []
        return {"rewire": records} if records else {}
