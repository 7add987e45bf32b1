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

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from dnr.coerce import coerce
from dnr.errors import ConfigError, did_you_mean
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

    The learning-rate schedule (``train.schedule``) restarts at each stage and runs over the
    stage's epochs. A stage owns its recipe: ``lr`` is its peak learning rate (``None``:
    ``train.lr``) and ``warmup`` whether ``train.warmup_epochs`` applies at its start —
    fine-tuning trained weights starts at the release's fine-tune LR, with no warm-up.
    """

    name: str
    epochs: int
    lr: float | None = None
    warmup: bool = True


@dataclass
class Progress:
    """Where training stands, as the hooks see it.

    ``step`` counts optimizer steps taken so far, including the one just taken when
    ``after_step`` runs; ``epoch`` is 0-based; ``stage`` is the current stage and
    ``stage_start`` its first epoch (``None`` / 0 outside a training loop).
    ``batches(epoch)`` replays that epoch's seeded training batches (for statistics such as
    BatchNorm re-estimation) without drawing from any RNG; ``log`` prints a line to the
    run's log; ``generator(...)`` is a seeded random stream for a method's own draws, so
    that they replay exactly on resume. ``metrics`` holds the epoch's training and
    validation figures (``train_adv_acc``, ``val_pgd_acc``, ...) when ``on_epoch_end`` runs
    (FlyingBird+ reacts to them).
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
    metrics: Mapping[str, Any] | None = None

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
    #: The method's settings (``sparsity.options.<name>``) as a frozen dataclass: typed
    #: fields with defaults, range checks in an optional ``check(key)``; other keys are
    #: refused. Methods without settings leave it ``None``.
    Options: ClassVar[type | None] = None
    #: Untyped alternative for plug-ins: the keys this method reads, with their defaults.
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
        self._opts: Any = None

    @classmethod
    def option_keys(cls) -> dict[str, Any]:
        """Every option this method takes, with its default (for checks and ``dnr list``)."""
        if cls.Options is None:
            return dict(cls.option_defaults)
        return {f.name: f.default for f in dataclasses.fields(cls.Options)}

    @classmethod
    def parse_options(cls, entry: Mapping[str, Any], key: str) -> Any:
        """``entry`` (the method's ``sparsity.options`` mapping) as the method's typed
        ``Options``, each value checked against its field's type and the ranges; a dict of
        the untyped defaults for plug-ins without ``Options``. ``ConfigError`` names the key."""
        known = cls.option_keys()
        unknown = sorted(set(entry) - set(known), key=str)
        if unknown:
            raise ConfigError(
                f"{key}: no option {', '.join(map(str, unknown))}"
                + did_you_mean(str(unknown[0]), known)
                + (f" (it takes {', '.join(sorted(known))})" if known else " (it takes none)")
            )
        if cls.Options is None:
            return {**known, **entry}
        hints = typing.get_type_hints(cls.Options)
        values = {n: coerce(f"{key}.{n}", v, hints[n]) for n, v in entry.items()}
        options = cls.Options(**values)
        check = getattr(options, "check", None)
        if check is not None:
            check(key)
        return options

    @classmethod
    def options_of(cls, cfg: Config) -> Any:
        """The typed options of ``cfg`` for this method (``sparsity.options.<method>``)."""
        return cls.parse_options(method_options(cfg), f"sparsity.options.{cfg.sparsity.method}")

    @property
    def opts(self) -> Any:
        """This run's typed options (``Options``), parsed once."""
        if self._opts is None:
            self._opts = self.options_of(self.cfg)
        return self._opts

    def option(self, key: str) -> Any:
        """``sparsity.options.<method>.<key>``, or this method's default for it."""
        if self.Options is not None:
            return getattr(self.opts, key)
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
