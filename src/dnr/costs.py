"""What a model costs to store and to run: weights, multiply-accumulates, CPU latency.

Counts follow the compression table's convention: ``params`` are the prunable tensors
(weights of ``Conv2d`` / ``Linear``, :func:`dnr.sparsity.layers.prunable_parameters`), the
ones a sparsity method removes; ``total_params`` adds biases and BatchNorm. MACs are those
of the ``Conv2d`` and ``Linear`` layers for one image, read from one forward pass (so they
follow the model's real wiring, not a formula per architecture); BatchNorm, activations and
pooling are not counted.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dnr.sparsity.layers import output_positions, prunable_parameters
from dnr.statedict import canonical_name

__all__ = ["Costs", "LayerCost", "measure_latency", "model_costs"]


@dataclass(frozen=True)
class LayerCost:
    """One Conv2d/Linear layer: weights counted and MACs per image (summed over its calls)."""

    params: int
    macs: int


@dataclass(frozen=True)
class Costs:
    """Weights and multiply-accumulates of one model for one image.

    ``params``: weights of the Conv2d/Linear layers (nonzeros only with ``nonzero_only``);
    ``macs``: their multiply-accumulates per image; ``total_params``: every parameter, the
    prunable weights counted as in ``params``.
    """

    params: int
    macs: int
    total_params: int
    layers: dict[str, LayerCost] = field(default_factory=dict)


def model_costs(model: nn.Module, input_size: int, *, nonzero_only: bool = False) -> Costs:
    """Params and MACs of ``model`` on one ``3 x input_size x input_size`` image.

    A Conv2d costs ``C_out*H_out*W_out * C_in/groups * kh*kw`` MACs, i.e. ``numel(weight)``
    per output position; a Linear ``in * out``. With ``nonzero_only`` a layer counts only its
    nonzero weights, ``nnz(weight)`` MACs per output position: what a sparse kernel would
    do. The pass runs in eval mode under ``inference_mode`` (BatchNorm statistics are not
    touched); the model's training flags are restored.
    """
    prunable = prunable_parameters(model)
    counted = {id(p): _count(p, nonzero_only) for p in prunable.values()}
    positions = output_positions(model, input_size)
    modules = {canonical_name(n): m for n, m in model.named_modules()}
    weights = {
        name: counted.get(id(modules[name].weight), _count(modules[name].weight, nonzero_only))
        for name in positions
    }
    layers = {
        name: LayerCost(params=weights[name], macs=weights[name] * positions[name])
        for name in positions
    }
    params = sum(counted.values())
    # parameters() yields a shared tensor once, so nothing is counted twice
    others = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return Costs(
        params=params,
        macs=sum(layer.macs for layer in layers.values()),
        total_params=params + others,
        layers=layers,
    )


def _count(weight: Tensor, nonzero_only: bool) -> int:
    return int(torch.count_nonzero(weight.detach())) if nonzero_only else weight.numel()


def measure_latency(
    model: nn.Module,
    input_size: int,
    batch: int,
    *,
    repeats: int = 10,
    warmup: int = 2,
    seed: int = 0,
) -> float:
    """Median wall-clock seconds of one forward pass of ``batch`` images on the CPU.

    Eval mode, ``torch.inference_mode``, a seeded random batch in [0,1] (so two calls time
    the same work); ``warmup`` untimed passes first (allocator, kernel selection). The
    model is moved to the CPU for the measurement and back afterwards, with its training
    flags restored. Uses the current ``torch.get_num_threads()``.
    """
    if batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need batch >= 1, repeats >= 1, warmup >= 0; got {batch}, {repeats}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    modes = {module: module.training for module in model.modules()}
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, input_size, input_size, generator=generator)
    times: list[float] = []
    try:
        model.to("cpu").eval()
        with torch.inference_mode():
            for i in range(warmup + repeats):
                start = time.perf_counter()
                model(x)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        model.to(device)
        for module, training in modes.items():
            module.training = training
    return statistics.median(times)
