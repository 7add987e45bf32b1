"""Foreign models: any importable factory, or a timm model, under the project's contract.

``model.name`` may name a network this project does not define:

- ``package.module:callable`` — an importable factory (``torchvision.models:resnet18``,
  ``mypkg.nets:Net``), called with ``num_classes=`` plus ``model.kwargs``;
- ``timm:<name>`` — ``timm.create_model(<name>, num_classes=..., **model.kwargs)``, when
  timm is installed (never pretrained unless ``model.kwargs`` says so).

A foreign network expects normalised inputs; the project's models take [0,1] images (the
attacks' ε-balls live there). :class:`ForeignModel` therefore puts the dataset's
``Normalize`` in front, as the built-ins do, and ``create_model`` records ``arch_config``
as for any model, so ``model.json`` rebuilds it for eval, export and resume. Its channel
groups are derived from its graph, and ``channels=`` (a compact export) cuts them in place.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dnr.models.layers import Normalize
from dnr.models.narrow import narrow_channels
from dnr.registry import UnresolvableNameError

__all__ = ["ForeignConstructor", "ForeignModel", "TIMM_PREFIX", "resolve_foreign"]

#: ``model.name`` prefix of a timm model
TIMM_PREFIX = "timm:"
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_FACTORY = re.compile(rf"({_DOTTED}):({_DOTTED})")


class ForeignModel(nn.Module):
    """``Normalize`` then the foreign network: [0,1] images in, logits out.

    Submodules: ``normalize`` and ``net`` (the factory's network, its module names under
    ``net.``). Not called ``module``: that name means a DDP wrapper to the rest of the code.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(self.normalize(x))
        return out


class ForeignConstructor:
    """The ``MODELS`` entry of one foreign name: build, wrap, narrow, and try one image.

    Its signature is the factory's own (less ``num_classes``) plus the keywords every
    constructor takes, so that ``model.kwargs`` is checked against it before data is read.
    """

    def __init__(self, spec: str, factory: Callable[..., Any]) -> None:
        self.spec = spec
        self.factory = factory
        self.__signature__ = _signature(factory)

    def __call__(
        self,
        *,
        num_classes: int,
        input_size: int,
        width: float,
        mean: Sequence[float],
        std: Sequence[float],
        channels: Mapping[str, int] | None = None,
        **kwargs: Any,
    ) -> ForeignModel:
        if width != 1.0:
            raise ValueError(
                f"model {self.spec!r}: model.width scales the built-in models only, got "
                f"{width}; pass the network's own width argument through model.kwargs"
            )
        try:
            net = self.factory(num_classes=num_classes, **kwargs)
        except Exception as err:  # noqa: BLE001 - any failure of user code is one line
            raise ValueError(
                f"model {self.spec!r}: calling it failed ({type(err).__name__}: {err})"
            ) from None
        if not isinstance(net, nn.Module):
            raise ValueError(
                f"model {self.spec!r}: returned a {type(net).__name__}, not a torch.nn.Module"
            )
        model = ForeignModel(net, mean, std)
        if channels:
            narrow_channels(model, channels)
        _try_one_image(self.spec, model, input_size, num_classes)
        return model


def _signature(factory: Callable[..., Any]) -> inspect.Signature:
    keyword = inspect.Parameter.KEYWORD_ONLY
    common = [
        inspect.Parameter(name, keyword)
        for name in ("num_classes", "input_size", "width", "mean", "std")
    ]
    common.append(inspect.Parameter("channels", keyword, default=None))
    try:
        own = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # no signature: accept any keyword, the factory decides
        own = [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
    names = {p.name for p in common}
    rest = [
        p.replace(kind=keyword) if p.kind is not inspect.Parameter.VAR_KEYWORD else p
        for p in own
        if p.name not in names and p.kind is not inspect.Parameter.VAR_POSITIONAL
    ]
    rest.sort(key=lambda p: p.kind is inspect.Parameter.VAR_KEYWORD)
    return inspect.Signature([*common, *rest])


@torch.no_grad()
def _try_one_image(spec: str, model: nn.Module, size: int, num_classes: int) -> None:
    """One eval-mode forward pass on a blank image: a network that cannot take the
    dataset's images, or gives the wrong number of logits, fails here in one line."""
    model.eval()
    try:
        out = model(torch.zeros(1, 3, size, size))
    except Exception as err:  # noqa: BLE001 - any failure of user code is one line
        raise ValueError(
            f"model {spec!r} cannot take {size}x{size} images ({type(err).__name__}: {err})"
        ) from None
    finally:
        model.train()
    if not isinstance(out, Tensor) or tuple(out.shape) != (1, num_classes):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"model {spec!r}: expected logits of shape (batch, {num_classes}), got {shape}"
        )


def resolve_foreign(name: str) -> ForeignConstructor | None:
    """The constructor of a foreign ``name``; None for a name of neither form.

    ``UnresolvableNameError`` (one line: the name and why) when the module does not
    import, lacks the attribute, or timm does not know the model.
    """
    if name.startswith(TIMM_PREFIX):
        return _resolve_timm(name, name[len(TIMM_PREFIX) :])
    match = _FACTORY.fullmatch(name)
    if match is None:
        return None
    module_name, attribute = match.groups()
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - e.g. torchvision beside a CPU-only torch
        raise UnresolvableNameError(
            f"model {name!r}: cannot import {module_name} ({type(err).__name__}: {err})"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UnresolvableNameError(
                f"model {name!r}: {module_name} has no attribute {attribute!r}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise UnresolvableNameError(f"model {name!r}: {attribute} is not callable")
    return ForeignConstructor(name, target)


def _resolve_timm(name: str, model_name: str) -> ForeignConstructor:
    try:
        timm = importlib.import_module("timm")
    except Exception as err:  # noqa: BLE001 - not installed, or broken beside this torch
        raise UnresolvableNameError(
            f"model {name!r}: timm does not import here ({type(err).__name__}: {err}); "
            "install the models extra"
        ) from None
    if not model_name or not timm.is_model(model_name):
        raise UnresolvableNameError(
            f"model {name!r}: timm has no model {model_name!r} (see timm.list_models())"
        )
    return ForeignConstructor(name, functools.partial(timm.create_model, model_name))
