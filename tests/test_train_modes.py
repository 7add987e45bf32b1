"""Fast training modes (FGSM-RS, free) and the step's switchable speed-ups.

What each mode costs is checked structurally (forward passes per optimizer step), what it
computes against a reference computed here, and the speed-ups (channels_last, bf16,
torch.compile) against the fp32 step within stated tolerances. No step path may read a
tensor's value on the host: that is a device synchronisation on a GPU.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnr.attacks import fgsm_rs, pgd
from dnr.config import Config, load_config
from dnr.data import BatchLoader, load_dataset
from dnr.sparsity import Progress, build_sparsity
from dnr.training import build_optimizer, build_training_parts, model_for, train, train_step
from dnr.training.step import StepState, attacks_in_training, train_mode
from helpers import QUIET, tiny_overrides


def _config(**extra: Any) -> Config:
    return load_config(None, tiny_overrides(sparsity__density=0.3, **extra))


def _parts(cfg: Config, seed: int = 0) -> tuple[nn.Module, Any, Any, Progress, Any]:
    data = load_dataset(cfg.data)
    torch.manual_seed(seed)
    parts = build_training_parts(cfg, model_for(cfg, data), masks_seed=1)  # as the loop does
    model, opt, method = parts.model, parts.optimizer, parts.method
    loader = BatchLoader(data.train, 32, "cpu", shuffle=True, augment=True, seed=2)
    prog = Progress(step=0, epoch=0, epochs=1, steps_per_epoch=len(loader), batches=loader.epoch)
    return model.train(), opt, method, prog, loader


def test_fgsm_rs_is_one_step_of_1_25_eps_from_a_random_start() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    eps = 8 / 255
    a = fgsm_rs(model, x, y, eps=eps, generator=torch.Generator().manual_seed(3))
    b = pgd(
        model,
        x,
        y,
        eps=eps,
        step_size=1.25 * eps,
        steps=1,
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(a, b)
    assert (a - x).abs().max() <= eps + 1e-7
    assert a.min() >= 0
    assert a.max() <= 1
    # not FGSM from the clean point: the random start moves it
    assert not torch.equal(a, (x + eps * torch.ones_like(x)).clamp(0, 1))


@contextmanager
def _count_forwards(model: nn.Module) -> Iterator[list[int]]:
    calls = [0]
    handle = model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("mode", "extra", "forwards", "steps"),
    [
        ("pgd", {"attack__steps": 7}, 7 + 2, 1),  # 7 attack passes + clean + adversarial
        ("fgsm_rs", {"attack__steps": 7}, 1 + 2, 1),  # attack.steps does not matter
        ("free", {"attack__replays": 3}, 3 * 2, 3),  # no attack pass; 3 updates per batch
    ],
)
def test_each_mode_costs_what_it_should(mode: str, extra: dict, forwards: int, steps: int) -> None:
    cfg = _config(attack__train_mode=mode, **extra)
    assert attacks_in_training(cfg)
    model, opt, method, prog, loader = _parts(cfg)
    x, y = next(loader.epoch(0))
    with _count_forwards(model) as calls:
        train_step(model, opt, x, y, cfg, method, prog, torch.Generator().manual_seed(0))
    assert calls[0] == forwards
    assert prog.step == steps


def test_free_moves_its_perturbation_by_the_sign_of_the_loss_gradient() -> None:
    cfg = _config(attack__train_mode="free", attack__replays=1, sparsity__method="dense")
    model, opt, method, prog, loader = _parts(cfg)
    x, y = next(loader.epoch(0))
    reference = copy.deepcopy(model)
    state = StepState()
    train_step(model, opt, x, y, cfg, method, prog, state=state)
    # The first replay attacks from delta = 0: the perturbation is eps * sign of the
    # hybrid loss's input gradient at x, in training mode.
    x_adv = x.clone().requires_grad_(True)
    beta = cfg.train.beta
    loss = beta * F.cross_entropy(reference(x), y) + (1 - beta) * F.cross_entropy(
        reference(x_adv), y
    )
    (grad,) = torch.autograd.grad(loss, x_adv)
    eps = cfg.attack.eps
    assert state.delta is not None
    assert torch.equal(state.delta, (eps * grad.sign()).clamp(-eps, eps))
    # ... and carries it to the next batch, staying in the eps-ball
    train_step(model, opt, x, y, cfg, method, prog, state=state)
    assert state.delta.abs().max() <= eps + 1e-7
    assert not torch.equal(state.delta, eps * grad.sign())


_HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextmanager
def _no_host_reads() -> Iterator[None]:
    """Make every way of reading a tensor's value on the host raise."""
    saved = {name: getattr(torch.Tensor, name) for name in _HOST_READS}

    def forbid(name: str) -> Any:
        def read(*_args: Any, **_kwargs: Any) -> Any:
            raise AssertionError(f"Tensor.{name}() inside the training step")

        return read

    try:
        for name in _HOST_READS:
            setattr(torch.Tensor, name, forbid(name))
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


@pytest.mark.parametrize("mode", ["pgd", "fgsm_rs", "free"])
@pytest.mark.parametrize(
    ("method", "granularity"), [("dense", "weight"), ("dnr", "weight"), ("dnr", "channel")]
)
def test_no_step_path_reads_a_tensor_on_the_host(mode: str, method: str, granularity: str) -> None:
    cfg = _config(
        attack__train_mode=mode,
        attack__replays=2,
        sparsity__method=method,
        sparsity__granularity=granularity,
    )
    model, opt, method_obj, prog, loader = _parts(cfg)
    batches = loader.epoch(0)
    x, y = next(batches)
    train_step(model, opt, x, y, cfg, method_obj, prog, torch.Generator().manual_seed(0))
    x, y = next(batches)
    state = StepState()
    with _no_host_reads():
        train_step(
            model, opt, x, y, cfg, method_obj, prog, torch.Generator().manual_seed(1), state=state
        )
    with pytest.raises(AssertionError, match="item"), _no_host_reads():
        torch.zeros(1).item()  # the guard itself works


def _weights_after(cfg: Config, steps: int) -> dict[str, torch.Tensor]:
    """Weights after ``steps`` steps on continuous random images: the digits' upscaled
    pixels tie in max-pooling, where another memory layout routes the gradient to another
    (equally valid) maximum."""
    model, opt, method, prog, _ = _parts(cfg)
    data = torch.Generator().manual_seed(5)
    for _ in range(steps):
        x = torch.rand(32, 3, 32, 32, generator=data)
        y = torch.randint(0, 10, (32,), generator=data)
        train_step(model, opt, x, y, cfg, method, prog, torch.Generator().manual_seed(0))
    return {k: v.detach().float() for k, v in model.state_dict().items() if v.is_floating_point()}


def _flat(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([w.flatten() for w in weights.values()])


@pytest.mark.parametrize(
    ("switch", "low", "high"),
    [
        ("train.channels_last=true", 0.0, 1e-4),  # the same arithmetic in another layout
        ("train.bf16=true", 1e-3, 0.3),  # bf16 passes (8-bit mantissas), really in bf16
    ],
)
def test_speed_switches_keep_the_update_within_tolerance(
    switch: str, low: float, high: float
) -> None:
    """One clean-loss step (beta = 1: no attack, whose sign() turns any rounding into a
    full step on some pixels; one step: later ones meet ties in max-pooling over the
    sparse net's constant channels, where either route is right), switch on vs. off,
    compared relative to the update itself. Measured: 1.3e-6 and 0.12."""
    overrides = tiny_overrides(sparsity__density=0.3, sparsity__method="dnr", train__beta=1.0)
    base = load_config(None, overrides)
    before = _flat(_weights_after(base, 0))
    update = _flat(_weights_after(base, 1)) - before
    fast = _flat(_weights_after(load_config(None, [*overrides, switch]), 1)) - before
    relative = float((fast - update).norm() / update.norm())
    assert low <= relative < high, (switch, relative)


def test_bf16_training_attack_agrees_with_fp32_on_most_pixels() -> None:
    cfg = _config()
    model, *_rest, loader = _parts(cfg)
    x, y = next(loader.epoch(0))
    model.eval()
    kwargs: dict[str, Any] = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 1}
    a = pgd(model, x, y, generator=torch.Generator().manual_seed(0), **kwargs)
    b = pgd(model, x, y, generator=torch.Generator().manual_seed(0), amp=True, **kwargs)
    assert (b - x).abs().max() <= 8 / 255 + 1e-6
    assert b.dtype == torch.float32
    same = float(((a - b).abs() < 1e-6).float().mean())
    assert 0.75 < same < 1.0, same  # mostly the same step (measured 0.88); not fp32


@pytest.mark.slow
def test_speed_switches_train_end_to_end(tmp_path) -> None:
    runs = {}
    for switch in ("train.channels_last=false", "train.channels_last=true"):
        overrides = tiny_overrides(sparsity__method="dnr", train__epochs=2, data__subset=96)
        cfg = load_config(None, [*overrides, switch])
        result = train(cfg, tmp_path / switch, **QUIET)
        runs[switch] = [r["train_loss"] for r in result.history]
    a, b = runs.values()
    assert all(abs(x - y) < 0.1 for x, y in zip(a, b, strict=True)), runs


class _Tiny(nn.Module):
    """Small enough for torch.compile on two CPU cores in seconds (VGG16 takes minutes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.slow
def test_compiled_step_matches_eager_and_rewiring_never_recompiles() -> None:
    """Masks are applied to the weights between steps, not inside forward: a rewiring
    changes values, not the graph. (aot_eager traces exactly what inductor compiles,
    without minutes of C++ compilation on two cores.)"""
    import torch._dynamo

    cfg = _config(sparsity__method="dnr", sparsity__bn_refresh_batches=0)
    torch.manual_seed(0)
    eager = _Tiny()
    compiled = copy.deepcopy(eager)
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    graphs = []
    torch._dynamo.reset()
    for model, compile_it in ((eager, False), (compiled, True)):
        opt = build_optimizer(cfg, model)
        method = build_sparsity(cfg, model, opt, torch.Generator().manual_seed(1))
        if compile_it:
            model.compile(backend="aot_eager")
        prog = Progress(step=0, epoch=0, epochs=4, steps_per_epoch=2)
        for step in range(4):
            model.train()
            train_step(model, opt, x, y, cfg, method, prog, torch.Generator().manual_seed(step))
            if step == 1:
                method.on_epoch_end(prog)  # a rewiring
            if compile_it:
                graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[0] > 0  # it was compiled ...
    assert graphs[1:] == [graphs[0]] * 3  # ... once: not again after the rewiring
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


@pytest.mark.slow
def test_fast_modes_train_end_to_end(tmp_path) -> None:
    for mode in ("fgsm_rs", "free"):
        cfg = _config(sparsity__method="dnr", attack__train_mode=mode, attack__replays=2)
        result = train(cfg, tmp_path / mode, **QUIET)
        record = result.history[-1]
        assert math.isfinite(record["train_loss"])
        assert record["train_adv_acc"] is not None
        # free: 2 optimizer steps per batch, counted in the step
        assert record["step"] == 3 * math.ceil(192 / 32) * (2 if mode == "free" else 1)
        meta = json.loads((tmp_path / mode / "model.json").read_text())
        assert meta["training"]["attack"]["train_mode"] == mode


def test_free_without_an_attack_takes_one_step_per_batch() -> None:
    """beta = 1 trains on clean images only: no replays, and the schedules count so."""
    cfg = _config(attack__train_mode="free", attack__replays=3, train__beta=1.0)
    assert not attacks_in_training(cfg)
    assert train_mode(cfg).replays(cfg) == 1
    free = _config(attack__train_mode="free", attack__replays=3)
    assert train_mode(free).replays(free) == 3


@pytest.mark.slow
def test_a_collapse_of_validation_pgd_stops_single_step_training(tmp_path, monkeypatch) -> None:
    """Catastrophic overfitting guard: FGSM-RS training whose validation PGD accuracy falls
    under half the best stops after that epoch, keeps the best, and stays stopped on resume;
    the same figures never stop PGD training."""
    import dnr.training.loop as loop_module
    from dnr.checkpoints import load_checkpoint
    from dnr.rundir import RunDir

    figures = iter([0.30, 0.32, 0.10, 0.31, 0.31])  # epoch 3 collapses (0.10 < 0.32 / 2)

    def fake_validate(run: Any, epoch: int) -> dict[str, float]:
        return {"val_clean_acc": 0.5, "val_pgd_acc": next(figures)}

    monkeypatch.setattr(loop_module, "_validate", fake_validate)
    cfg = _config(sparsity__method="dnr", attack__train_mode="fgsm_rs", train__epochs=5)
    lines: list[str] = []
    result = train(cfg, tmp_path / "fgsm", show_progress=False, log=lambda e: lines.append(str(e)))
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.best_epoch == 2
    assert any("catastrophic overfitting" in line for line in lines)
    last = load_checkpoint(RunDir(tmp_path / "fgsm").last_checkpoint)
    assert last["state"]["stopped_at"] == 3
    again = train(cfg, tmp_path / "fgsm", resume=True, **QUIET)
    assert [r["epoch"] for r in again.history] == [1, 2, 3]  # not trained past the stop

    figures = iter([0.30, 0.32, 0.10, 0.31, 0.31])
    pgd_cfg = _config(sparsity__method="dnr", train__epochs=5)
    pgd_run = train(pgd_cfg, tmp_path / "pgd", **QUIET)
    assert len(pgd_run.history) == 5
