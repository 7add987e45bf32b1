"""Learning-rate schedules as pure functions of the (fractional) epoch: resume needs no state."""

from __future__ import annotations

import math

from dnr.config import Config
from dnr.sparsity import Progress

__all__ = ["learning_rate", "milestone_epochs", "schedule_warning", "step_learning_rate"]


def milestone_epochs(cfg: Config, epochs: int | None = None) -> list[float]:
    """The multistep milestones in epochs: fractions (< 1) scale with the run's length."""
    t = cfg.train
    length = t.epochs if epochs is None else epochs
    return [m * length if m < 1 else float(m) for m in t.milestones]


def learning_rate(
    cfg: Config,
    epoch_progress: float,
    step_epochs: float = 0.0,
    epochs: int | None = None,
    *,
    peak: float | None = None,
    warmup: bool = True,
) -> float:
    """LR at a fractional epoch of a schedule ``epochs`` long (default ``train.epochs``).

    The cosine or multistep value of ``peak`` (default ``train.lr``) is scaled by a linear
    warm-up over ``train.warmup_epochs`` that counts the step being taken (``step_epochs`` =
    one step's length in epochs), so the first step already moves the weights. Multi-stage
    methods restart the schedule at each stage with ``epochs`` = the stage's length and the
    stage's own ``peak`` and ``warmup`` (``Stage.lr``, ``Stage.warmup``).
    """
    t = cfg.train
    length = t.epochs if epochs is None else epochs
    base = t.lr if peak is None else peak
    if t.schedule == "cosine":
        lr = 0.5 * base * (1.0 + math.cos(math.pi * min(epoch_progress / length, 1.0)))
    else:
        passed = sum(1 for m in milestone_epochs(cfg, length) if epoch_progress >= m - 1e-9)
        lr = base * (t.gamma**passed)
    if warmup and t.warmup_epochs > 0:
        lr *= min(1.0, (epoch_progress + step_epochs) / t.warmup_epochs)
    return lr


def step_learning_rate(cfg: Config, prog: Progress, batch: int, steps: int) -> float:
    """The LR of the epoch's ``batch``-th of ``steps`` steps: the stage's schedule restarted
    at its own peak, warmed up or not (``Stage.lr``, ``Stage.warmup``)."""
    stage = prog.stage
    return learning_rate(
        cfg,
        prog.epoch - prog.stage_start + batch / steps,
        1 / steps,
        prog.stage_epochs,
        peak=stage.lr if stage else None,
        warmup=stage.warmup if stage else True,
    )


def schedule_warning(cfg: Config) -> str | None:
    """A message if the learning rate never decays within the run (a silent recipe bug).

    (Milestones outside the run are already rejected by the config's validation.)
    """
    t = cfg.train
    if t.schedule == "multistep" and (t.gamma == 1 or not t.milestones):
        return (
            f"warning: the learning rate never decays in this {t.epochs}-epoch run "
            f"(train.milestones={t.milestones}, train.gamma={t.gamma}); "
            "fractions such as [0.5, 0.75] or train.schedule=cosine scale with the run"
        )
    return None
