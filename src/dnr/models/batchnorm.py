"""Re-estimating BatchNorm running statistics after the weights change abruptly.

A rewiring swaps a large share of a sparse network's weights at once; the running means
and variances BatchNorm learned for the old weights then describe a different network, and
every eval-mode forward pass (the training attack, validation) runs on stale statistics
until momentum 0.1 has washed them out. Recomputing them on a few batches fixes that at the
cost of a few forward passes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["refresh_batchnorm_stats"]


@torch.no_grad()
def refresh_batchnorm_stats(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Replace every BatchNorm's running statistics by their average over ``batches``.

    Forward passes only, BN in train mode, no gradient; each module's train/eval mode and
    each BN's ``momentum`` are restored afterwards. With no batch the statistics are left as
    they were. Returns the number of batches used. (``torch.optim.swa_utils.update_bn`` does
    the averaging too, but restores only the top module's mode and cannot undo an empty run.)
    """
    bns = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not bns:
        return 0
    modes = {module: module.training for module in model.modules()}
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the refresh batches
    model.train()
    used = 0
    try:
        for x in batches:
            model(x)
            used += 1
    finally:
        for module, mode in modes.items():
            module.training = mode
        for m, (momentum, state) in zip(bns, saved):
            m.momentum = momentum
            if used == 0:
                m.load_state_dict(state)
    return used
