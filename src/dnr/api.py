"""The library surface for a user's own training loop: ``dnr.DNR`` and ``dnr.evaluate``.

``dnr train`` owns its loop; many users have one already. :class:`DNR` brings the method into
theirs, in the spirit of sparse_learning's ``Masking``: it takes the model and the optimizer,
holds the budget, and from two calls per loop runs the whole schedule ``dnr train`` runs
(the same :class:`~dnr.sparsity.rewirer.Rewirer`, so the two cannot drift)::

    sparse = dnr.DNR(model, optimizer, density=0.05, epochs=E, steps_per_epoch=len(loader),
                     refresh_batches=loader)
    for epoch in range(E):
        for x, y in loader:
            ...; loss.backward(); optimizer.step()
            sparse.step()             # re-mask (exact budget); rewire if rewire_every is due
        sparse.epoch_end()            # rewire at epoch ends (rewire_every=0, the default)

:func:`evaluate` is :func:`dnr.robustness.evaluate_model`: any model, any protocol.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dnr.config import ConfigError, from_dict
from dnr.registry import GRANULARITIES
from dnr.robustness import evaluate_model
from dnr.seeding import derive_seed
from dnr.sparsity.layers import prunable_parameters
from dnr.sparsity.mask import MaskSet, missing_first_moment
from dnr.sparsity.rewirer import BatchSource, GeneratorSource, Rewirer, Rewiring
from dnr.sparsity.schedules import RewireSchedule

__all__ = ["DNR", "evaluate"]

_STATE_FORMAT = "dnr.api/1"

#: Any model under a registered protocol (``dnr list protocols``): an ``EvalReport``.
evaluate = evaluate_model


class DNR:
    """Dynamic Network Rewiring over ``model``, driven by a user's own loop.

    Args:
        model: the network; its Conv2d/Linear weights are masked to ``density`` at once.
        optimizer: the optimizer stepping it; regrowth reads its momentum, so it must keep
            one (SGD/RMSprop with ``momentum > 0``, Adam-family with ``betas[0] > 0``),
            unless ``grow_by="gradient"`` or ``"random"`` is asked for (``ValueError``).
        density: fraction of prunable weights kept (0.05 = 20x), held exactly every step.
        total_steps: optimizer steps in the run, or give ``epochs`` and ``steps_per_epoch``;
            the rewiring window and the prune-rate annealing are fractions of it.
        refresh_batches: a re-iterable of input batches (``x`` or ``(x, y, ...)``, e.g. the
            training loader) for the BatchNorm refresh after each rewiring; without it the
            refresh is skipped with a warning (``bn_refresh_batches=0`` turns it off).
        seed: seeds the initial masks (as ``train.seed`` does in ``dnr train``).
        **sparsity: any other ``sparsity.*`` setting of ``dnr train`` by its key
            (``granularity``, ``init``, ``prune_rate``, ``rewire_every``, ``rewire_until``,
            ``bn_refresh_batches``, ``exclude``, ...), with the same defaults and checks
            (``ConfigError``, a ``ValueError``, naming the key).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        density: float = 0.05,
        *,
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        refresh_batches: Iterable[Any] | None = None,
        seed: int = 0,
        grow_by: str = "momentum",
        **sparsity: Any,
    ) -> None:
        s = _sparsity_config(density, sparsity)
        self.total_steps = _total_steps(total_steps, epochs, steps_per_epoch)
        self.model, self.optimizer, self.seed = model, optimizer, seed
        if grow_by == "momentum":
            _check_momentum(optimizer, prunable_parameters(model, list(s.exclude)))
        masks_rng = torch.Generator().manual_seed(derive_seed(seed, "masks"))  # as dnr train
        masking: MaskSet = GRANULARITIES.get(s.granularity).from_config(
            model, optimizer, s, masks_rng
        )
        if grow_by != "momentum":
            masking.settings = masking.settings.replace(grow_by=grow_by)
        self.rewirer = Rewirer(model, masking, RewireSchedule.from_config(s))
        self.refresh_batches = refresh_batches
        self.steps = 0  # optimizer steps seen by step()
        self.epochs_done = 0  # epoch_end() calls
        self.history: list[dict[str, Any]] = []  # every rewiring, in order
        self._warned_empty = False
        self._warn_setup(steps_per_epoch)

    # ------------------------------------------------------------------ the two calls

    def step(self) -> dict[str, Any] | None:
        """After each ``optimizer.step()``: re-mask the weights; rewire when due. Returns the
        rewiring's record, if one happened."""
        self.steps += 1
        return self._note(self.rewirer.after_step(self.steps, self.total_steps, *self._sources()))

    def epoch_end(self) -> dict[str, Any] | None:
        """At the end of each epoch: rewire when due (``rewire_every=0``). Returns the
        rewiring's record, if one happened."""
        record = self._note(
            self.rewirer.at_epoch_end(self.steps, self.total_steps, *self._sources())
        )
        self.epochs_done += 1
        return record

    # ------------------------------------------------------------------ reporting

    @property
    def masking(self) -> MaskSet:
        """The mask object (``dnr.sparsity.Masking`` or ``ChannelMasking``)."""
        return self.rewirer.masking

    @property
    def masks(self) -> dict[str, Tensor]:
        """Boolean masks by weight name (channel mode: by channel group)."""
        return self.masking.masks

    @property
    def schedule(self) -> RewireSchedule:
        return self.rewirer.schedule

    @property
    def prune_rate(self) -> float:
        """The prune rate a rewiring would use now (cosine-annealed over the window)."""
        return self.schedule.rate(self.steps, self.total_steps)

    @property
    def rewiring(self) -> bool:
        """Whether masks may still move (the step count is inside ``rewire_until``)."""
        return self.schedule.in_window(self.steps, self.total_steps)

    def density(self) -> float:
        """Fraction of prunable weights active now (the budget: exact after every step)."""
        return self.masking.density()

    def layer_densities(self) -> dict[str, float]:
        return self.masking.layer_densities()

    def __repr__(self) -> str:
        return (
            f"dnr.DNR(density={self.masking.density_target}, "
            f"granularity={self.masking.granularity!r}, step={self.steps}/{self.total_steps}, "
            f"rewirings={len(self.history)})"
        )

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Masks, settings and counters (tensors and plain types: ``weights_only`` loads)."""
        return {
            "format": _STATE_FORMAT,
            "masking": self.masking.state_dict(),
            "steps": self.steps,
            "epochs_done": self.epochs_done,
            "total_steps": self.total_steps,
            "history": [dict(r) for r in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` (with the model's and optimizer's own states, the
        run continues exactly); ``ValueError`` if it is not one or does not fit the model."""
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"not a dnr.DNR state (format {_STATE_FORMAT} expected)")
        if int(state["total_steps"]) != self.total_steps:
            raise ValueError(
                f"that state is of a {state['total_steps']}-step run, this one has "
                f"total_steps={self.total_steps}: the schedule would not resume where it was"
            )
        self.masking.load_state_dict(state["masking"])
        self.steps, self.epochs_done = int(state["steps"]), int(state["epochs_done"])
        self.history = [dict(r) for r in state.get("history", [])]

    # ------------------------------------------------------------------ internals

    def _sources(self) -> tuple[GeneratorSource, BatchSource]:
        """A rewiring's generator (seeded by step, as ``dnr train``'s) and the BN batches."""
        step, epoch = self.steps, self.epochs_done

        def generator() -> torch.Generator:
            return torch.Generator().manual_seed(
                derive_seed(self.seed, "method", "rewire", epoch, step)
            )

        source = self.refresh_batches
        return generator, (None if source is None else lambda: self._inputs(source))

    def _inputs(self, source: Iterable[Any]) -> Iterator[Tensor]:
        """The input tensors of ``source``'s batches, on the model's device."""
        device = next(self.model.parameters()).device
        for batch in source:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            yield x.to(device, non_blocking=True)

    def _note(self, done: Rewiring | None) -> dict[str, Any] | None:
        """Record a rewiring (and warn once if its BN refresh found no batch)."""
        if done is None:
            return None
        if self.schedule.refresh_batches and self.refresh_batches is not None:
            if done.refreshed == 0 and not self._warned_empty:
                self._warned_empty = True
                warnings.warn(
                    "dnr.DNR: refresh_batches yielded no batch, so the BatchNorm refresh "
                    "after rewiring was skipped (pass a re-iterable such as a DataLoader)",
                    stacklevel=3,
                )
        record = {
            "step": done.step,
            "epoch": self.epochs_done + 1,  # 1-based, as in dnr train's metrics.jsonl
            **done.record(),
            "bn_refresh_batches": done.refreshed,
        }
        self.history.append(record)
        return record

    def _warn_setup(self, steps_per_epoch: int | None) -> None:
        """Say at construction what would otherwise silently not happen."""
        sched = self.schedule
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        if sched.refresh_batches > 0 and self.refresh_batches is None and has_bn:
            warnings.warn(
                "dnr.DNR: no refresh_batches given, so the BatchNorm refresh after each "
                f"rewiring (bn_refresh_batches={sched.refresh_batches}) is skipped; pass "
                "refresh_batches=<your training loader>, or bn_refresh_batches=0",
                stacklevel=3,
            )
        known = sched.rewire_every or steps_per_epoch  # (epoch length unknown: no verdict)
        if known and sched.never_rewires(steps_per_epoch or 0, self.total_steps):
            warnings.warn(
                f"dnr.DNR: no rewiring falls before rewire_until={sched.rewire_until} of this "
                f"{self.total_steps}-step run, so the masks never move; rewire more often "
                "(rewire_every) or later",
                stacklevel=3,
            )


def _sparsity_config(density: float, options: Mapping[str, Any]) -> Any:
    """``sparsity.*`` as ``dnr train`` would check it: same defaults, ranges and messages."""
    refused = sorted({"method", "options"} & set(options))
    if refused:
        raise ConfigError(f"dnr.DNR runs sparsity.method=dnr; it takes no {', '.join(refused)}")
    tree = {"sparsity": {"method": "dnr", "density": density, **options}}
    return from_dict(tree).sparsity


def _total_steps(total: int | None, epochs: int | None, per_epoch: int | None) -> int:
    """The run's length in optimizer steps, from whichever way the user gave it."""
    if total is None:
        if epochs is None or per_epoch is None:
            raise ValueError("dnr.DNR needs total_steps=, or epochs= and steps_per_epoch=")
        total = epochs * per_epoch
    elif epochs is not None and per_epoch is not None and epochs * per_epoch != total:
        raise ValueError(f"total_steps={total} but epochs * steps_per_epoch = {epochs * per_epoch}")
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total!r}")
    return total


def _check_momentum(optimizer: torch.optim.Optimizer, params: Mapping[str, Tensor]) -> None:
    """Refuse an optimizer regrowth cannot read momentum from (it would regrow by index)."""
    reason = missing_first_moment(optimizer, params)
    if reason is not None:
        raise ValueError(
            f"dnr.DNR regrows weights by the optimizer's momentum, but {reason}: use SGD with "
            "momentum > 0 or Adam, or pass grow_by='gradient' to regrow by the last gradient"
        )
