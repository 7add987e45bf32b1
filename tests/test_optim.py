"""Optimizers by name (sgd, adamw): what each builds, the first moment DNR grows by, and
exact resume of the optimizer's state."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnr.config import Config, ConfigError, load_config
from dnr.registry import OPTIMIZERS
from dnr.sparsity import Progress, build_sparsity
from dnr.sparsity.mask import first_moment
from dnr.sparsity.masking import Masking
from dnr.training import build_optimizer, train, train_step
from helpers import QUIET, tiny_overrides


def _config(**extra: Any) -> Config:
    return load_config(None, tiny_overrides(**extra))


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def _one_step(model: nn.Module, opt: torch.optim.Optimizer, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def test_sgd_is_built_as_configured() -> None:
    cfg = _config(
        train__lr=0.2, train__momentum=0.8, train__weight_decay=1e-3, train__nesterov=True
    )
    opt = build_optimizer(cfg, _Tiny())
    assert type(opt) is torch.optim.SGD
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (
        0.2,
        0.8,
        1e-3,
        True,
    )


def test_adamw_takes_lr_weight_decay_and_momentum_as_beta1() -> None:
    cfg = _config(train__optimizer="adamw", train__lr=1e-3, train__weight_decay=0.05)
    opt = build_optimizer(cfg, _Tiny())
    assert type(opt) is torch.optim.AdamW
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"]) == (1e-3, 0.05, (0.9, 0.999))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_the_first_moment_dnr_reads_is_the_optimizers_declared_buffer(name: str) -> None:
    cfg = _config(train__optimizer=name)
    model = _Tiny()
    opt = build_optimizer(cfg, model)
    assert first_moment(opt, model.conv.weight) is None  # before the first step
    _one_step(model, opt)
    key = OPTIMIZERS.get(name).moment_key
    for p in model.parameters():
        assert first_moment(opt, p) is opt.state[p][key]


def _adamw_masking(**settings: Any) -> tuple[nn.Module, torch.optim.AdamW, Masking]:
    torch.manual_seed(0)
    model = _Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    masking = Masking(
        model,
        opt,
        density=0.2,
        redistribution=0.0,
        protect_channels=False,
        regrow_pruned=False,
        generator=torch.Generator().manual_seed(1),
        **settings,
    )
    _one_step(model, opt)
    masking.apply_()
    g = torch.Generator().manual_seed(2)
    for p in masking.params.values():  # distinct magnitudes: no ties decide the test
        opt.state[p]["exp_avg"].copy_(torch.randn(p.shape, generator=g))
    return model, opt, masking


def test_dnr_with_adamw_regrows_the_largest_exp_avg_entries() -> None:
    _, opt, masking = _adamw_masking(grow_momentum="keep")
    old = {n: m.clone() for n, m in masking.masks.items()}
    signal = {n: opt.state[p]["exp_avg"].abs().clone() for n, p in masking.params.items()}
    masking.rewire(0.5)
    grown_any = False
    for name, new in masking.masks.items():
        grown = new & ~old[name]
        count = int(grown.sum())
        grown_any |= count > 0
        candidates = signal[name].masked_fill(old[name], -1.0).flatten()
        expected = torch.zeros_like(candidates, dtype=torch.bool)
        expected[candidates.topk(count).indices] = True
        assert torch.equal(grown.flatten(), expected), name
    assert grown_any


def test_grow_momentum_zero_resets_exp_avg_of_grown_weights_and_keeps_exp_avg_sq() -> None:
    """Zeroing exp_avg_sq too would make a regrown weight's first AdamW step about
    (1 - beta1) / sqrt(1 - beta2) = 3.2x lr: a burst, not the calm start `zero` means."""
    _, opt, masking = _adamw_masking(grow_momentum="zero")
    old = {n: m.clone() for n, m in masking.masks.items()}
    state = {n: copy.deepcopy(opt.state[p]) for n, p in masking.params.items()}
    masking.rewire(0.5)
    for name, p in masking.params.items():
        grown = masking.masks[name] & ~old[name]
        assert bool(grown.any()), name
        exp_avg = opt.state[p]["exp_avg"]
        assert bool((exp_avg[grown] == 0).all()), name
        assert torch.equal(exp_avg[~grown], state[name]["exp_avg"][~grown]), name
        assert torch.equal(opt.state[p]["exp_avg_sq"], state[name]["exp_avg_sq"]), name


def _segment(
    cfg: Config, model: nn.Module, opt: Any, method: Any, prog: Progress, steps: range
) -> None:
    for i in steps:
        g = torch.Generator().manual_seed(100 + i)
        x, y = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        train_step(model, opt, x, y, cfg, method, prog, torch.Generator().manual_seed(i))
        if i == 2:
            method.on_epoch_end(prog)  # a rewiring, by AdamW's exp_avg


def test_adamw_dnr_state_dicts_resume_to_the_same_bits() -> None:
    cfg = _config(
        train__optimizer="adamw",
        train__lr=2e-3,
        train__weight_decay=0.05,
        sparsity__method="dnr",
        sparsity__density=0.3,
        sparsity__bn_refresh_batches=0,
    )

    def build(seed: int = 0) -> tuple[nn.Module, Any, Any, Progress]:
        torch.manual_seed(seed)
        model = _Tiny().train()
        opt = build_optimizer(cfg, model)
        method = build_sparsity(cfg, model, opt, torch.Generator().manual_seed(1))
        return model, opt, method, Progress(step=0, epoch=0, epochs=2, steps_per_epoch=3)

    model, opt, method, prog = build()
    _segment(cfg, model, opt, method, prog, range(4))
    saved = copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "method": method.state_dict()}
    )
    _segment(cfg, model, opt, method, prog, range(4, 7))

    other, opt2, method2, prog2 = build(seed=9)  # other initial weights: all must come back
    other.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    method2.load_state_dict(saved["method"])
    prog2.step = 4
    _segment(cfg, other, opt2, method2, prog2, range(4, 7))
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key], opt2.state[q][key]), key


def test_nesterov_is_sgds_and_needs_momentum() -> None:
    with pytest.raises(ConfigError, match="train.nesterov applies to train.optimizer=sgd"):
        _config(train__optimizer="adamw", train__nesterov=True)
    with pytest.raises(ConfigError, match="train.nesterov: .*train.momentum > 0"):
        _config(train__nesterov=True, train__momentum=0.0)


def test_dnr_with_sgd_without_momentum_is_refused() -> None:
    with pytest.raises(ConfigError, match="sparsity.method=dnr .*train.momentum must be > 0"):
        _config(sparsity__method="dnr", train__momentum=0.0)


def test_an_unknown_optimizer_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="train.optimizer: 'adam' is not allowed.*adamw, sgd"):
        _config(train__optimizer="adam")


@pytest.mark.slow
def test_adamw_dnr_trains_end_to_end(tmp_path) -> None:
    cfg = _config(
        train__optimizer="adamw",
        train__lr=2e-3,
        train__weight_decay=0.05,
        sparsity__method="dnr",
        sparsity__density=0.3,
    )
    result = train(cfg, tmp_path / "run", **QUIET)
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    rewirings = [w for r in result.history for w in r.get("rewire") or []]
    assert sum(sum(w["regrown"].values()) for w in rewirings) > 0  # grown by exp_avg
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["training"]["optimizer"] == "adamw"
    assert meta["sparsity"]["achieved_density"] == pytest.approx(0.3, abs=0.01)
