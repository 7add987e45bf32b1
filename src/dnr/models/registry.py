"""Name -> model constructor (timm-style), and the one way to build a model.

Constructors are registered with :func:`register_model` and take keyword arguments
``num_classes, input_size, width, mean, std``. :func:`create_model` validates those
arguments once, for every architecture, and records them on the model as
``model.arch_config`` so that ``create_model(**model.arch_config)`` rebuilds the same
architecture (artifacts write it to ``model.json``).

Besides the registered names, ``MODELS`` resolves two forms of foreign model (see
``foreign.py``): ``package.module:callable``, any importable factory called with
``num_classes=``, and ``timm:<name>``, a timm model (when timm is installed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

from torch import nn

from dnr.models.foreign import TIMM_PREFIX, resolve_foreign
from dnr.models.layers import CIFAR_MEAN, CIFAR_STD
from dnr.registry import MODELS, UnknownNameError

ModelFn = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFn)

#: The largest image side create_model accepts (a guard against a mistyped size; each
#: architecture states its own minimum, e.g. VGG16's five pools need 32).
MAX_INPUT_SIZE = 4096

MODELS.add_resolver(resolve_foreign, ("package.module:callable", f"{TIMM_PREFIX}<name>"))


@overload
def register_model(fn: F, *, name: str | None = None) -> F: ...
@overload
def register_model(fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...


def register_model(fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
    """Register a model constructor under ``name`` (default: the function's name).

    Usable bare (``@register_model``) or with a name (``@register_model(name="x")``).
    Registering a name twice is an error rather than a silent override.
    """
    return MODELS.register(fn, name=name) if fn is not None else MODELS.register(name=name)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


def create_model(
    name: str,
    *,
    num_classes: int,
    input_size: int = 32,
    width: float = 1.0,
    mean: Sequence[float] = CIFAR_MEAN,
    std: Sequence[float] = CIFAR_STD,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered (or foreign, ``package.module:callable`` / ``timm:<name>``) model
    that takes [0,1] images of ``input_size`` pixels a side and returns logits.

    Raises ``ValueError`` for an unknown name (listing the known ones) or an invalid
    argument. Extra ``kwargs`` go to the architecture's constructor unchanged (timm-style).
    The returned model carries ``arch_config`` (plain JSON-able values) from which
    ``create_model(**arch_config)`` rebuilds it.
    """
    try:
        constructor = MODELS.get(name)
    except UnknownNameError as err:
        raise ValueError(str(err)) from None
    key = MODELS.canonical(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if (
        isinstance(input_size, bool)
        or not isinstance(input_size, int)
        or not 1 <= input_size <= MAX_INPUT_SIZE
    ):
        raise ValueError(
            f"input_size must be an integer in [1, {MAX_INPUT_SIZE}], got {input_size!r}"
        )
    width = float(width)
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number, got {width!r}")
    mean_l = [float(v) for v in mean]
    std_l = [float(v) for v in std]
    if len(mean_l) != 3 or len(std_l) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {mean_l} and {std_l}")

    try:
        model = constructor(
            num_classes=int(num_classes),
            input_size=int(input_size),
            width=width,
            mean=mean_l,
            std=std_l,
            **kwargs,
        )
    except TypeError as err:  # an extra keyword the constructor does not take
        if not kwargs:
            raise
        raise ValueError(f"model {key!r} does not accept {sorted(kwargs)}: {err}") from None
    arch_config: dict[str, Any] = dict(
        name=key,
        num_classes=int(num_classes),
        input_size=int(input_size),
        width=width,
        mean=mean_l,
        std=std_l,
        **kwargs,
    )
    model.arch_config = arch_config
    return model
