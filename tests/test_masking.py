"""Tests of ``Masking``: exact budgets, per-step masking, rewiring, checkpointing."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from dnr.sparsity import Masking, cosine_prune_rate, prunable_parameters


class _Norm(nn.Module):
    """Stand-in for the models' Normalize layer: buffers only, never prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.2, 0.2]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def tiny_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        _Norm(),
        nn.Conv2d(3, 8, 3, padding=1),  # 1.weight (216), with bias
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),  # 4.weight (1152)
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),  # 9.weight (160), with bias
    )


PRUNABLE = ["1.weight", "4.weight", "9.weight"]


def sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def make(density: float = 0.1, seed: int = 0, **kw) -> tuple[nn.Module, torch.optim.SGD, Masking]:
    model = tiny_net(seed)
    opt = sgd(model)
    masking = Masking(
        model, opt, density=density, generator=torch.Generator().manual_seed(seed), **kw
    )
    return model, opt, masking


def train_steps(
    model: nn.Module, opt: torch.optim.Optimizer, masking: Masking, n: int, seed: int = 0
) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.rand(8, 3, 8, 8, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        masking.apply_()


def randomize_momenta(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    g: torch.Generator,
    scales: dict[str, float] | None = None,
) -> None:
    for name, p in model.named_parameters():
        scale = (scales or {}).get(name, 1.0)
        opt.state[p]["momentum_buffer"] = torch.randn(p.shape, generator=g) * scale


def assert_invariants(model: nn.Module, masking: Masking) -> None:
    params = dict(model.named_parameters())
    total = 0
    for name, mask in masking.masks.items():
        assert mask.dtype == torch.bool
        assert mask.shape == params[name].shape
        assert torch.all(params[name][~mask] == 0), name
        total += int(mask.sum())
    assert total == masking.num_active == masking.target_active
    assert masking.target_active == round(masking.density_target * masking.num_prunable)


# --------------------------------------------------------------------------- init


@pytest.mark.parametrize("init", ["uniform", "erk"])
@pytest.mark.parametrize("density", [0.0371, 0.05, 0.1, 0.5, 1.0])
def test_exact_budget_after_init(init: str, density: float) -> None:
    model, _, masking = make(density, init=init)
    assert masking.layer_names == PRUNABLE
    assert masking.num_prunable == 216 + 1152 + 160
    assert_invariants(model, masking)
    assert masking.density() == pytest.approx(round(density * 1528) / 1528)


def test_only_conv_and_linear_weights_are_prunable() -> None:
    model, _, masking = make(0.05)
    assert set(masking.masks) == set(PRUNABLE)
    train_steps(model, masking.optimizer, masking, 3)
    assert torch.all(model[1].bias != 0)
    assert torch.all(model[9].bias != 0)
    assert torch.all(model[2].weight != 0)  # BN scale untouched
    assert torch.equal(model[0].mean, torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))


def test_init_is_reproducible_with_generator() -> None:
    _, _, a = make(0.1, seed=3)
    _, _, b = make(0.1, seed=3)
    for name in PRUNABLE:
        assert torch.equal(a.masks[name], b.masks[name])


def test_invalid_arguments() -> None:
    model = tiny_net()
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\], got 0.0"):
        Masking(model, sgd(model), density=0.0)
    with pytest.raises(ValueError, match="init must be one of .*got 'gaussian'"):
        Masking(model, sgd(model), density=0.1, init="gaussian")
    with pytest.raises(ValueError, match="no prunable Conv2d/Linear weights left"):
        Masking(model, sgd(model), density=0.1, exclude=["*"])
    _, _, masking = make()
    with pytest.raises(ValueError, match=r"prune_rate must be in \[0, 1\], got 1.5"):
        masking.rewire(1.5)


def test_exclude_keeps_layers_dense_and_out_of_n() -> None:
    model, opt, masking = make(0.05, exclude=["1.weight", "9.*"])
    assert masking.layer_names == ["4.weight"]
    assert masking.num_prunable == 1152
    assert masking.target_active == round(0.05 * 1152)
    train_steps(model, opt, masking, 2)
    randomize_momenta(model, opt, torch.Generator().manual_seed(0))
    masking.rewire(0.5)
    assert torch.all(model[1].weight != 0)
    assert torch.all(model[9].weight != 0)
    assert_invariants(model, masking)
    assert set(prunable_parameters(model, ["*.weight"])) == set()


# --------------------------------------------------------------------------- per-step masking


def test_masked_weights_stay_zero_while_momentum_stays_dense() -> None:
    model, opt, masking = make(0.3)
    params = dict(model.named_parameters())
    for step in range(30):
        train_steps(model, opt, masking, 1, seed=step)
        assert_invariants(model, masking)
    for name in PRUNABLE:
        buf = opt.state[params[name]]["momentum_buffer"]
        inactive = ~masking.masks[name]
        # the growth signal: momentum at masked positions is alive (not masked). (Some
        # entries are legitimately 0: input channels that the sparse stem leaves dead.)
        assert (buf[inactive] != 0).float().mean() > 0.6, name


def test_apply_is_exactly_zero_even_after_manual_perturbation() -> None:
    model, _, masking = make(0.2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    masking.apply_()
    assert_invariants(model, masking)


# --------------------------------------------------------------------------- rewiring


@pytest.mark.parametrize("init", ["uniform", "erk"])
@pytest.mark.parametrize("density", [0.0371, 0.1, 0.6])
def test_budget_exact_after_many_rewirings(init: str, density: float) -> None:
    model, opt, masking = make(density, seed=1, init=init)
    g = torch.Generator().manual_seed(123)
    scales = {name: 10.0 ** (i - 1) for i, name in enumerate(PRUNABLE)}
    total_rewires = 60
    for t in range(total_rewires):
        with torch.no_grad():  # random weights at the active positions
            for _name, p in model.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        masking.apply_()
        randomize_momenta(model, opt, g, scales if t % 2 else None)
        rate = cosine_prune_rate(t, total_rewires)
        stats = masking.rewire(rate)
        assert stats.total_lost == stats.total_regrown
        assert stats.total_active == masking.target_active
        assert sum(
            stats.layer_density[n] * p.numel() for n, p in model.named_parameters() if n in PRUNABLE
        ) == pytest.approx(masking.target_active)
        assert_invariants(model, masking)


@pytest.mark.parametrize(
    ("redistribution", "regrown"),
    [
        (1.0, (75, 25)),  # the paper: g = ŝ·R
        (0.4, (60, 40)),  # damped: 0.6·(50, 50) + 0.4·(75, 25)
        (0.0, (50, 50)),  # counts frozen: every layer regrows what it lost
    ],
)
def test_redistribution_known_answer_favours_largest_momentum(redistribution, regrown) -> None:
    model = nn.Sequential(nn.Linear(40, 25, bias=False), nn.Linear(25, 40, bias=False))
    opt = sgd(model)
    masking = Masking(
        model,
        opt,
        density=0.1,
        generator=torch.Generator().manual_seed(0),
        redistribution=redistribution,
    )
    assert list(masking.layer_densities().values()) == [0.1, 0.1]  # 100 of 1000 each
    opt.state[model[0].weight]["momentum_buffer"] = torch.full((25, 40), 3.0)
    opt.state[model[1].weight]["momentum_buffer"] = torch.full((40, 25), -1.0)
    stats = masking.rewire(0.5)
    # r = ceil(0.5 * 100) = 50 per layer, R = 100; ŝ = (3, 1) / 4.
    assert stats.normalized_momentum == pytest.approx({"0.weight": 0.75, "1.weight": 0.25})
    assert stats.lost == {"0.weight": 50, "1.weight": 50}
    assert stats.regrown == {"0.weight": regrown[0], "1.weight": regrown[1]}
    assert masking.layer_counts() == {"0.weight": 50 + regrown[0], "1.weight": 50 + regrown[1]}
    assert masking.num_active == 200


def test_redistribution_respects_capacity() -> None:
    # Layer 0 is small (20 weights, 10 active): it can take at most 20 - (10 - 5) = 15.
    model = nn.Sequential(nn.Linear(4, 5, bias=False), nn.Linear(10, 98, bias=False))
    opt = sgd(model)
    masking = Masking(model, opt, density=0.5, generator=torch.Generator().manual_seed(0))
    assert list(masking._nnz.values()) == [10, 490]
    opt.state[model[0].weight]["momentum_buffer"] = torch.full((5, 4), 1000.0)
    opt.state[model[1].weight]["momentum_buffer"] = torch.full((98, 10), 1.0)
    stats = masking.rewire(0.5)
    assert stats.lost == {"0.weight": 5, "1.weight": 245}
    assert stats.regrown == {"0.weight": 15, "1.weight": 235}  # overflow 235 goes to layer 1
    assert masking.layer_densities()["0.weight"] == 1.0


def test_rewire_prunes_smallest_and_regrows_largest_momentum() -> None:
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    opt = sgd(model)
    # The paper's rule exactly: no channel protection, regrown weights restart at 0.
    masking = Masking(
        model,
        opt,
        density=0.3,
        generator=torch.Generator().manual_seed(0),
        protect_channels=False,
        keep_regrown_values=False,
        grow_momentum="keep",
    )
    w = model[0].weight
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        w.copy_(torch.randn(10, 10, generator=g))
    masking.apply_()
    old = masking.masks["0.weight"].clone()
    mom = torch.randn(10, 10, generator=g)
    mom[old] = 0.0  # active positions carry no momentum: regrowth must come from outside
    opt.state[w]["momentum_buffer"] = mom
    weights_before = w.detach().clone()
    mom_before = mom.clone()

    masking.rewire(0.4)  # r = ceil(0.4 * 30) = 12, one layer so g = 12
    new = masking.masks["0.weight"]
    active_vals = weights_before.abs()[old]
    thr = active_vals.sort().values[11]  # 12th smallest active |w|
    expected_kept = old & (weights_before.abs() > thr)
    assert int(expected_kept.sum()) == 18
    assert torch.equal(new & old, expected_kept)
    grown = new & ~old
    inactive_abs = mom_before.abs().masked_fill(old, -1).flatten()
    top = torch.zeros(100, dtype=torch.bool)
    top[inactive_abs.topk(12).indices] = True
    assert torch.equal(grown, top.view(10, 10))
    # regrown weights start at 0, kept weights are untouched, momentum is not reset
    assert torch.all(w[grown] == 0)
    assert torch.equal(w[expected_kept], weights_before[expected_kept])
    assert torch.equal(opt.state[w]["momentum_buffer"], mom_before)
    assert_invariants(model, masking)


def test_just_pruned_positions_are_eligible_for_regrowth() -> None:
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    opt = sgd(model)
    masking = Masking(
        model,
        opt,
        density=0.3,
        generator=torch.Generator().manual_seed(0),
        protect_channels=False,
        keep_regrown_values=False,
    )
    w = model[0].weight
    old = masking.masks["0.weight"].clone()
    with torch.no_grad():
        w.copy_(torch.arange(1.0, 101.0).view(10, 10))
    masking.apply_()
    # Momentum lives only on the active entries, so the best growth candidates are exactly the
    # 15 positions pruned now (only they and zero-momentum positions are inactive afterwards).
    opt.state[w]["momentum_buffer"] = old.float() * 5.0
    weights_before = w.detach().clone()
    masking.rewire(0.5)
    assert torch.equal(masking.masks["0.weight"], old)  # pruned and regrown in place
    pruned_smallest = old & (weights_before <= weights_before[old].sort().values[14])
    assert torch.all(w[pruned_smallest] == 0)  # ... restarting from zero (the paper's rule)

    # With regrow_pruned=False the same situation must grow elsewhere.
    model2 = nn.Sequential(nn.Linear(10, 10, bias=False))
    opt2 = sgd(model2)
    m2 = Masking(
        model2, opt2, density=0.3, generator=torch.Generator().manual_seed(0), regrow_pruned=False
    )
    old2 = m2.masks["0.weight"].clone()
    with torch.no_grad():
        model2[0].weight.copy_(torch.arange(1.0, 101.0).view(10, 10))
    m2.apply_()
    opt2.state[model2[0].weight]["momentum_buffer"] = old2.float() * 5.0
    m2.rewire(0.5)
    new2 = m2.masks["0.weight"]
    assert int((new2 & ~old2).sum()) == 15
    assert int((old2 & new2).sum()) == 15
    assert_invariants(model2, m2)


def test_rewired_densities_differ_from_uniform_when_momenta_differ() -> None:
    model, opt, masking = make(0.1, redistribution=1.0)
    train_steps(model, opt, masking, 2)
    g = torch.Generator().manual_seed(0)
    randomize_momenta(model, opt, g, {"1.weight": 100.0, "4.weight": 1.0, "9.weight": 0.01})
    stats = masking.rewire(0.5)
    dens = masking.layer_densities()
    assert dens["1.weight"] > 0.1 + 0.05
    assert dens["9.weight"] < 0.1 - 0.03
    assert stats.regrown["1.weight"] > stats.lost["1.weight"]
    assert stats.regrown["9.weight"] < stats.lost["9.weight"]
    assert_invariants(model, masking)


def test_rewire_before_first_step_treats_momentum_as_zero() -> None:
    model, _, masking = make(0.1)
    stats = masking.rewire(0.5)
    assert stats.normalized_momentum == pytest.approx({n: 1 / 3 for n in PRUNABLE})
    assert_invariants(model, masking)


def test_stats_are_plain_python() -> None:
    model, opt, masking = make(0.1)
    train_steps(model, opt, masking, 2)
    d = masking.rewire(0.3).to_dict()

    def plain(x: object) -> bool:
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        return isinstance(x, (int, float, str))

    assert plain(d)
    assert set(d["lost"]) == set(PRUNABLE)


# --------------------------------------------------------------------------- checkpointing


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_roundtrip_resumes_exactly() -> None:
    model, opt, masking = make(0.0371, seed=0, init="erk")
    g = torch.Generator().manual_seed(1)
    for t in range(3):
        train_steps(model, opt, masking, 2, seed=t)
        randomize_momenta(model, opt, g)
        masking.rewire(0.3)
    ckpt = _roundtrip(
        {"model": model.state_dict(), "opt": opt.state_dict(), "masking": masking.state_dict()}
    )

    model2 = tiny_net(seed=99)  # different init and different masks
    opt2 = sgd(model2)
    masking2 = Masking(model2, opt2, density=0.5, generator=torch.Generator().manual_seed(9))
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    masking2.load_state_dict(ckpt["masking"])
    assert masking2.settings.init == "erk"
    assert masking2.density_target == 0.0371
    assert masking2.target_active == masking.target_active
    assert masking2.layer_densities() == masking.layer_densities()
    for n in PRUNABLE:
        assert torch.equal(masking2.masks[n], masking.masks[n])
    # continuing both runs gives identical masks
    randomize_momenta(model, opt, torch.Generator().manual_seed(4))
    randomize_momenta(model2, opt2, torch.Generator().manual_seed(4))
    masking.rewire(0.2)
    masking2.rewire(0.2)
    for n in PRUNABLE:
        assert torch.equal(masking2.masks[n], masking.masks[n])
    assert_invariants(model2, masking2)


def test_load_state_dict_validates() -> None:
    _, _, masking = make(0.1)
    sd = masking.state_dict()
    # a different architecture
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="missing"):
        Masking(other, sgd(other), density=0.1).load_state_dict(sd)
    # same names, different shape
    wide = tiny_net()
    wide[9] = nn.Linear(16, 11)
    with pytest.raises(ValueError, match="shape"):
        Masking(wide, sgd(wide), density=0.1).load_state_dict(sd)
    # different exclude -> different prunable set
    model = tiny_net()
    with pytest.raises(ValueError, match="unexpected"):
        Masking(model, sgd(model), density=0.1, exclude=["9.weight"]).load_state_dict(sd)
    # tampered budget
    bad = dict(sd, masks={**sd["masks"], "9.weight": torch.ones(10, 16, dtype=torch.bool)})
    with pytest.raises(ValueError, match="active"):
        Masking(model := tiny_net(), sgd(model), density=0.1).load_state_dict(bad)
    with pytest.raises(ValueError, match="missing density"):
        Masking(model := tiny_net(), sgd(model), density=0.1).load_state_dict({"masks": {}})


class _Wrapper(nn.Module):
    """Mimics DistributedDataParallel's ``module.`` naming."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def test_wrapped_model_names_have_no_module_prefix() -> None:
    inner = tiny_net()
    wrapped = _Wrapper(inner)
    masking = Masking(
        wrapped, sgd(wrapped), density=0.1, generator=torch.Generator().manual_seed(0)
    )
    assert masking.layer_names == PRUNABLE
    plain_model, _, plain = make(0.1, seed=1)
    plain.load_state_dict(_roundtrip(masking.state_dict()))
    for n in PRUNABLE:
        assert torch.equal(plain.masks[n], masking.masks[n])
    assert_invariants(plain_model, plain)


def test_device_moves() -> None:
    model, opt, masking = make(0.1)
    assert masking.to("cpu") is masking
    assert all(m.device.type == "cpu" for m in masking.masks.values())
    train_steps(model, opt, masking, 1)
    assert_invariants(model, masking)
    if torch.cuda.is_available():
        model.cuda()
        masking.apply_()  # masks follow their weights
        assert all(m.device.type == "cuda" for m in masking.masks.values())
        sd = masking.state_dict()
        assert all(m.device.type == "cpu" for m in sd["masks"].values())
        masking.to("cpu").load_state_dict(sd)
        assert all(m.device.type == "cuda" for m in masking.masks.values())


# --------------------------------------------------------------------------- real model


def test_vgg16_small_width_budget() -> None:
    models = pytest.importorskip("dnr.models")
    model = models.create_model("vgg16", num_classes=10, width=0.0625)
    opt = sgd(model)
    masking = Masking(
        model,
        opt,
        density=0.05,
        exclude=["features.0.weight"],
        generator=torch.Generator().manual_seed(0),
    )
    names = masking.layer_names
    assert "features.0.weight" not in names
    assert "classifier.weight" in names
    assert len(names) == 12 + 1  # 13 convs minus the excluded stem, plus the head
    assert all(not n.endswith("bias") for n in names)
    g = torch.Generator().manual_seed(0)
    for t in range(5):
        randomize_momenta(model, opt, g)
        masking.rewire(cosine_prune_rate(t, 5))
        assert_invariants(model, masking)


# --------------------------------------------------------------------------- stable rewiring


def _dead_rows(masking: Masking) -> dict[str, int]:
    return {n: int((~m.reshape(m.shape[0], -1).any(1)).sum()) for n, m in masking.masks.items()}


@pytest.mark.parametrize("init", ["uniform", "erk"])
def test_no_output_channel_starts_dead(init: str) -> None:
    from dnr.models import create_model

    for seed in range(3):
        vgg = create_model("vgg16", num_classes=10, width=0.25, mean=(0.5,) * 3, std=(0.2,) * 3)
        masking = Masking(
            vgg, sgd(vgg), density=0.05, init=init, generator=torch.Generator().manual_seed(seed)
        )
        assert sum(_dead_rows(masking).values()) == 0
        assert masking.num_active == round(0.05 * masking.num_prunable)
    # The unprotected (paper) init leaves first-layer filters empty at this budget.
    vgg = create_model("vgg16", num_classes=10, width=0.25, mean=(0.5,) * 3, std=(0.2,) * 3)
    paper = Masking(
        vgg,
        sgd(vgg),
        density=0.05,
        init="uniform",
        protect_channels=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert _dead_rows(paper)["features.0.weight"] > 0


def _starve_first_layer(protect: bool) -> Masking:
    """Tiny first-layer weights and all momentum elsewhere: pruning strips that layer."""
    model, opt, masking = make(0.05, protect_channels=protect, redistribution=1.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        with torch.no_grad():
            model[1].weight.mul_(1e-3)
        randomize_momenta(model, opt, g, {"1.weight": 0.0, "4.weight": 1.0, "9.weight": 1.0})
        masking.rewire(0.5)
        assert_invariants(model, masking)
    return masking


def test_no_channel_or_layer_loses_its_last_weight() -> None:
    protected = _starve_first_layer(True)
    assert sum(_dead_rows(protected).values()) == 0
    assert protected.layer_counts()["1.weight"] >= 8  # one per output channel at least
    unprotected = _starve_first_layer(False)
    assert _dead_rows(unprotected)["1.weight"] > 0  # the failure the protection prevents


def test_pruned_then_regrown_weights_keep_their_value() -> None:
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    opt = sgd(model)
    masking = Masking(model, opt, density=0.3, generator=torch.Generator().manual_seed(0))
    w = model[0].weight
    old = masking.masks["0.weight"].clone()
    with torch.no_grad():
        w.copy_(torch.arange(1.0, 101.0).view(10, 10))
    masking.apply_()
    opt.state[w]["momentum_buffer"] = old.float() * 5.0  # growth returns to the pruned places
    weights_before = w.detach().clone()
    stats = masking.rewire(0.5)
    assert stats.total_lost > 0
    assert torch.equal(masking.masks["0.weight"], old)
    assert torch.equal(w.detach(), weights_before)  # nothing restarted at 0
    assert_invariants(model, masking)


@pytest.mark.parametrize("grow_momentum", ["keep", "zero"])
def test_momentum_of_newly_grown_weights(grow_momentum: str) -> None:
    model, opt, masking = make(0.1, grow_momentum=grow_momentum)
    train_steps(model, opt, masking, 2)
    randomize_momenta(model, opt, torch.Generator().manual_seed(1))
    before = {n: m.clone() for n, m in masking.masks.items()}
    params = dict(model.named_parameters())
    moms = {n: opt.state[params[n]]["momentum_buffer"].clone() for n in PRUNABLE}
    masking.rewire(0.5)
    grown_any = False
    for n in PRUNABLE:
        grown = masking.masks[n] & ~before[n]
        grown_any |= bool(grown.any())
        now = opt.state[params[n]]["momentum_buffer"]
        assert torch.equal(now[~grown], moms[n][~grown])  # everything else untouched
        if grow_momentum == "zero":
            assert torch.all(now[grown] == 0)
        else:
            assert torch.equal(now[grown], moms[n][grown])
    assert grown_any


def test_redistribution_zero_keeps_per_layer_counts() -> None:
    g = torch.Generator().manual_seed(0)
    model, opt, frozen = make(0.1, redistribution=0.0)
    counts = frozen.layer_counts()
    for _ in range(3):
        randomize_momenta(model, opt, g, {"1.weight": 100.0, "4.weight": 1.0, "9.weight": 0.01})
        stats = frozen.rewire(0.5)
        assert stats.total_lost > 0
        assert stats.lost == stats.regrown
        assert frozen.layer_counts() == counts
        assert_invariants(model, frozen)
    model, opt, moving = make(0.1, redistribution=1.0)
    randomize_momenta(model, opt, g, {"1.weight": 100.0, "4.weight": 1.0, "9.weight": 0.01})
    moving.rewire(0.5)
    assert moving.layer_counts()["1.weight"] > counts["1.weight"]


def test_grown_weights_start_at_zero_even_without_apply() -> None:
    model, opt, masking = make(0.1)
    train_steps(model, opt, masking, 2)
    opt.step()  # weight decay and momentum move masked weights; apply_() not called
    before = {n: m.clone() for n, m in masking.masks.items()}
    randomize_momenta(model, opt, torch.Generator().manual_seed(2))
    masking.rewire(0.5)
    params = dict(model.named_parameters())
    for n in PRUNABLE:
        grown = masking.masks[n] & ~before[n]
        assert torch.all(params[n][grown] == 0)
        assert torch.all(params[n][~masking.masks[n]] == 0)


def test_a_state_saved_before_the_options_existed_restores_the_paper_rewiring() -> None:
    _, _, masking = make(0.1)
    state = masking.state_dict()
    for k in ("keep_regrown_values", "protect_channels", "redistribution", "grow_momentum"):
        del state[k]
    restored = make(0.1)[2]
    restored.load_state_dict(state)
    assert (
        restored.settings.keep_regrown_values,
        restored.settings.protect_channels,
        restored.settings.redistribution,
        restored.settings.grow_momentum,
    ) == (False, False, 1.0, "keep")


def test_rewiring_options_travel_with_the_state_dict() -> None:
    _, _, masking = make(
        0.1,
        redistribution=0.4,
        grow_momentum="zero",
        protect_channels=False,
        keep_regrown_values=False,
    )
    restored = make(0.1)[2]
    restored.load_state_dict(_roundtrip(masking.state_dict()))
    assert (
        restored.settings.redistribution,
        restored.settings.grow_momentum,
        restored.settings.protect_channels,
        restored.settings.keep_regrown_values,
    ) == (0.4, "zero", False, False)
    with pytest.raises(ValueError, match=r"redistribution must be in \[0, 1\], got 1.5"):
        make(0.1, redistribution=1.5)
    with pytest.raises(ValueError, match="grow_momentum must be one of .*got 'reset'"):
        make(0.1, grow_momentum="reset")
