"""``dnr``: Dynamic Network Rewiring — prune by magnitude, regrow by momentum (docs/method.md).

Rewiring happens at the end of each epoch (or every ``sparsity.rewire_every`` steps) until
``sparsity.rewire_until`` of the run, with a prune rate that anneals over that window; after
each rewiring BatchNorm statistics are re-estimated on a few seeded clean batches. The
schedule itself is :class:`~dnr.sparsity.rewirer.Rewirer`'s, shared with ``dnr.DNR``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dnr.errors import ConfigError
from dnr.sparsity.base import Progress, Stage, register_method
from dnr.sparsity.rewirer import BatchSource, GeneratorSource, Rewirer
from dnr.sparsity.schedules import RewireSchedule
from dnr.sparsity.static import MaskedMethod

if TYPE_CHECKING:
    from dnr.config import Config


def rewire_window(cfg: Config, total_steps: int) -> int:
    """The step before which masks may move (exclusive); the prune rate anneals over it."""
    return RewireSchedule.from_config(cfg.sparsity).window(total_steps)


def rewiring_warning(cfg: Config, steps_per_epoch: int) -> str | None:
    """A message if no rewiring falls inside the window: DNR would silently train a static mask."""
    s = cfg.sparsity
    total = steps_per_epoch * cfg.train.epochs
    if not RewireSchedule.from_config(s).never_rewires(steps_per_epoch, total):
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
        self.schedule = RewireSchedule.from_config(self.cfg.sparsity)
        self._pending: list[dict[str, Any]] = []  # rewirings since the last epoch end

    @property
    def rewirer(self) -> Rewirer:
        """The schedule over this run's masks: the same code ``dnr.DNR`` runs in a user's loop."""
        return Rewirer(self.model, self.masking, self.schedule)

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        if cfg.train.momentum == 0:
            raise ConfigError("sparsity.method=dnr grows by momentum: train.momentum must be > 0")

    def begin_stage(self, stage: Stage, progress: Progress) -> None:
        warning = rewiring_warning(self.cfg, progress.steps_per_epoch)
        if warning:
            progress.log(warning)

    def _drive(self, progress: Progress) -> tuple[int, int, GeneratorSource, BatchSource]:
        """The rewirer's view of ``progress``: step, run length, a rewiring's generator and
        the BN refresh batches (clean batches of the next epoch: seeded, no RNG drawn)."""
        batches = progress.batches
        source: BatchSource = None
        if batches is not None:
            epoch = progress.epoch + 1
            source = lambda: (x for x, _ in batches(epoch))  # noqa: E731
        return progress.step, progress.total_steps, lambda: progress.generator("rewire"), source

    def after_step(self, progress: Progress) -> None:
        done = self.rewirer.after_step(*self._drive(progress))
        if done is not None:
            self._pending.append(done.record())

    def state_dict(self) -> dict[str, Any]:
        # the epoch's rewirings so far (rewire_every > 0): a step-level checkpoint inside the
        # epoch must bring them back for the epoch's metrics record
        return {**super().state_dict(), "pending_rewires": [dict(r) for r in self._pending]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state.items() if k != "pending_rewires"})
        self._pending = [dict(r) for r in state.get("pending_rewires", [])]

    def epoch_end_update(self, progress: Progress) -> dict[str, Any]:
        done = self.rewirer.at_epoch_end(*self._drive(progress))
        if done is not None:
            self._pending.append(done.record())
        records, self._pending = self._pending, []
        return {"rewire": records} if records else {}
