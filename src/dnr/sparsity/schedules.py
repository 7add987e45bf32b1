"""Prune-rate schedule for rewiring.

DNR anneals the prune rate with a cosine *per iteration* (docs/method.md): rewiring itself
happens at the end of each epoch (or every ``rewire_every`` steps) and reads the rate at the
current global iteration, so the schedule is a function of the step, not of the epoch.
"""

from __future__ import annotations

import math

__all__ = ["cosine_prune_rate"]


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
