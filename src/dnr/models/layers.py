"""Layers shared by every model.

Normalization is the model's first module so that everything outside the model (data
loaders, attacks, ε-balls) works in [0,1] pixel space, as in the released DNR code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dnr.constants import CIFAR_MEAN, CIFAR_STD  # noqa: F401  (re-exported)


class Normalize(nn.Module):
    """Map [0,1] images to ``(x - mean) / std`` per channel.

    ``mean`` and ``std`` are persistent buffers, so they travel with the ``state_dict``
    (a saved model normalizes the same way when reloaded) and follow ``.to(device)``.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor([float(m) for m in mean], dtype=torch.float32)
        std_t = torch.as_tensor([float(s) for s in std], dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.shape != std_t.shape or mean_t.numel() == 0:
            raise ValueError(
                f"mean and std must be non-empty sequences of equal length, "
                f"got {len(mean_t)} and {len(std_t)}"
            )
        if not bool(torch.all(std_t > 0)):
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=True)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=True)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = ", ".join(f"{v:.4f}" for v in self.mean.flatten().tolist())
        std = ", ".join(f"{v:.4f}" for v in self.std.flatten().tolist())
        return f"mean=({mean}), std=({std})"


def scaled(channels: int, width: float) -> int:
    """Channel count after the width multiplier: rounded, never below 1."""
    return max(1, int(round(channels * width)))


WEIGHT_INITS = ("pytorch", "xavier")


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str = "pytorch") -> nn.Module:
    """Re-initialise ``model`` in place.

    ``"pytorch"`` keeps each layer's own default (Kaiming-uniform, a = √5, for conv and
    linear). ``"xavier"`` is the scheme common in the robust-pruning code bases the paper
    builds on: Xavier-uniform conv/linear weights, zero biases, BatchNorm γ = 1, β = 0.
    """
    if scheme not in WEIGHT_INITS:
        raise ValueError(f"weight init must be one of {WEIGHT_INITS}, got {scheme!r}")
    if scheme == "xavier":
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return model
