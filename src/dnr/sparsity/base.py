"""The interface every sparsity method implements, and the registry that names them.

A method owns all of its state (masks, scores, dual variables, schedules) and acts at a
few fixed points of training; the trainer calls those points and never asks which method
it runs. The shape follows ``torch.nn.utils.prune.BasePruningMethod`` (one object per
method, explicit ``state_dict``) and sparse_learning's ``Masking.step`` (the object that
wraps the optimizer step)::

    method = build_sparsity(cfg, model, optimizer, generator)   # by cfg.sparsity.method
    for stage in method.stages():                           # one stage unless multi-stage
        method.begin_stage(stage, progress)
        for each step:
            loss = hybrid_loss + method.loss_term(model)    # e.g. ADMM's proximal term
            loss.backward(); optimizer.step()
            method.after_step(progress)                     # re-apply masks, maybe rewire
        record.update(method.on_epoch_end(progress))        # rewire, project, anneal; logs
    checkpoint["sparsity"] = method.state_dict()

A new method is a new module with a subclass registered by ``@register_method``; its
name is then valid for ``sparsity.method``, listed by ``dnr list`` and usable from Python.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from dnr.registry import SPARSITY_METHODS
from dnr.seeding import derive_seed

if TYPE_CHECKING:
    from dnr.config import Config

__all__ = [
    "Progress",
    "SparsityMethod",
    "Stage",
    "build_sparsity",
    "list_methods",
    "method_options",
    "register_method",
]

M = TypeVar("M", bound="type[SparsityMethod]")


@dataclass(frozen=True)
class Stage:
    """A contiguous block of epochs with one purpose (``pretrain``, ``prune``, ``finetune``).

    The learning-rate schedule restarts at each stage and runs over the stage's epochs.
    """

    name: str
    epochs: int


@dataclass
class Progress:
    """Where training stands, as the hooks see it.

    ``step`` counts optimizer steps taken so far, including the one just taken when
    ``after_step`` runs; ``epoch`` is 0-based; ``stage`` is the current stage and
    ``stage_start`` its first epoch (``None`` / 0 outside a training loop).
    ``batches(epoch)`` replays that epoch's seeded training batches (for statistics such as
    BatchNorm re-estimation) without drawing from any RNG; ``log`` prints a line to the
    run's log; ``generator(...)`` is a seeded random stream for a method's own draws, so
    that they replay exactly on resume.
    """

    step: int
    epoch: int
    epochs: int
    steps_per_epoch: int
    batches: Callable[[int], Iterator[tuple[Tensor, Tensor]]] | None = None
    log: Callable[[str], None] = print
    seed: int = 0
    stage: Stage | None = None
    stage_start: int = 0

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def stage_epochs(self) -> int:
        """Length of the current stage (the whole run when there is one stage)."""
        return self.stage.epochs if self.stage is not None else self.epochs

    def generator(self, *purpose: int | str) -> torch.Generator:
        """A CPU generator seeded by ``(train.seed, purpose..., epoch, step)``."""
        seed = derive_seed(self.seed, "method", *purpose, self.epoch, self.step)
        return torch.Generator().manual_seed(seed)


class SparsityMethod(ABC):
    """One way of making a network sparse during training.

    Subclasses set ``name``, ``description`` and ``granularities`` (the values of
    ``sparsity.granularity`` they run with; empty for a method that prunes nothing) and
    implement
    :meth:`stats`, :meth:`state_dict` and :meth:`load_state_dict`; every hook has a
    do-nothing default. They are built with ``cls(cfg, model, optimizer, generator)``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    granularities: ClassVar[tuple[str, ...]] = ("weight",)
    #: ``sparsity.options`` this method reads, with their defaults (other keys are refused)
    option_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """Raise ``ConfigError`` for settings this method cannot run with (checked early)."""

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.optimizer = optimizer

    def option(self, key: str) -> Any:
        """``sparsity.options.<method>.<key>``, or this method's default for it."""
        return method_options(self.cfg).get(key, self.option_defaults[key])

    @property
    def granularity(self) -> str:
        """What this run removes: ``none`` or the configured ``sparsity.granularity``."""
        return self.cfg.sparsity.granularity if self.granularities else "none"

    # ------------------------------------------------------------------ schedule

    def stages(self) -> list[Stage]:
        """The stages of the run, whose epochs add up to ``train.epochs``."""
        return [Stage("train", self.cfg.train.epochs)]

    def begin_stage(self, stage: Stage, progress: Progress) -> None:
        """Called when ``stage`` starts (not again when a run resumes inside it)."""

    # ------------------------------------------------------------------ hooks

    def loss_term(self, model: nn.Module) -> Tensor | None:
        """An extra term added to the training loss (regularisers, ADMM penalties)."""
        return None

    def after_step(self, progress: Progress) -> None:
        """Called after every ``optimizer.step()``: keep the method's invariants."""

    def on_epoch_end(self, progress: Progress) -> dict[str, Any]:
        """Called after validation and checkpoint selection; returns fields for metrics."""
        return {}

    # ------------------------------------------------------------------ reporting

    def density(self) -> float:
        """Fraction of prunable weights that are active now."""
        return float(self.stats()["achieved_density"])

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Plain-JSON statistics for ``model.json``: ``target_density``,
        ``achieved_density`` and, for sparse methods, per-layer ``layers``."""

    def adopt_masks(self, state: Mapping[str, Any]) -> None:
        """Take the masks of another run's ``state_dict`` (``train.init_masks``), keeping
        this method's own settings; ``ValueError`` if they do not fit."""
        raise ValueError(f"sparsity.method={self.name} has no masks to take")

    # ------------------------------------------------------------------ checkpointing

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (tensors and plain types only)."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (``ValueError`` if it does not fit this model)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, density={self.density():.4f})"


def method_options(cfg: Config) -> dict[str, Any]:
    """The configured method's own entry of ``sparsity.options`` (keyed by method name, so
    one config can carry options for several methods, as ``dnr compare`` needs)."""
    return dict(cfg.sparsity.options.get(cfg.sparsity.method) or {})


def register_method(cls: M) -> M:
    """Class decorator: make ``cls`` available as ``sparsity.method=<cls.name>``."""
    if not (isinstance(cls, type) and issubclass(cls, SparsityMethod)):
        raise TypeError(f"{cls!r} is not a SparsityMethod subclass")
    return SPARSITY_METHODS.register(cls, name=cls.name)


def list_methods() -> list[str]:
    """Registered sparsity method names, sorted."""
    return SPARSITY_METHODS.names()


def build_sparsity(
    cfg: Config,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> SparsityMethod:
    """The configured method, built on ``model`` (``ConfigError`` for an unknown name)."""
    cls: type[SparsityMethod] = SPARSITY_METHODS.get(cfg.sparsity.method)
    return cls(cfg, model, optimizer, generator)
