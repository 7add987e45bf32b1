"""Channel mode: budgets in compacted weights, silent pruned channels, harmless regrowth,
and the compact export that removes them (equal logits, loadable without the config)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dnr
from dnr.config import ConfigError, load_config
from dnr.export.compact import compact_model
from dnr.modelfile import load_model, save_model
from dnr.models.channels import channel_groups
from dnr.sparsity import ChannelLayout, ChannelMasking
from dnr.sparsity.layers import prunable_parameters
from helpers import QUIET, metrics, tiny_overrides

ARCHS = ["vgg16", "resnet18"]


def _model(arch: str, width: float = 0.25, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return dnr.create_model(arch, num_classes=10, width=width)


def _train_steps(model: nn.Module, masking: ChannelMasking, opt, steps: int = 4) -> None:
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        x = torch.rand(16, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        masking.apply_()


def _one_channel_budget(layout: ChannelLayout, counts: list[int]) -> int:
    """The cheapest channel that could still be added: the budget's allowed shortfall."""
    costs = [layout.marginal(counts, g) for g in range(len(counts)) if counts[g] < layout.sizes[g]]
    return min(costs, default=1)


def _compact_weights(model: nn.Module) -> int:
    return sum(p.numel() for p in prunable_parameters(model).values())


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("density", [0.05, 0.1, 0.3])
def test_budget_is_met_within_one_channel_and_counts_the_compacted_network(arch, density) -> None:
    model = _model(arch)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    masking = ChannelMasking(model, opt, density=density, redistribution=1.0)
    layout = masking.layout
    for rewiring in range(4):
        counts = masking.channel_counts()
        assert 1 <= min(counts)
        assert masking.num_active <= masking.target_active
        assert masking.target_active - masking.num_active < _one_channel_budget(layout, counts)
        # the budget is what the exported model really holds
        compact = compact_model(model, masking.kept_channels())
        assert _compact_weights(compact) == masking.num_active
        # and what the masked model can hold: weights outside kept channels are zero
        nonzero = sum(int((p != 0).sum()) for p in prunable_parameters(model).values())
        assert nonzero <= masking.num_active
        _train_steps(model, masking, opt)
        masking.rewire(0.3, torch.Generator().manual_seed(rewiring))


@pytest.mark.parametrize("regrow_pruned", [True, False])
def test_regrow_pruned_false_grows_only_channels_dead_before(regrow_pruned) -> None:
    model = _model("vgg16")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    masking = ChannelMasking(model, opt, density=0.2, regrow_pruned=regrow_pruned)
    _train_steps(model, masking, opt)
    old = {n: m.clone() for n, m in masking.masks.items()}
    stats = masking.rewire(0.3, torch.Generator().manual_seed(0))
    gone = {n: int((old[n] & ~masking.masks[n]).sum()) for n in old}
    if regrow_pruned:  # the pruned channels with the largest momentum come straight back
        assert sum(gone.values()) < sum(stats.lost.values())
    else:
        assert gone == stats.lost


def test_budget_below_one_channel_per_group_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="one channel per group"):
        ChannelMasking(_model("vgg16"), None, density=1e-4)
    cfg = load_config(None, tiny_overrides(sparsity__method="static", sparsity__density=1e-4))
    cfg.sparsity.granularity = "channel"
    with pytest.raises(ConfigError, match="raise sparsity.density"):
        dnr.train(cfg, "/nonexistent/never-written", **QUIET)


def test_channel_mode_needs_a_model_that_declares_groups_and_a_uniform_init(tmp_path) -> None:
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match="does not declare channel groups"):
        ChannelMasking(plain, None, density=0.5)
    overrides = tiny_overrides(
        sparsity__method="dnr", sparsity__granularity="channel", sparsity__init="erk"
    )
    with pytest.raises(ConfigError, match="init=uniform"):
        dnr.train(load_config(None, overrides), tmp_path / "r", show_progress=False, log=print)
    with pytest.raises(ConfigError, match="sparsity.granularity"):
        load_config(None, tiny_overrides(sparsity__granularity="filter"))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pruned_channels_are_exactly_zero_after_bn_and_relu(arch, mode) -> None:
    model = _model(arch)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    masking = ChannelMasking(model, opt, density=0.1)
    _train_steps(model, masking, opt)
    masking.rewire(0.3, torch.Generator().manual_seed(0))
    _train_steps(model, masking, opt)
    outputs: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [
        modules[g.norm].register_forward_hook(
            lambda _m, _i, out, name=g.producer: outputs.__setitem__(name, F.relu(out))
        )
        for g in channel_groups(model)
    ]
    model.train(mode == "train")
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    dead_total = 0
    for name, keep in masking.masks.items():
        dead = outputs[name][:, ~keep]
        dead_total += int((~keep).sum())
        assert torch.count_nonzero(dead) == 0, name
        assert torch.count_nonzero(outputs[name][:, keep]) > 0, name  # the kept ones live
    assert dead_total > 0


def _silence(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the BN scale/shift of the channels not in ``masks`` (what pruning does)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for g in channel_groups(model):
            bn = modules[g.norm]
            bn.weight[~masks[g.producer]] = 0.0
            bn.bias[~masks[g.producer]] = 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_regrowth_leaves_the_function_unchanged_and_the_eval_loss_does_not_jump(arch) -> None:
    model = _model(arch)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    masking = ChannelMasking(model, opt, density=0.15, redistribution=1.0)
    _train_steps(model, masking, opt, steps=6)
    gen = torch.Generator().manual_seed(5)
    x, y = torch.rand(64, 3, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    model.eval()
    with torch.no_grad():
        loss_before = F.cross_entropy(model(x), y).item()
    before = copy.deepcopy(model)
    old = {n: m.clone() for n, m in masking.masks.items()}
    stats = masking.rewire(0.3, torch.Generator().manual_seed(0))
    assert sum(stats.regrown.values()) > 0
    assert sum(stats.lost.values()) > 0
    born = {n: masking.masks[n] & ~old[n] for n in old}
    assert any(b.any() for b in born.values())
    # Only pruning changes the function: grown channels enter with zero consumer slices.
    _silence(before, {n: old[n] & masking.masks[n] for n in old})
    model.eval()
    with torch.no_grad():
        after = model(x)
        torch.testing.assert_close(after, before(x), rtol=0, atol=1e-5)
        loss_after = F.cross_entropy(after, y).item()
    assert loss_after == pytest.approx(loss_before, rel=0.25, abs=0.05)
    # grown channels start like a fresh layer: unit BN scale, zero shift, default-init filter
    modules = dict(model.named_modules())
    for g in channel_groups(model):
        idx = born[g.producer]
        if idx.any():
            assert torch.equal(modules[g.norm].weight[idx], torch.ones(int(idx.sum())))
            filters = modules[g.producer].weight[idx]
            assert 0 < filters.abs().max() <= 1 / modules[g.producer].weight[0].numel() ** 0.5


def _random_pattern(model: nn.Module, seed: int) -> dict[str, list[int]]:
    """Random kept channels per group; the first group is reduced to a single channel."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    kept = {}
    for i, g in enumerate(channel_groups(model)):
        size = modules[g.producer].out_channels
        k = 1 if i == 0 else int(torch.randint(1, size + 1, (1,), generator=gen))
        kept[g.producer] = sorted(torch.randperm(size, generator=gen)[:k].tolist())
    return kept


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compact_export_equals_the_masked_model(arch, seed, tmp_path) -> None:
    model = _model(arch, seed=seed)
    masking = ChannelMasking(model, None, density=1.0)
    pattern = _random_pattern(model, seed)
    masks = {n: torch.zeros(len(m), dtype=torch.bool) for n, m in masking.masks.items()}
    for name, idx in pattern.items():
        masks[name][idx] = True
    masking.adopt({"granularity": "channel", "masks": masks})
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        for _ in range(3):
            model(torch.rand(32, 3, 32, 32))
    model.eval()
    compact = compact_model(model, pattern)
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert (compact(x) - model(x)).abs().max() <= 1e-4
    modules = dict(compact.named_modules())
    for name, idx in pattern.items():
        assert modules[name].out_channels == len(idx)
    assert _compact_weights(compact) < _compact_weights(model)
    # saved, it loads from model.json alone: the widths come from its channel list
    save_model(tmp_path, compact, {"classes": list("0123456789")})
    arch_json = json.loads((tmp_path / "model.json").read_text())["architecture"]
    assert arch_json["channels"] == {n: len(i) for n, i in pattern.items()}
    reloaded = load_model(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), compact(x), rtol=0, atol=0)


def test_compact_export_rejects_patterns_that_do_not_fit() -> None:
    model = _model("vgg16")
    with pytest.raises(ValueError, match="no channel group"):
        compact_model(model, {"features.1": [0]})
    with pytest.raises(ValueError, match="distinct indices"):
        compact_model(model, {"features.0": []})
    with pytest.raises(ValueError, match="distinct indices"):
        compact_model(model, {"features.0": [0, 99]})


def test_channel_state_round_trips_and_refuses_weight_masks() -> None:
    model = _model("resnet18")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    masking = ChannelMasking(model, opt, density=0.2, generator=torch.Generator().manual_seed(3))
    _train_steps(model, masking, opt)
    masking.rewire(0.3, torch.Generator().manual_seed(0))
    state = masking.state_dict()
    other = ChannelMasking(_model("resnet18"), None, density=0.2)
    other.load_state_dict(state)
    assert other.kept_channels() == masking.kept_channels()
    assert other.num_active == masking.num_active
    weight_masks = dnr.sparsity.Masking(_model("resnet18"), None, density=0.2).state_dict()
    with pytest.raises(ValueError, match="weight-mode masks"):
        other.adopt(weight_masks)
    with pytest.raises(ValueError, match="channel-mode masks"):
        dnr.sparsity.Masking(_model("resnet18"), None, density=0.2).adopt(state)


@pytest.mark.slow
def test_channel_dnr_trains_records_its_channels_and_exports(tmp_path) -> None:
    overrides = tiny_overrides(
        sparsity__method="dnr",
        sparsity__granularity="channel",
        sparsity__density=0.3,
        sparsity__redistribution=1.0,
        model__width=0.125,
    )
    result = dnr.train(load_config(None, overrides), tmp_path, **QUIET)
    meta = json.loads((tmp_path / "model.json").read_text())
    sparsity = meta["sparsity"]
    assert sparsity["mode"] == "channel"
    assert sparsity["achieved_density"] <= 0.3
    model = load_model(tmp_path)
    compact = compact_model(model, sparsity["kept_channels"])
    assert _compact_weights(compact) == sparsity["num_active"]
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        assert (compact(x) - model(x)).abs().max() <= 1e-4
    records = metrics(tmp_path)
    assert any(r.get("rewire") for r in records)
    assert result.run_dir == tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_a_macs_budget_is_met_within_one_channel_and_counts_the_compacted_macs(arch) -> None:
    """``budget="macs"``: the density counts multiply-accumulates per image; the compacted
    network's MACs (measured by a forward pass, as ``dnr.costs`` counts them) stay within
    one channel's MACs below the budget, through rewirings too."""
    from dnr.costs import model_costs

    model = _model(arch)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    masking = ChannelMasking(model, opt, density=0.1, budget="macs", redistribution=1.0)
    layout = masking.layout
    dense = model_costs(model, 32)
    assert layout.total_cost == dense.macs
    assert layout.num_prunable == dense.params
    for rewiring in range(3):
        counts = masking.channel_counts()
        kept = model_costs(compact_model(model, masking.kept_channels()), 32).macs
        assert kept == layout.cost(counts) <= masking.target_active, rewiring
        assert masking.target_active - kept < _one_channel_budget(layout, counts)
        _train_steps(model, masking, opt)
        masking.rewire(0.3, torch.Generator().manual_seed(rewiring))
    stats = masking.extra_stats()
    assert stats["budget"] == "macs"
    assert stats["macs_density"] == pytest.approx(0.1, abs=0.01)


def test_a_macs_budget_prices_early_channels_a_weights_budget_finds_cheap() -> None:
    """In VGG the early, high-resolution layers hold few weights but many MACs: an
    allocation that favours them (as DNR's regrowth may) is cheap in weights and dear in
    MACs. A weights budget does not see it; a MACs budget pays for it."""
    weights = ChannelLayout(_model("vgg16"))
    macs = ChannelLayout(_model("vgg16"), budget="macs")
    early = [s if g < 4 else 1 for g, s in enumerate(weights.sizes)]  # first 4 groups full
    share = {
        unit: layout.cost(early) / layout.total_cost
        for unit, layout in (("w", weights), ("m", macs))
    }
    assert share["m"] > 5 * share["w"]
    first, last = 0, len(weights.sizes) - 1  # one more channel: early vs late
    ratio_w = weights.marginal(early, first) / weights.marginal(early, last)
    ratio_m = macs.marginal(early, first) / macs.marginal(early, last)
    assert ratio_m > 20 * ratio_w  # 32x32 positions against 2x2
    uniform = macs.uniform_counts(macs.target(0.1))  # and the budget holds d of the MACs
    assert macs.cost(uniform) / macs.total_cost == pytest.approx(0.1, abs=0.005)


def test_a_macs_budget_is_refused_outside_channel_mode_and_in_the_wrong_checkpoint() -> None:
    with pytest.raises(ConfigError, match="sparsity.budget=macs .*granularity=channel"):
        load_config(None, tiny_overrides(sparsity__method="dnr", sparsity__budget="macs"))
    with pytest.raises(ConfigError, match="sparsity.budget"):
        load_config(None, tiny_overrides(sparsity__budget="flops"))
    saved = ChannelMasking(_model("vgg16"), None, density=0.2, budget="macs").state_dict()
    with pytest.raises(ValueError, match="saved under a macs budget"):
        ChannelMasking(_model("vgg16"), None, density=0.2).load_state_dict(saved)
    with pytest.raises(ValueError, match="budget must be one of weights, macs"):
        ChannelLayout(_model("vgg16"), budget="flops")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dnr", "lasso"])
def test_a_macs_budget_reaches_the_mask_from_the_config(tmp_path, method) -> None:
    """``sparsity.budget=macs`` in a config reaches the masks: through the method's own
    masks (dnr) and through a staged method's fixed mask (lasso's cut)."""
    overrides = tiny_overrides(
        sparsity__method=method,
        sparsity__granularity="channel",
        sparsity__budget="macs",
        sparsity__density=0.2,
        sparsity__options="{lasso: {sparsify_epochs: 1}}",
        train__epochs=2,
    )
    dnr.train(load_config(None, overrides), tmp_path / "run", **QUIET)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())["sparsity"]
    assert meta["budget"] == "macs"
    assert 0.15 < meta["macs_density"] <= 0.2  # within one channel of the MACs budget
    assert abs(meta["achieved_density"] - meta["macs_density"]) > 1e-4  # not the weights'
