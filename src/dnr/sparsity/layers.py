"""Which tensors are prunable: the one definition every sparsity method shares."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from torch import nn

from dnr.statedict import canonical_name

__all__ = ["PRUNABLE_MODULES", "prunable_parameters"]

PRUNABLE_MODULES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def prunable_parameters(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """Weights of every ``nn.Conv2d`` / ``nn.Linear`` in ``model``, keyed by canonical name.

    Biases, BatchNorm parameters and buffers (e.g. the Normalize layer's mean/std) are never
    prunable. ``exclude`` holds fnmatch patterns matched against the canonical parameter
    name (``"features.0.weight"``, ``"classifier.*"``); matching tensors stay dense and are
    not counted in N. Order follows ``model.named_parameters()``.
    """
    patterns = list(exclude)
    weight_ids = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, PRUNABLE_MODULES) and isinstance(getattr(m, "weight", None), nn.Parameter)
    }
    out: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        if id(param) not in weight_ids:
            continue
        key = canonical_name(name)
        if any(fnmatchcase(key, pat) for pat in patterns):
            continue
        out[key] = param
    return out
