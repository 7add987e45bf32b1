"""``flyingbird``: FlyingBird and FlyingBird+ (Chen et al., ICLR 2022, "Sparsity Winning
Twice"), as their authors released them (VITA-Group/Sparsity-Win-Robust-Generalization
@6e9a862: ``main_adv.py``, ``utils.py``, ``sparselearning/core.py``, ``sparselearning/igq.py``,
``scripts/fb.sh``, ``scripts/fbp.sh``).

One run of adversarial training on a random sparse mask that keeps moving:

* **Initial allocation** (``init``): IGQ, density_l = 1/(f·numel_l + 1) with one f for the
  whole network (small layers nearly dense, large ones sparse), random positions. It
  replaces ``sparsity.init`` (which the per-layer counts below could never leave).
* **Mask update** every ``update_interval`` optimizer steps (release: 900, and 1200 in the
  second half of the run with ``--dynamic_fre``, which both run scripts pass): each layer
  prunes ``ceil(p · nnz_l)`` active weights of smallest |w| and regrows as many among its
  inactive ones (just-pruned included) — at ``random`` (the release's default, which its
  scripts run) or by the |gradient| of the step just taken (``growth: gradient``, RigL).
  Per-layer counts never change; a fully dense layer is left alone. A pruned-and-regrown
  weight keeps its value, a newly grown one starts at 0.
* **Death rate** p: cosine from 0.5 to 0.005 over the whole run, per iteration.
* **Momentum** of inactive weights is zeroed after every step (sparse_learning's
  ``apply_mask``), so a grown weight starts with none.
* **FlyingBird+** (``dynamic: true``): from ``dynamic_start`` of the run on, an update
  prunes an extra ``ceil(p · prune_ratio · nnz_l)`` (not regrown) when the robust
  train-validation accuracy gap rose in at least ``update_threshold`` of its last
  ``epoch_range`` epoch-to-epoch changes, and regrows ``int(r_l · (1 + growth_ratio))``
  instead of the ``r_l`` it pruned when the validation robust loss rose (or held) in that
  share of them: the density drifts. The figures come from the epoch's record, which the
  training loop must hand to the method (``Progress.metrics``; without it the density
  stays fixed, with a warning). As shipped, the release's first mask update crashes, in
  FlyingBird as in FlyingBird+: ``truncate_weights`` asks ``dst_prune()``, which reads
  ``args.dynamic_sparse``, never defined. It is read here as ``--fbp``, the flag that feeds
  the history, so plain FlyingBird never changes the density.

Run lengths differ from the release's 200 × 352 = 70,400 iterations, so by default the
update interval is the release's share of the run: ``round(900 · T / 70,400)`` steps for a
run of ``T`` (900 and 1200 exactly at the release's length; the release's 68 updates per
run at any length, one per step in runs too short for that). An update that would follow
an epoch's last batch — possibly a partial one, whose gradient covers a few images — is
made after the next epoch's first (full) batch.

Departures kept, each forced by this project: exact counts (the release truncates IGQ
counts per layer and grows at random with the expected count, not an exact one); ties at
the magnitude threshold broken by index; the hybrid loss and recipe of ``dnr compare``.
``sparsity.prune_rate``, ``rewire_*``, ``redistribution``, ``bn_refresh_batches``,
``grow_momentum``, ``keep_regrown_values``, ``regrow_pruned``, ``protect_channels`` and
``init`` are DNR's settings and do not apply here (the method's own options do).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from dnr.errors import ConfigError
from dnr.sparsity.base import Progress, Stage, register_method
from dnr.sparsity.flyingbird_masking import FlyingBirdMasking, update_counts
from dnr.sparsity.mask import MaskSettings
from dnr.sparsity.schedules import cosine_prune_rate
from dnr.sparsity.static import MaskedMethod

if TYPE_CHECKING:
    from dnr.config import Config

__all__ = [
    "RELEASE_INTERVAL",
    "RELEASE_LATE_INTERVAL",
    "RELEASE_STEPS",
    "FlyingBird",
    "rising_share",
    "update_due",
]

#: The release's run: 200 epochs of 352 iterations (45,000 CIFAR-10 images, batch 128).
RELEASE_STEPS = 200 * 352
#: Its mask-update intervals: ``--update_frequency`` and, past half the run with
#: ``--dynamic_fre`` (both run scripts), ``--second_frequency``.
RELEASE_INTERVAL = 900
RELEASE_LATE_INTERVAL = 1200


def update_due(
    step: int,
    steps_per_epoch: int,
    interval_of: Callable[[int], int],
    steps_per_batch: int = 1,
) -> bool:
    """Whether a mask update follows optimizer step ``step`` (1-based, counted over the run).

    Due when ``step`` is a multiple of the interval in force in its epoch
    (``interval_of(epoch)``), as the release's ``ite_step % update_frequency == 0``, except
    on an epoch's last batch (its last ``steps_per_batch`` steps), which may be partial: an
    update due there is made after the next epoch's first step instead, so the gradient a
    growth reads always covers a full batch. Stateless, so a resumed run decides the same.
    """
    if step < 1 or steps_per_epoch < 1:
        return False
    epoch, pos = divmod(step - 1, steps_per_epoch)
    defer = steps_per_epoch > steps_per_batch  # one batch per epoch: nothing to wait for
    if defer and pos >= steps_per_epoch - steps_per_batch:
        return False
    if step % interval_of(epoch) == 0:
        return True
    if defer and pos == 0 and epoch > 0:  # carried over from the last batch before
        late = interval_of(epoch - 1)
        return any(t % late == 0 for t in range(step - steps_per_batch, step))
    return False


def rising_share(values: Sequence[float], *, strict: bool) -> float | None:
    """Share of the consecutive changes in ``values`` that rose (``strict``: > 0, else
    >= 0), as the release's ``get_dst_ratio``; ``None`` with fewer than two values."""
    diffs = [b - a for a, b in zip(values, values[1:])]
    if not diffs:
        return None
    return sum((d > 0) if strict else (d >= 0) for d in diffs) / len(diffs)


@register_method
class FlyingBird(MaskedMethod):
    """Dynamic sparse training at fixed layer counts (FlyingBird); ``dynamic``: FlyingBird+."""

    masking: FlyingBirdMasking
    name = "flyingbird"
    description = (
        "FlyingBird (Chen et al. 2022, as released): IGQ init, prune |w| and regrow at random "
        "every ~900 steps at fixed layer counts; options.flyingbird.dynamic: FlyingBird+"
    )
    granularities: ClassVar[tuple[str, ...]] = ("weight",)

    @dataclass(frozen=True)
    class Options:
        #: initial per-layer allocation (release: igq; replaces sparsity.init)
        init: Literal["igq", "erk", "uniform"] = "igq"
        #: how inactive weights regrow (release default, run by its scripts: random)
        growth: Literal["random", "gradient"] = "random"
        #: death (prune) rate at the start of the run (release: 0.5) ...
        death_rate: float = 0.5
        #: ... cosine-decayed per iteration over the whole run to this (release: 0.005)
        death_rate_min: float = 0.005
        #: optimizer steps between mask updates (release: 900); null: the release's share
        #: of the run, round(900 · total_steps / 70,400)
        update_interval: int | None = None
        #: the interval past half the run (release: 1200); null: update_interval · 4/3 when
        #: that is set, else round(1200 · total_steps / 70,400)
        late_update_interval: int | None = None
        #: switch to late_update_interval past half the run (release scripts: --dynamic_fre)
        dynamic_frequency: bool = True
        #: zero the optimizer momentum of inactive weights after every step (release: yes)
        mask_momentum: bool = True
        #: each output channel keeps its largest-|w| active weight (release: no)
        protect_channels: bool = False
        #: FlyingBird+: the density follows the robust gap and validation loss
        dynamic: bool = False
        #: fraction of the run after which FlyingBird+ acts (release: epoch 100 of 200)
        dynamic_start: float = 0.5
        #: epochs whose changes decide (release: --epoch_range 4)
        epoch_range: int = 4
        #: extra prune, as a fraction of the death rate (release: --prune_ratio 0.4)
        prune_ratio: float = 0.4
        #: extra growth, as a fraction of the regrowth (release: --growth_ratio 0.05)
        growth_ratio: float = 0.05
        #: share of rising changes that triggers an action (release: --update_threshold 0.5)
        update_threshold: float = 0.5
        #: validation figure whose rises trigger growth: the PGD ``error`` (1 - accuracy,
        #: what the loop records), or the PGD ``loss`` (the release's; needs a loop that
        #: reports ``val_pgd_loss``, else the error stands in)
        val_signal: Literal["loss", "error"] = "error"

        def check(self, key: str) -> None:
            if not 0 < self.death_rate <= 1:
                raise ConfigError(f"{key}.death_rate: must be in (0, 1], got {self.death_rate}")
            if not 0 <= self.death_rate_min <= self.death_rate:
                raise ConfigError(
                    f"{key}.death_rate_min: must be in [0, {key}.death_rate], "
                    f"got {self.death_rate_min}"
                )
            for name in ("update_interval", "late_update_interval"):
                value = getattr(self, name)
                if value is not None and value < 1:
                    raise ConfigError(f"{key}.{name}: must be >= 1 or null, got {value}")
            for name in ("dynamic_start", "update_threshold"):
                if not 0 <= getattr(self, name) <= 1:
                    raise ConfigError(f"{key}.{name}: must be in [0, 1], got {getattr(self, name)}")
            if self.epoch_range < 1:
                raise ConfigError(f"{key}.epoch_range: must be >= 1, got {self.epoch_range}")
            for name in ("prune_ratio", "growth_ratio"):
                if getattr(self, name) < 0:
                    raise ConfigError(f"{key}.{name}: must be >= 0, got {getattr(self, name)}")

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        if cfg.sparsity.granularity != "weight":
            raise ConfigError(
                "sparsity.method=flyingbird moves single weights: set sparsity.granularity=weight"
            )
        if cls.options_of(cfg).dynamic and cfg.data.val_size == 0:
            raise ConfigError(
                "sparsity.options.flyingbird.dynamic: FlyingBird+ follows the validation "
                "split's robust figures every epoch; data.val_size must be > 0"
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[dict[str, Any]] = []  # updates since the last epoch end
        self._gap: list[float] = []  # per epoch: robust train accuracy - validation PGD accuracy
        self._val_loss: list[float] = []  # per epoch: the validation figure of val_signal
        self._noted: set[str] = set()  # one-time log lines (not state)
        self._per_batch: int | None = None

    def build_masks(self, generator: torch.Generator) -> FlyingBirdMasking:
        s, o = self.cfg.sparsity, self.opts
        settings = MaskSettings(
            density=s.density,
            init=o.init,
            exclude=tuple(s.exclude),
            regrow_pruned=True,  # the pruned are candidates of the same update's growth
            keep_regrown_values=True,  # nothing is zeroed between prune and growth
            protect_channels=o.protect_channels,
            redistribution=0.0,  # (rewire's; the updates here keep every layer's count)
            grow_momentum="keep",  # (rewire's; mask_momentum zeroes the inactive momentum)
            grow_by=o.growth,
        )
        return FlyingBirdMasking(self.model, self.optimizer, settings, generator=generator)

    # ------------------------------------------------------------------ schedule

    def interval(self, epoch: int, progress: Progress) -> int:
        """Optimizer steps between mask updates during ``epoch`` (0-based)."""
        o = self.opts
        late = o.dynamic_frequency and epoch > progress.epochs / 2  # as the release's test
        if late and o.late_update_interval is not None:
            return int(o.late_update_interval)
        if o.update_interval is not None:
            scale = RELEASE_LATE_INTERVAL / RELEASE_INTERVAL if late else 1.0
            return max(1, round(o.update_interval * scale))
        base = RELEASE_LATE_INTERVAL if late else RELEASE_INTERVAL
        return max(1, round(base * progress.total_steps / RELEASE_STEPS))

    def death_rate(self, progress: Progress) -> float:
        """The prune rate of an update after ``progress.step`` steps (cosine over the run)."""
        o = self.opts
        return cosine_prune_rate(
            progress.step, max(1, progress.total_steps), o.death_rate, o.death_rate_min
        )

    def _steps_per_batch(self) -> int:
        """Optimizer steps per batch: ``attack.replays`` in free training, else 1."""
        if self._per_batch is None:
            from dnr.training.step import train_mode  # (dnr.training imports dnr.sparsity)

            self._per_batch = train_mode(self.cfg).replays(self.cfg)
        return self._per_batch

    def is_due(self, progress: Progress) -> bool:
        """Whether an update follows the step just taken (:func:`update_due`)."""
        return update_due(
            progress.step,
            progress.steps_per_epoch,
            lambda epoch: self.interval(epoch, progress),
            self._steps_per_batch(),
        )

    def begin_stage(self, stage: Stage, progress: Progress) -> None:
        first, last = self.interval(0, progress), self.interval(progress.epochs - 1, progress)
        progress.log(
            f"flyingbird: a mask update every {first} steps"
            + (f" ({last} past half the run)" if last != first else "")
            + f" of {progress.total_steps}; death rate {self.opts.death_rate} cosine to "
            f"{self.opts.death_rate_min}; growth {self.opts.growth}"
            + ("; FlyingBird+ (dynamic)" if self.opts.dynamic else "")
        )

    # ------------------------------------------------------------------ hooks

    def after_step(self, progress: Progress) -> None:
        self.masking.apply_()
        momentum = self.opts.mask_momentum
        if momentum:
            self.masking.mask_momentum_()
        if self.is_due(progress):
            self._pending.append(self.update(progress))
            if momentum:  # the pruned ones' momentum (release: apply_mask after the update)
                self.masking.mask_momentum_()

    def dynamic_decision(self, progress: Progress) -> tuple[bool, bool]:
        """FlyingBird+'s ``(extra prune, extra growth)`` for an update now."""
        o = self.opts
        if not o.dynamic or progress.epoch < o.dynamic_start * progress.epochs:
            return False, False
        r = o.epoch_range + 1
        prune = rising_share(self._gap[-r:], strict=True)
        grow = rising_share(self._val_loss[-r:], strict=False)
        return (
            prune is not None and prune >= o.update_threshold,
            grow is not None and grow >= o.update_threshold,
        )

    @torch.no_grad()
    def update(self, progress: Progress) -> dict[str, Any]:
        """One mask update (the release's ``truncate_weights``); returns its record."""
        o = self.opts
        rate = self.death_rate(progress)
        extra_prune, extra_growth = self.dynamic_decision(progress)
        m = self.masking
        prune, grow = update_counts(
            m.layer_counts(),
            m.layer_sizes(),
            m.protected_counts(),
            rate,
            prune_ratio=o.prune_ratio if extra_prune else None,
            growth_ratio=o.growth_ratio if extra_growth else None,
        )
        stats = m.move_(prune, grow, generator=progress.generator("flyingbird"), prune_rate=rate)
        record: dict[str, Any] = {
            "step": progress.step,
            "prune_rate": rate,
            "lost": stats.lost,
            "regrown": stats.regrown,
            "density": stats.density,
        }
        if o.dynamic:
            record.update(extra_prune=extra_prune, extra_growth=extra_growth)
        return record

    def observe(self, train_adv_acc: float, val_pgd_acc: float, val_loss: float) -> None:
        """Add an epoch's figures to FlyingBird+'s history (the release's
        ``update_train_val_diff`` and ``update_loss_info``)."""
        self._gap.append(float(train_adv_acc) - float(val_pgd_acc))
        self._val_loss.append(float(val_loss))

    def _note(self, progress: Progress, key: str, line: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            progress.log(line)

    def _observe_epoch(self, progress: Progress) -> dict[str, Any]:
        """Take this epoch's figures from the loop's record, if it passes one."""
        metrics = getattr(progress, "metrics", None)
        if not isinstance(metrics, Mapping):
            self._note(
                progress,
                "metrics",
                "warning: flyingbird dynamic (FlyingBird+) needs the epoch's training and "
                "validation figures, which this training loop does not pass to the method "
                "(Progress.metrics): the density stays fixed",
            )
            return {"observed": False}
        train_adv, val_adv = metrics.get("train_adv_acc"), metrics.get("val_pgd_acc")
        if train_adv is None or val_adv is None:  # not validated (val_every) or not attacked
            return {"observed": False}
        signal, loss = "error", 1.0 - float(val_adv)
        if self.opts.val_signal == "loss":
            if metrics.get("val_pgd_loss") is not None:
                signal, loss = "loss", float(metrics["val_pgd_loss"])
            else:
                self._note(
                    progress,
                    "loss",
                    "note: flyingbird dynamic: no validation PGD loss in the epoch record; "
                    "growth follows the validation PGD error instead",
                )
        self.observe(train_adv, val_adv, loss)
        return {"observed": True, "val_signal": signal, "gap": self._gap[-1], "val_loss": loss}

    def epoch_end_update(self, progress: Progress) -> dict[str, Any]:
        record: dict[str, Any] = {}
        if self.opts.dynamic:
            record["dynamic"] = self._observe_epoch(progress)
        records, self._pending = self._pending, []
        if records:
            record["rewire"] = records
        return record

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        # the epoch's updates so far: a step checkpoint inside the epoch brings them back
        return {
            **super().state_dict(),
            "pending_rewires": [dict(r) for r in self._pending],
            "dynamic": {"gap": list(self._gap), "val_loss": list(self._val_loss)},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        own = ("pending_rewires", "dynamic")
        super().load_state_dict({k: v for k, v in state.items() if k not in own})
        self._pending = [dict(r) for r in state.get("pending_rewires", [])]
        history = state.get("dynamic") or {}
        self._gap = [float(x) for x in history.get("gap", [])]
        self._val_loss = [float(x) for x in history.get("val_loss", [])]
