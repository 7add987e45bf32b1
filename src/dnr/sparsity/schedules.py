"""Prune-rate schedule for rewiring, and :class:`RewireSchedule`: when rewiring happens.

DNR anneals the prune rate with a cosine *per iteration* (docs/method.md): rewiring itself
happens at the end of each epoch (or every ``rewire_every`` steps) and reads the rate at the
current global iteration, so the schedule is a function of the step, not of the epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["RewireSchedule", "cosine_prune_rate"]


def cosine_prune_rate(step: int, total_steps: int, p0: float = 0.5, p_min: float = 0.005) -> float:
    """Cosine annealing from ``p0`` at step 0 to ``p_min`` at ``total_steps``.

    p(t) = p_min + ½ (p0 − p_min)(1 + cos(π t)),  t = clamp(step / total_steps, 0, 1).
    Steps outside [0, total_steps] are clamped to the end points, so a resumed or
    over-long run never extrapolates to a rate below ``p_min`` or above ``p0``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= p_min <= p0 <= 1.0:
        raise ValueError(f"need 0 <= p_min <= p0 <= 1, got p0={p0}, p_min={p_min}")
    t = min(max(step / total_steps, 0.0), 1.0)
    return p_min + 0.5 * (p0 - p_min) * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class RewireSchedule:
    """When DNR rewires, how much each rewiring prunes, and how BN is refreshed after it.

    One record of the ``sparsity.*`` timing settings, shared by ``dnr train`` (through the
    registered ``dnr`` method) and a user's own loop (``dnr.DNR``), so that both run the
    same schedule. ``rewire_every`` 0 rewires at epoch ends; masks move only before
    ``rewire_until`` of the run (the *window*), over which the prune rate anneals by
    :func:`cosine_prune_rate`; ``refresh_batches`` BatchNorm re-estimation batches follow
    each rewiring (0: none).
    """

    prune_rate: float = 0.2
    prune_rate_min: float = 0.005
    rewire_every: int = 0
    rewire_until: float = 0.75
    refresh_batches: int = 8

    def __post_init__(self) -> None:
        """Check every range once, so a bad value fails at construction, not at a rewiring."""
        if not 0.0 <= self.prune_rate_min <= self.prune_rate <= 1.0:
            raise ValueError(
                "need 0 <= prune_rate_min <= prune_rate <= 1, got "
                f"prune_rate={self.prune_rate}, prune_rate_min={self.prune_rate_min}"
            )
        if self.rewire_every < 0:
            raise ValueError(f"rewire_every must be >= 0, got {self.rewire_every}")
        if not 0.0 < self.rewire_until <= 1.0:
            raise ValueError(f"rewire_until must be in (0, 1], got {self.rewire_until}")
        if self.refresh_batches < 0:
            raise ValueError(f"refresh_batches must be >= 0, got {self.refresh_batches}")

    @classmethod
    def from_config(cls, s: Any) -> RewireSchedule:
        """From ``cfg.sparsity`` (a :class:`~dnr.config.SparsityConfig`)."""
        return cls(
            prune_rate=s.prune_rate,
            prune_rate_min=s.prune_rate_min,
            rewire_every=s.rewire_every,
            rewire_until=s.rewire_until,
            refresh_batches=s.bn_refresh_batches,
        )

    def window(self, total_steps: int) -> int:
        """The step before which masks may move (exclusive); the prune rate anneals over it."""
        return max(1, int(round(self.rewire_until * total_steps)))

    def in_window(self, step: int, total_steps: int) -> bool:
        return step < self.window(total_steps)

    def rate(self, step: int, total_steps: int) -> float:
        """The prune rate of a rewiring at ``step``."""
        return cosine_prune_rate(
            step, self.window(total_steps), self.prune_rate, self.prune_rate_min
        )

    def due_after_step(self, step: int, total_steps: int) -> bool:
        """Whether the ``step``-th optimizer step (1-based) is followed by a rewiring."""
        every = self.rewire_every
        return every > 0 and step % every == 0 and self.in_window(step, total_steps)

    def due_at_epoch_end(self, step: int, total_steps: int) -> bool:
        """Whether an epoch that ended after ``step`` steps is followed by a rewiring."""
        return self.rewire_every == 0 and self.in_window(step, total_steps)

    def never_rewires(self, steps_per_epoch: int, total_steps: int) -> bool:
        """True if no rewiring falls inside the window: a static mask in disguise."""
        return (self.rewire_every or steps_per_epoch) >= self.window(total_steps)
