"""dnr.attacks: threat model, strength, and that the model is left exactly as found."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnr.attacks import attack_loss, attack_mode, fgsm, pgd
from dnr.models import create_model

EPS = 8 / 255


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 25) -> nn.Module:
    """A few SGD steps on a fixed batch: a 'trained-ish' model with meaningful BN stats."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    return x, y


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    return _fit(create_model("resnet18", num_classes=10, width=0.125), *data)


@pytest.fixture
def model(trained):
    return copy.deepcopy(trained)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mean_loss(model, x, y, loss="ce") -> float:
    with torch.no_grad():
        return attack_loss(model.eval()(x), y, loss).mean().item()


def assert_in_threat_model(x_adv, x, eps):
    assert x_adv.shape == x.shape
    assert x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0
    assert x_adv.max().item() <= 1.0


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_stays_in_ball_and_box(model, data, loss):
    x, y = data
    x_adv = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=10, loss=loss, generator=gen())
    assert_in_threat_model(x_adv, x, EPS)
    assert (x_adv != x).any()


def test_pgd_raises_loss_over_clean(model, data):
    x, y = data
    x_adv = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=7, generator=gen())
    assert mean_loss(model, x_adv, y) > mean_loss(model, x, y) + 0.1


def test_more_steps_at_least_as_strong(model, data):
    x, y = data
    kw = dict(eps=EPS, step_size=EPS / 4, random_start=False)
    one = pgd(model, x, y, steps=1, **kw)
    twenty = pgd(model, x, y, steps=20, **kw)
    assert mean_loss(model, twenty, y) >= mean_loss(model, one, y)


def test_cw_loss_variant(model, data):
    x, y = data
    x_adv = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=10, loss="cw", generator=gen())
    assert_in_threat_model(x_adv, x, EPS)
    assert mean_loss(model, x_adv, y, "cw") > mean_loss(model, x, y, "cw")
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    margin = attack_loss(logits, torch.tensor([1, 2]), "cw")
    torch.testing.assert_close(margin, torch.tensor([-1.0, 4.0]))


def test_zero_eps_or_steps_returns_input(model, data):
    x, y = data
    assert torch.equal(pgd(model, x, y, eps=0.0, step_size=0.01, steps=5), x)
    assert torch.equal(pgd(model, x, y, eps=EPS, step_size=0.01, steps=0, random_start=False), x)
    assert torch.equal(fgsm(model, x, y, eps=0.0), x)


def test_random_start_is_seeded(model, data):
    x, y = data
    kw = dict(eps=EPS, step_size=2 / 255, steps=2)
    a = pgd(model, x, y, generator=gen(1), **kw)
    b = pgd(model, x, y, generator=gen(1), **kw)
    c = pgd(model, x, y, generator=gen(2), **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    start = pgd(model, x, y, eps=EPS, step_size=0.01, steps=0, generator=gen())
    assert_in_threat_model(start, x, EPS)


def test_restarts_never_weaker(model, data):
    x, y = data
    eps = 3 / 255
    kw = dict(eps=eps, step_size=eps / 2, steps=2, loss="cw")
    single = pgd(model, x, y, restarts=1, generator=gen(3), **kw)
    multi = pgd(model, x, y, restarts=4, generator=gen(3), **kw)
    assert_in_threat_model(multi, x, eps)
    with torch.no_grad():
        s1, sm = model(single), model(multi)
    ok1, okm = s1.argmax(1) != y, sm.argmax(1) != y
    assert ok1.any()
    assert not ok1.all()
    assert (okm | ~ok1).all()  # every example fooled by restart 1 stays fooled
    assert torch.equal(multi[ok1], single[ok1])  # ...by the very same first-restart example
    loss1, lossm = attack_loss(s1, y, "cw"), attack_loss(sm, y, "cw")
    assert (lossm[~okm] >= loss1[~okm]).all()  # unfooled: the highest-loss restart is kept


def test_fgsm_moves_each_pixel_by_eps(model, data):
    x, y = data
    x_adv = fgsm(model, x, y, eps=EPS)
    assert_in_threat_model(x_adv, x, EPS)
    x_req = x.clone().requires_grad_(True)
    F.cross_entropy(model(x_req), y, reduction="sum").backward()
    expected = (x + EPS * x_req.grad.sign()).clamp(0, 1)
    assert torch.equal(x_adv, expected)
    free = (x_adv > 0) & (x_adv < 1) & (x_req.grad != 0)
    assert free.float().mean() > 0.9
    torch.testing.assert_close((x_adv - x).abs()[free], torch.full_like(x[free], EPS))
    assert torch.equal(fgsm(model, x, y, EPS), x_adv)  # eps positional, as in the contract


@pytest.mark.parametrize("attack", ["pgd", "fgsm"])
def test_no_weight_gradients(model, data, attack):
    x, y = data
    params = list(model.parameters())
    preset = {id(p): torch.randn_like(p) for p in params[::2]}
    for p in params[::2]:
        p.grad = preset[id(p)].clone()
    if attack == "pgd":
        pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=3, generator=gen())
    else:
        fgsm(model, x, y, eps=EPS)
    for i, p in enumerate(params):
        if i % 2 == 0:
            assert torch.equal(p.grad, preset[id(p)])
        else:
            assert p.grad is None


def test_uses_autograd_grad_not_backward(model, data, monkeypatch):
    x, y = data

    def forbidden(*args, **kwargs):
        raise AssertionError("attacks must not call .backward()")

    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=2, generator=gen())


def test_bn_stats_unchanged_in_train_mode(model, data):
    x, y = data
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=3, restarts=2, generator=gen())
    fgsm(model, x, y, eps=EPS)
    after = model.state_dict()
    assert any("num_batches_tracked" in k for k in before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert model.training


def test_modes_and_requires_grad_restored_exactly(model, data):
    x, y = data
    model.train()
    model.layer2.eval()
    model.layer3[1].bn1.eval()
    model.classifier.eval()
    model.layer1[0].conv1.weight.requires_grad_(False)
    model.bn1.bias.requires_grad_(False)
    modes = {n: m.training for n, m in model.named_modules()}
    req = {n: p.requires_grad for n, p in model.named_parameters()}
    assert len(set(modes.values())) == 2
    assert len(set(req.values())) == 2

    seen_training, seen_frozen = [], []
    model.bn1.register_forward_pre_hook(lambda m, a: seen_training.append(m.training))
    model.layer4.register_forward_pre_hook(
        lambda m, a: seen_frozen.append(not any(p.requires_grad for p in model.parameters()))
    )
    pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=2, restarts=2, generator=gen())
    fgsm(model, x, y, eps=EPS)
    assert seen_training
    assert not any(seen_training)
    assert seen_frozen
    assert all(seen_frozen)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == req


def test_attack_mode_restores_on_error(model):
    model.train()

    def fail_inside() -> None:
        with attack_mode(model):
            assert not model.training
            assert not any(p.requires_grad for p in model.parameters())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_works_under_no_grad(model, data):
    x, y = data
    with torch.no_grad():
        x_adv = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=2, generator=gen())
        x_f = fgsm(model, x, y, eps=EPS)
    assert (x_adv != x).any()
    assert (x_f != x).any()


def test_fp32_inside_bf16_autocast(model, data):
    x, y = data
    dtypes: list[torch.dtype] = []
    model.conv1.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
        assert dtypes == [torch.bfloat16]  # the outer autocast is really active
        dtypes.clear()
        x_adv = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=2, generator=gen())
        x_f = fgsm(model, x, y, eps=EPS)
    assert dtypes
    assert all(d == torch.float32 for d in dtypes)
    assert x_adv.dtype == torch.float32
    assert x_f.dtype == torch.float32
    assert_in_threat_model(x_adv, x, EPS)


def test_low_precision_input_keeps_dtype(model, data):
    x, y = data
    xb = x.to(torch.bfloat16)
    x_adv = pgd(model, xb, y, eps=EPS, step_size=2 / 255, steps=2, generator=gen())
    assert x_adv.dtype == torch.bfloat16
    assert (x_adv.float() - xb.float()).abs().max().item() <= EPS + 1e-2  # bf16 rounding


def test_vgg_with_restarts(data):
    x, y = data
    torch.manual_seed(1)
    model = create_model("vgg16", num_classes=10, width=0.0625).eval()
    x_adv = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=3, restarts=2, generator=gen())
    assert_in_threat_model(x_adv, x, EPS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(eps=-0.1), "eps must be >= 0, got -0.1"),
        (dict(steps=-1), "steps must be >= 0, got -1"),
        (dict(restarts=0), "restarts must be >= 1, got 0"),
        (dict(loss="kl"), "loss must be 'ce' or 'cw', got 'kl'"),
    ],
)
def test_invalid_settings(model, data, kwargs, message):
    x, y = data
    args = dict(eps=EPS, step_size=0.01, steps=1) | kwargs
    with pytest.raises(ValueError, match=message):
        pgd(model, x, y, **args)
