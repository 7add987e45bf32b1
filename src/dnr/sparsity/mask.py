"""The declared interface of a mask object, and the settings every one of them runs with.

Two granularities fill it in — :class:`~dnr.sparsity.masking.Masking` (single weights) and
:class:`~dnr.sparsity.channel_masking.ChannelMasking` (whole output channels) — and a new
one is a new class registered in ``dnr.registry.GRANULARITIES`` that satisfies
:class:`MaskSet`. Sparsity methods talk to a mask object only through this interface.

:class:`MaskSettings` is the one frozen record of the ``sparsity.*`` settings a mask object
uses: built once from the config, checked once (here), written into the state dict and
read back from it, so a checkpoint resumes with the behaviour it was trained with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, get_args

import torch
from torch import Tensor, nn

from dnr.config import GrowMomentum, SparsityInit
from dnr.sparsity.channels import BUDGETS
from dnr.sparsity.rewiring import RewireStats
from dnr.statedict import canonical_name

if TYPE_CHECKING:
    from dnr.config import Config

__all__ = [
    "GROW_MOMENTUM",
    "GROW_SIGNALS",
    "INITS",
    "LEGACY_SETTINGS",
    "MaskSet",
    "MaskSettings",
    "first_moment",
    "gradient_signal",
    "growth_signals",
    "momentum_buffer",
    "missing_first_moment",
    "random_signal",
    "saved_masks",
    "settings_of",
]

#: Initial per-layer allocations: ``sparsity.init``'s, and IGQ (FlyingBird's, chosen by
#: that method's own option).
INITS: tuple[str, ...] = (*get_args(SparsityInit), "igq")
GROW_MOMENTUM: tuple[str, ...] = get_args(GrowMomentum)
#: What regrowth ranks inactive weights by: the optimizer's momentum (DNR, sparse momentum),
#: the last step's dense gradient (RigL-style, FlyingBird's option) or a uniform random draw
#: from the rewiring's generator (SET-style, FlyingBird's released default).
GROW_SIGNALS: tuple[str, ...] = ("momentum", "gradient", "random")
# Optimizer state keys holding a first-moment (momentum) estimate, in lookup order:
# SGD's buffer; Adam/AdamW's exp_avg as a fallback so the mask classes work with them too.
MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")


@dataclass(frozen=True)
class MaskSettings:
    """How a mask object allocates, rewires and counts (``docs/method.md`` for each).

    The defaults are the project's; the paper's rewiring is ``keep_regrown_values=False,
    protect_channels=False, redistribution=1, grow_momentum="keep"``. Channel mode reads
    ``density``, ``exclude``, the rewiring options and ``budget``; weight mode all but
    ``budget``.
    """

    density: float
    init: str = "uniform"
    exclude: tuple[str, ...] = ()
    regrow_pruned: bool = True
    keep_regrown_values: bool = True
    protect_channels: bool = True
    redistribution: float = 0.3
    grow_momentum: str = "zero"
    grow_by: str = "momentum"
    budget: str = "weights"

    def __post_init__(self) -> None:
        """Normalise the types (a YAML list, a numpy float) and check every range, once."""
        set_ = object.__setattr__  # frozen: normalise in place before anyone reads it
        set_(self, "density", float(self.density))
        set_(self, "exclude", tuple(self.exclude))
        set_(self, "redistribution", float(self.redistribution))
        for key in ("regrow_pruned", "keep_regrown_values", "protect_channels"):
            set_(self, key, bool(getattr(self, key)))
        if self.grow_by not in GROW_SIGNALS:
            raise ValueError(f"grow_by must be one of {GROW_SIGNALS}, got {self.grow_by!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if not 0.0 <= self.redistribution <= 1.0:
            raise ValueError(f"redistribution must be in [0, 1], got {self.redistribution}")
        if self.grow_momentum not in GROW_MOMENTUM:
            raise ValueError(
                f"grow_momentum must be one of {GROW_MOMENTUM}, got {self.grow_momentum!r}"
            )
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")

    @classmethod
    def from_config(cls, s: Any) -> MaskSettings:
        """From ``cfg.sparsity`` (a :class:`~dnr.config.SparsityConfig`)."""
        return cls(
            density=s.density,
            init=s.init,
            exclude=tuple(s.exclude),
            regrow_pruned=s.regrow_pruned,
            keep_regrown_values=s.keep_regrown_values,
            protect_channels=s.protect_channels,
            redistribution=s.redistribution,
            grow_momentum=s.grow_momentum,
            budget=s.budget,
        )

    def replace(self, **changes: Any) -> MaskSettings:
        """A copy with ``changes`` (checked like any other)."""
        return dataclasses.replace(self, **changes)

    def state(self) -> dict[str, Any]:
        """Plain types for a state dict."""
        return {**dataclasses.asdict(self), "exclude": list(self.exclude)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> MaskSettings:
        """Read back :meth:`state`; a key saved before its option existed takes the value
        runs had then (:data:`LEGACY_SETTINGS`). ``ValueError`` for values out of range."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {**LEGACY_SETTINGS, **{k: v for k, v in state.items() if k in known}}
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"masking state: {err}") from None


#: What a state dict saved before an option existed ran with: the paper's rewiring, a
#: weights budget, momentum growth.
LEGACY_SETTINGS: dict[str, Any] = {
    "init": "uniform",
    "exclude": (),
    "regrow_pruned": True,
    "keep_regrown_values": False,
    "protect_channels": False,
    "redistribution": 1.0,
    "grow_momentum": "keep",
    "grow_by": "momentum",
    "budget": "weights",
}


class MaskSet(Protocol):
    """A mask object: owns which parts of the prunable tensors are active, keeps the
    model's weights consistent with that after every step, rewires, and saves itself.

    Counts (``num_active``, ``target_active``, ``layer_counts``) are in the granularity's
    budget unit of prunable weights; ``masks`` maps its own keys (weight names, or channel
    groups) to boolean tensors.
    """

    granularity: ClassVar[str]
    description: ClassVar[str]
    settings: MaskSettings
    masks: dict[str, Tensor]
    density_target: float
    target_active: int

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """``ConfigError`` for ``sparsity.*`` settings this granularity cannot run with
        (called by config validation, before anything is built)."""
        ...

    @classmethod
    def from_config(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        s: Any,
        generator: torch.Generator,
    ) -> MaskSet:
        """Built from ``cfg.sparsity``."""
        ...

    @property
    def layer_names(self) -> list[str]: ...
    @property
    def layer_shapes(self) -> dict[str, tuple[int, ...]]: ...
    @property
    def num_prunable(self) -> int: ...
    @property
    def num_active(self) -> int: ...
    def density(self) -> float: ...
    def layer_densities(self) -> dict[str, float]: ...
    def layer_counts(self) -> dict[str, int]: ...
    def extra_stats(self) -> dict[str, Any]: ...
    def apply_(self) -> None: ...
    def rewire(
        self, prune_rate: float, generator: torch.Generator | None = None
    ) -> RewireStats: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...
    def adopt(self, state: Mapping[str, Any]) -> None: ...


def first_moment(optimizer: torch.optim.Optimizer | None, param: Tensor) -> Tensor | None:
    """The optimizer's own first-moment buffer of ``param`` (SGD's ``momentum_buffer``, or
    Adam's ``exp_avg``), or ``None`` before the first step (or without momentum)."""
    state = optimizer.state.get(param, {}) if optimizer is not None else {}
    for key in MOMENTUM_KEYS:
        buf = state.get(key)
        if isinstance(buf, Tensor) and buf.shape == param.shape:
            return buf
    return None


def missing_first_moment(
    optimizer: torch.optim.Optimizer, params: Mapping[str, Tensor]
) -> str | None:
    """Why ``optimizer`` will keep no first moment of ``params`` for momentum growth to read,
    or ``None`` when it will (judged before the first step, from its settings).

    Without one, :func:`momentum_buffer` hands regrowth a zero signal and it picks by index:
    a silent failure the callers refuse instead. SGD and RMSprop keep ``momentum_buffer``
    when ``momentum > 0``; the Adam family keeps ``exp_avg`` when ``betas[0] > 0``.
    """
    kind = type(optimizer).__name__
    for group in optimizer.param_groups:
        if "betas" in group:
            if float(group["betas"][0]) == 0.0:
                return f"{kind} has betas[0]=0 (no exp_avg)"
        elif "momentum" in group:
            if float(group["momentum"]) == 0.0:
                return f"{kind} has momentum=0 (no momentum_buffer)"
        else:
            return f"{kind} keeps no first moment ({' or '.join(MOMENTUM_KEYS)})"
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    outside = [name for name, p in params.items() if id(p) not in stepped]
    if outside:
        return f"{kind} does not step {', '.join(outside[:3])}" + (", ..." if outside[3:] else "")
    return None


def momentum_buffer(optimizer: torch.optim.Optimizer | None, param: Tensor) -> Tensor:
    """:func:`first_moment`, or a zero signal before there is one: growth then falls back to
    the deterministic lowest-index tie-break, and ŝ to uniform. The returned buffer is the
    optimizer's own tensor, so zeroing entries of it resets their momentum."""
    buf = first_moment(optimizer, param)
    return buf if buf is not None else torch.zeros_like(param)


def settings_of(settings: MaskSettings | None, options: Mapping[str, Any]) -> MaskSettings:
    """``settings``, or one built from a mask class's keyword ``options`` (not both)."""
    if settings is None:
        return MaskSettings(**options)
    if options:
        raise TypeError(f"pass settings or options, not both (got {sorted(options)})")
    return settings


def growth_signals(
    grow_by: str,
    optimizer: torch.optim.Optimizer | None,
    params: list[nn.Parameter],
    generator: torch.Generator | None,
    momenta: list[Tensor] | None = None,
) -> list[Tensor]:
    """What regrowth ranks the inactive entries of each layer by (``grow_by``): the
    optimizer's momentum (``momenta`` when the caller has them), the last dense gradient,
    or uniform random scores."""
    if grow_by == "momentum":
        return momenta if momenta is not None else [momentum_buffer(optimizer, p) for p in params]
    if grow_by == "gradient":
        return [gradient_signal(p) for p in params]
    return [random_signal(p, generator) for p in params]


def saved_masks(state: Mapping[str, Any], params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A weight-mode state's masks, on each weight's device (``ValueError`` for a state that
    is not one, or whose layers or shapes do not match ``params``)."""
    if not isinstance(state, Mapping):
        raise ValueError(f"masking state must be a mapping, got {type(state).__name__}")
    required = ("density", "init", "exclude", "layer_names", "masks")
    missing_keys = [k for k in required if k not in state]
    if missing_keys:
        raise ValueError(f"masking state is missing {', '.join(missing_keys)}")
    mine = list(params)
    theirs = [canonical_name(n) for n in state["layer_names"]]
    masks_in = {canonical_name(n): m for n, m in state["masks"].items()}
    missing = [n for n in mine if n not in masks_in]
    unexpected = [n for n in theirs if n not in params]
    if missing or unexpected:
        raise ValueError(
            "masking state does not match the model's prunable layers: "
            f"missing {missing or 'none'}, unexpected {unexpected or 'none'}"
        )
    bad = [
        f"{n}: saved {tuple(masks_in[n].shape)} vs model {tuple(params[n].shape)}"
        for n in mine
        if tuple(masks_in[n].shape) != tuple(params[n].shape)
    ]
    if bad:
        raise ValueError("masking state has mismatched shapes: " + "; ".join(bad))
    return {
        n: torch.as_tensor(masks_in[n]).to(device=params[n].device, dtype=torch.bool, copy=True)
        for n in mine
    }


def gradient_signal(param: Tensor) -> Tensor:
    """The dense gradient of the last backward pass (zero before the first one)."""
    return param.grad if param.grad is not None else torch.zeros_like(param)


def random_signal(param: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) scores for random growth, drawn on the generator's device (CPU by
    default, so every device draws the same positions)."""
    if generator is None:
        raise ValueError("random growth needs a generator (it draws the grown positions)")
    draw = torch.rand(param.shape, generator=generator, device=generator.device)
    return draw.to(param.device)
