"""Which tensors are prunable: the one definition every sparsity method shares."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase

import torch
from torch import Tensor, nn

from dnr.statedict import canonical_name

__all__ = ["PRUNABLE_MODULES", "output_positions", "prunable_parameters"]

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


def output_positions(model: nn.Module, input_size: int) -> dict[str, int]:
    """Per ``Conv2d`` / ``Linear`` module (canonical name): its outputs per output channel
    for one ``3 × input_size × input_size`` image — ``H_out · W_out`` for a conv, 1 for a
    Linear on vectors — read from one forward pass, so a layer's MACs are its weights times
    this (a module called twice counts twice). Eval mode under ``inference_mode``; the
    model's training flags are restored."""
    positions: dict[str, int] = {}

    def hook_for(name: str) -> Callable[[nn.Module, object, Tensor], None]:
        def hook(module: nn.Module, _inputs: object, out: Tensor) -> None:
            weight = module.weight
            assert isinstance(weight, Tensor)
            per_image = out.numel() // max(out.shape[0], 1)
            positions[name] = positions.get(name, 0) + per_image // weight.shape[0]

        return hook

    handles = [
        module.register_forward_hook(hook_for(canonical_name(name)))
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_MODULES)
    ]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, 3, input_size, input_size, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return positions
