"""BatchNorm statistics refresh: exact batch statistics, modes and momentum restored."""

from __future__ import annotations

import torch
from torch import nn

from dnr.models import refresh_batchnorm_stats


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 2),
    )


def test_refresh_replaces_running_stats_by_the_batches_average() -> None:
    net = _net().eval()
    bn = net[1]
    bn.running_mean.fill_(7.0)
    bn.running_var.fill_(9.0)
    g = torch.Generator().manual_seed(1)
    batches = [torch.rand(16, 3, 8, 8, generator=g) for _ in range(3)]
    assert refresh_batchnorm_stats(net, batches) == 3
    feats = torch.cat([net[0](x) for x in batches])  # equal batch sizes: mean of batch means
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    per_batch_var = torch.stack([net[0](x).var((0, 2, 3), unbiased=True) for x in batches])
    assert torch.allclose(bn.running_var, per_batch_var.mean(0), atol=1e-5)
    assert not net.training
    assert not bn.training
    assert bn.momentum == 0.1


def test_refresh_keeps_train_mode_and_leaves_stats_without_batches() -> None:
    net = _net().train()
    before = {k: v.clone() for k, v in net[1].state_dict().items()}
    assert refresh_batchnorm_stats(net, []) == 0
    after = net[1].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net.training
    assert net[1].momentum == 0.1
    assert refresh_batchnorm_stats(nn.Linear(2, 2), [torch.rand(1, 2)]) == 0  # no BN: no-op
