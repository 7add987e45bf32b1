"""Training objectives (hybrid, TRADES, MART): the losses against hand-computed values, the
releases' attacks, the config rules, and TRADES / MART runs end to end."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dnr.training.objectives as objectives
from dnr.attacks import gaussian_start, kl_pgd, small_start_pgd, start_noise
from dnr.config import Config, ConfigError, load_config
from dnr.registry import OBJECTIVES
from dnr.sparsity import Progress, build_sparsity
from dnr.training import build_optimizer, train, train_step
from dnr.training.objectives import mart_loss, trades_loss
from dnr.training.step import (
    attacks_in_training,
    clean_logits_in_training,
    hybrid_loss,
    train_mode,
)
from helpers import QUIET, assert_same_weights, metrics, strip_timing, tiny_overrides

LOGITS_CLEAN = [[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]]
LOGITS_ADV = [[0.0, 1.0, 0.0], [0.0, 3.0, 1.0]]
LABELS = [0, 1]


def _config(**extra: Any) -> Config:
    return load_config(None, tiny_overrides(**extra))


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _tensors() -> tuple[Tensor, Tensor, Tensor]:
    return torch.tensor(LOGITS_CLEAN), torch.tensor(LOGITS_ADV), torch.tensor(LABELS)


class _Tiny(nn.Module):
    """Conv + BN + linear: BN makes the attacks' eval-mode promise observable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


# ------------------------------------------------------------------ the losses, by hand


def test_trades_loss_matches_a_hand_computed_value() -> None:
    beta = 2.0
    ce = kl = 0.0
    for clean, adv, y in zip(LOGITS_CLEAN, LOGITS_ADV, LABELS):
        p, q = _softmax(clean), _softmax(adv)
        ce += -math.log(p[y]) / 2
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) / 2
    got = trades_loss(*_tensors(), beta)
    assert float(got) == pytest.approx(ce + beta * kl, rel=1e-6)


def test_trades_loss_with_x_adv_equal_to_x_is_clean_cross_entropy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    cfg = _config(train__loss="trades", train__trades_beta=6.0)
    out = OBJECTIVES.get("trades").loss(model, x, x.clone(), y, cfg)
    with torch.no_grad():
        clean_ce = float(F.cross_entropy(model(x), y))
    assert float(out.loss.detach()) == pytest.approx(clean_ce, abs=1e-6)
    assert out.logits_clean is not None
    assert out.logits_adv is not None


def test_trades_kl_target_is_not_detached_as_in_the_release() -> None:
    """Gradients reach f(x) through both CE and the KL's target softmax(f(x))."""
    clean, adv, y = _tensors()
    clean.requires_grad_(True)
    (grad,) = torch.autograd.grad(trades_loss(clean, adv, y, 6.0), clean)
    p_fixed = F.softmax(clean.detach(), dim=1)
    kl_fixed = F.kl_div(F.log_softmax(adv, dim=1), p_fixed, reduction="batchmean")
    (grad_detached,) = torch.autograd.grad(F.cross_entropy(clean, y) + 6.0 * kl_fixed, clean)
    assert not torch.allclose(grad, grad_detached)


def test_mart_loss_matches_a_hand_computed_value() -> None:
    beta = 6.0
    boosted = robust = 0.0
    for clean, adv, y in zip(LOGITS_CLEAN, LOGITS_ADV, LABELS):
        p, q = _softmax(clean), _softmax(adv)
        ranked = sorted(range(3), key=lambda k: q[k])
        other = ranked[-2] if ranked[-1] == y else ranked[-1]  # likeliest wrong class
        boosted += (-math.log(q[y]) - math.log(1.0001 - q[other] + 1e-12)) / 2
        kl = sum(pi * (math.log(pi) - math.log(qi + 1e-12)) for pi, qi in zip(p, q))
        robust += kl * (1.0000001 - p[y]) / 2
    got = mart_loss(*_tensors(), beta)
    assert float(got) == pytest.approx(boosted + beta * robust, rel=1e-6)


def test_mart_weights_confidently_right_examples_less() -> None:
    """The KL term's weight is 1 - p_y(x): a confidently right example barely counts."""
    clean, adv, y = _tensors()
    confident = clean.clone()
    confident[:, :] = torch.tensor([[9.0, 0.0, 0.0], [0.0, 9.0, 0.0]])
    base = float(mart_loss(confident, adv, y, 0.0))
    assert float(mart_loss(confident, adv, y, 6.0)) - base < 0.01 * (
        float(mart_loss(clean, adv, y, 6.0)) - float(mart_loss(clean, adv, y, 0.0))
    )


# ------------------------------------------------------------------ the releases' attacks


def test_gaussian_start_is_the_inverse_normal_cdf_of_the_uniform_draws() -> None:
    x = torch.full((1, 1, 2, 2), 0.5)
    noise = torch.tensor([0.5, 0.8413447460685429, 0.15865525393145707, 0.9772498680518208])
    start = gaussian_start(x, 0.001, None, noise.view(1, 1, 2, 2))
    expected = 0.5 + 0.001 * torch.tensor([0.0, 1.0, -1.0, 2.0])
    assert torch.allclose(start.flatten(), expected, atol=1e-7)
    # a draw of exactly 0 stays finite
    assert torch.isfinite(gaussian_start(x, 0.001, None, torch.zeros_like(x))).all()


def _kl(model: nn.Module, x: Tensor, x_adv: Tensor) -> float:
    with torch.no_grad():
        p = F.softmax(model(x), dim=1)
        return float(F.kl_div(F.log_softmax(model(x_adv), dim=1), p, reduction="sum"))


def test_kl_pgd_raises_the_kl_stays_in_the_ball_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    model = _Tiny().train()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    before = copy.deepcopy(model.state_dict())
    eps = 8 / 255
    noise = start_noise(x.shape, torch.Generator().manual_seed(1))
    x_adv = kl_pgd(model, x, y, eps=eps, step_size=2 / 255, steps=5, noise=noise)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0
    assert x_adv.max() <= 1
    model.eval()
    start = gaussian_start(x, 0.001, None, noise)
    assert _kl(model, x, x_adv) > 10 * _kl(model, x, start)
    model.train()
    for key, value in before.items():  # BN statistics untouched (eval mode inside)
        assert torch.equal(model.state_dict()[key], value), key
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert model.training
    assert model.bn.training


def test_kl_pgd_ignores_labels_and_draws_from_the_generator_as_from_given_noise() -> None:
    torch.manual_seed(0)
    model = _Tiny().eval()
    x = torch.rand(4, 3, 8, 8)
    kw: dict[str, Any] = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 3}
    a = kl_pgd(
        model, x, torch.zeros(4, dtype=torch.long), generator=torch.Generator().manual_seed(5), **kw
    )
    noise = start_noise(x.shape, torch.Generator().manual_seed(5))
    b = kl_pgd(model, x, torch.ones(4, dtype=torch.long), noise=noise, **kw)
    assert torch.equal(a, b)
    assert torch.equal(
        kl_pgd(model, x, torch.zeros(4, dtype=torch.long), eps=0.0, step_size=0.1, steps=3), x
    )


def test_small_start_pgd_raises_cross_entropy_within_the_ball() -> None:
    torch.manual_seed(0)
    model = _Tiny().eval()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    eps = 8 / 255
    x_adv = small_start_pgd(
        model, x, y, eps=eps, step_size=2 / 255, steps=5, generator=torch.Generator().manual_seed(2)
    )
    assert (x_adv - x).abs().max() <= eps + 1e-6
    with torch.no_grad():
        assert float(F.cross_entropy(model(x_adv), y)) > float(F.cross_entropy(model(x), y)) + 0.01


# ------------------------------------------------------------------ the step and the config


def test_hybrid_is_the_default_and_its_step_is_the_hybrid_loss() -> None:
    cfg = _config()
    assert cfg.train.loss == "hybrid"
    assert train_mode(cfg).name == "pgd"
    torch.manual_seed(0)
    model = _Tiny().train()
    reference = copy.deepcopy(model)
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    opt = build_optimizer(cfg, model)
    method = build_sparsity(cfg, model, opt, torch.Generator().manual_seed(1))
    noise = start_noise(x.shape, torch.Generator().manual_seed(3))
    prog = Progress(step=0, epoch=0, epochs=1, steps_per_epoch=1)
    out = train_step(model, opt, x, y, cfg, method, prog, noise=noise)
    x_adv = train_mode(cfg).adversary(reference, x, y, cfg, None, noise)  # type: ignore[misc]
    expected = hybrid_loss(reference, x, x_adv, y, cfg.train.beta)
    assert torch.equal(out.loss, expected.loss)


@pytest.mark.parametrize("loss", ["trades", "mart"])
def test_trades_and_mart_steps_train_on_their_own_attack(loss: str) -> None:
    cfg = _config(train__loss=loss)
    mode = train_mode(cfg)
    assert mode.name == loss
    assert mode.draws_start(cfg)
    assert not mode.single_step
    assert attacks_in_training(cfg)
    torch.manual_seed(0)
    model = _Tiny().train()
    reference = copy.deepcopy(model)
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    opt = build_optimizer(cfg, model)
    method = build_sparsity(cfg, model, opt, torch.Generator().manual_seed(1))
    noise = start_noise(x.shape, torch.Generator().manual_seed(3))
    prog = Progress(step=0, epoch=0, epochs=1, steps_per_epoch=1)
    out = train_step(model, opt, x, y, cfg, method, prog, noise=noise)
    a = cfg.attack
    attack = kl_pgd if loss == "trades" else small_start_pgd
    x_adv = attack(reference, x, y, eps=a.eps, step_size=a.step_size, steps=a.steps, noise=noise)
    formula = trades_loss if loss == "trades" else mart_loss
    expected = formula(reference(x), reference(x_adv), y, 6.0)
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert prog.step == 1
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


def test_trades_without_its_kl_term_trains_on_clean_images_only() -> None:
    cfg = _config(train__loss="trades", train__trades_beta=0.0)
    assert not attacks_in_training(cfg)
    assert attacks_in_training(_config(train__loss="trades", train__beta=1.0))  # beta is hybrid's


@pytest.mark.parametrize("mode", ["fgsm_rs", "free"])
@pytest.mark.parametrize("loss", ["trades", "mart"])
def test_trades_and_mart_refuse_the_fast_train_modes(loss: str, mode: str) -> None:
    with pytest.raises(ConfigError, match=f"train.loss={loss}.*attack.train_mode={mode}"):
        _config(train__loss=loss, attack__train_mode=mode)


def test_an_unknown_loss_is_refused_naming_the_choices() -> None:
    with pytest.raises(
        ConfigError, match="train.loss: 'hinge' is not allowed.*hybrid, mart, trades"
    ):
        _config(train__loss="hinge")


def test_a_refused_combination_is_one_line_and_exit_2(capsys) -> None:
    from dnr.cli import main

    code = main(["train", "--print-config", "train.loss=trades", "attack.train_mode=free"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "train.loss=trades" in err


def test_a_registered_objective_trains_through_the_step() -> None:
    """A user's own objective is a registry entry, not a branch in the step."""
    calls = {"n": 0}

    def loss(model: nn.Module, x: Tensor, x_adv: Tensor | None, y: Tensor, cfg: Config) -> Any:
        calls["n"] += 1
        return hybrid_loss(model, x, x_adv, y, 0.0)

    hybrid = OBJECTIVES.get("hybrid")
    entry = objectives.Objective("toy", "test", hybrid.mode, hybrid.adversarial, loss, hybrid.check)
    OBJECTIVES.register(entry)
    try:
        cfg = _config(train__loss="toy")
        model = _Tiny().train()
        opt = build_optimizer(cfg, model)
        method = build_sparsity(cfg, model, opt, torch.Generator().manual_seed(1))
        prog = Progress(step=0, epoch=0, epochs=1, steps_per_epoch=1)
        x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
        train_step(model, opt, x, y, cfg, method, prog, torch.Generator().manual_seed(0))
        assert calls["n"] == 1
    finally:
        OBJECTIVES.unregister("toy")


@pytest.mark.parametrize(
    ("extra", "sees_clean"),
    [
        ({"train__beta": 0.5}, True),
        ({"train__beta": 0.0}, False),  # the hybrid loss skips a clean pass of weight 0
        ({"train__beta": 0.0, "train__loss": "trades"}, True),  # train.beta is the hybrid's
        ({"train__beta": 0.0, "train__loss": "mart"}, True),
        ({"train__beta": 0.0, "attack__eps": 0.0}, True),  # no attack: clean training
    ],
)
def test_training_clean_accuracy_is_recorded_when_a_step_sees_the_clean_batch(
    extra: dict[str, Any], sees_clean: bool
) -> None:
    assert clean_logits_in_training(_config(**extra)) is sees_clean


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["trades", "mart"])
def test_trades_and_mart_train_end_to_end(tmp_path, loss: str) -> None:
    cfg = _config(train__loss=loss, sparsity__method="dnr", sparsity__density=0.3)
    result = train(cfg, tmp_path / loss, **QUIET)
    record = result.history[-1]
    assert math.isfinite(record["train_loss"])
    assert record["train_adv_acc"] is not None
    assert record["train_clean_acc"] is not None
    meta = json.loads((tmp_path / loss / "model.json").read_text())
    assert meta["training"]["loss"] == loss
    assert meta["training"][f"{loss}_beta"] == 6.0


@pytest.mark.slow
def test_an_interrupted_trades_adamw_run_resumes_to_the_same_bits(tmp_path, monkeypatch) -> None:
    cfg = _config(
        train__loss="trades",
        train__optimizer="adamw",
        train__lr=0.002,
        train__weight_decay=0.05,
        sparsity__method="dnr",
        sparsity__density=0.3,
        data__subset=128,
    )
    train(cfg, tmp_path / "straight", **QUIET)
    real, calls = torch.optim.AdamW.step, {"n": 0}

    def flaky(self: torch.optim.AdamW, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 6:  # in the middle of epoch 2 (4 steps an epoch)
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", **QUIET)
    assert len(metrics(tmp_path / "resumed")) == 1
    monkeypatch.undo()
    train(cfg, tmp_path / "resumed", resume=True, **QUIET)
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    assert strip_timing(metrics(tmp_path / "straight")) == strip_timing(
        metrics(tmp_path / "resumed")
    )
