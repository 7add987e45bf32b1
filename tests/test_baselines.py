"""The baselines DNR is compared with: their characteristic mechanics and an end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import dnr
from dnr.config import ConfigError, load_config
from dnr.export import export_run
from dnr.models.channels import channel_groups
from dnr.sparsity import Masking, Progress, build_sparsity
from dnr.sparsity.admm import project
from dnr.sparsity.layers import prunable_parameters
from dnr.sparsity.lwm import magnitude_masks
from helpers import QUIET, metrics, strip_timing, tiny_overrides


def test_magnitude_masks_keep_the_largest_weights_globally_or_per_layer() -> None:
    weights = {
        "a": torch.tensor([[0.1, -5.0], [0.3, 0.2]]),
        "b": torch.tensor([4.0, -0.05, 3.0, 0.0, 2.0, -1.0]),
    }
    glob = magnitude_masks(weights, 0.4, "global")  # 4 of 10: 5, 4, 3, 2
    assert glob["a"].tolist() == [[False, True], [False, False]]
    assert glob["b"].tolist() == [True, False, True, False, True, False]
    layer = magnitude_masks(weights, 0.4, "layer")  # 2 of 4 in a (1.6 -> 2), 2 of 6 in b
    assert layer["a"].tolist() == [[False, True], [True, False]]
    assert layer["b"].tolist() == [True, False, True, False, False, False]
    assert sum(int(m.sum()) for m in layer.values()) == 4


def _method(tiny_config, name: str, **options):
    cfg = tiny_config
    cfg.sparsity.method = name
    cfg.sparsity.density = 0.2
    cfg.sparsity.options = {name: dict(options)}
    torch.manual_seed(0)
    model = dnr.create_model("vgg16", num_classes=10, width=0.0625)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, opt, build_sparsity(cfg, model, opt, torch.Generator().manual_seed(0))


def _steps(model, opt, method, progress, n: int = 3) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(n):
        x, y = torch.rand(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        progress.step += 1
        method.after_step(progress)


@pytest.mark.slow
def test_lwm_stays_dense_then_prunes_by_magnitude_and_never_moves_its_mask(tiny_config) -> None:
    model, opt, lwm = _method(tiny_config, "lwm", pretrain_epochs=1)
    assert [s.name for s in lwm.stages()] == ["pretrain", "finetune"]
    progress = Progress(step=0, epoch=0, epochs=3, steps_per_epoch=3, log=lambda _m: None)
    _steps(model, opt, lwm, progress)
    assert lwm.density() == 1.0
    assert "masks" not in lwm.state_dict()
    weights = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    finetune = lwm.stages()[1]
    assert (finetune.lr, finetune.warmup) == (0.01, False)  # HYDRA's fine-tune recipe
    assert opt.state  # pretraining momentum ...
    lwm.begin_stage(finetune, progress)
    assert not opt.state  # ... dropped: a fine-tuning job starts fresh
    expected = magnitude_masks(weights, 0.2, "layer")  # the reference LWM: per layer
    assert lwm.masking is not None
    for name, mask in lwm.masking.masks.items():
        assert torch.equal(mask, expected[name])
        assert torch.equal(weights[name] * mask, prunable_parameters(model)[name].detach())
    before = {n: m.clone() for n, m in lwm.masking.masks.items()}
    for epoch in (1, 2):
        progress.epoch = epoch
        _steps(model, opt, lwm, progress)
        lwm.on_epoch_end(progress)
    for name, param in prunable_parameters(model).items():
        assert torch.equal(lwm.masking.masks[name], before[name])
        assert torch.count_nonzero(param.detach()[~before[name]]) == 0
    assert lwm.masking.num_active == round(0.2 * lwm.masking.num_prunable)


def test_admm_projects_onto_the_top_k_per_layer_and_accumulates_the_residual(tiny_config) -> None:
    x = torch.tensor([[0.5, -3.0, 0.1], [2.0, -0.2, 2.0]])
    assert project(x, 3).tolist() == [[0.0, -3.0, 0.0], [2.0, 0.0, 2.0]]  # ties: lower index
    model, opt, admm = _method(tiny_config, "admm", pretrain_epochs=1, admm_epochs=1, updates=3)
    stages = admm.stages()
    assert [(s.name, s.lr, s.warmup) for s in stages] == [
        ("pretrain", None, True),
        ("admm", 0.01, False),  # the release's ADMM and retrain LR, no warm-up
        ("finetune", 0.01, False),
    ]
    progress = Progress(
        step=3,
        epoch=1,
        epochs=3,
        steps_per_epoch=3,
        log=lambda _m: None,
        stage=stages[1],
        stage_start=1,
    )
    admm.begin_stage(stages[1], progress)
    assert admm.rho == 1e-3  # the release's start
    weights, budgets = admm._constrained()
    every = prunable_parameters(model)
    assert "classifier.weight" not in weights  # conv layers only, as the release
    dense = every["classifier.weight"].numel()
    assert sum(budgets.values()) + dense == round(0.2 * sum(w.numel() for w in every.values()))
    for name, z in admm.z.items():
        assert int(torch.count_nonzero(z)) == budgets[name]
        kept = weights[name].detach().abs()[z != 0]
        assert kept.min() >= weights[name].detach().abs()[z == 0].max()
    term = admm.loss_term(model)
    assert term is not None
    assert term.requires_grad
    assert float(term.detach()) > 0
    for update in range(1, 4):  # 3 updates over the stage's 3 steps: one per step
        u_before = {n: u.clone() for n, u in admm.u.items()}
        _steps(model, opt, admm, progress, n=1)
        assert admm.rho == pytest.approx(1e-3 * 1.3**update)
        for name, w in weights.items():
            assert int(torch.count_nonzero(admm.z[name])) <= budgets[name]
            torch.testing.assert_close(admm.u[name], u_before[name] + w.detach() - admm.z[name])
    admm.begin_stage(stages[2], progress)  # hard prune: each conv keeps its k_l, fc dense
    counts = admm.masking.layer_counts()
    assert counts["classifier.weight"] == dense
    assert {n: counts[n] for n in budgets} == budgets
    assert admm.masking.num_active == round(0.2 * admm.masking.num_prunable)
    assert admm.loss_term(model) is None


def test_admm_spaces_its_updates_over_the_whole_stage(tiny_config) -> None:
    _, _, admm = _method(tiny_config, "admm", pretrain_epochs=1, admm_epochs=1, updates=10)
    stage = admm.stages()[1]
    progress = Progress(step=0, epoch=1, epochs=3, steps_per_epoch=19, stage=stage, stage_start=1)
    due = []
    for done in range(1, 20):  # the stage's 19 steps
        progress.step = 19 + done
        if admm._update_due(progress):
            due.append(done)
    assert due == [2, 4, 6, 8, 10, 12, 14, 16, 18, 19]  # 10, spread to the end, none bunched


def test_admm_in_channel_mode_projects_and_prunes_whole_filters(tiny_config) -> None:
    tiny_config.sparsity.granularity = "channel"
    model, opt, admm = _method(tiny_config, "admm", pretrain_epochs=1, admm_epochs=1)
    progress = Progress(step=0, epoch=1, epochs=3, steps_per_epoch=3, log=lambda _m: None)
    admm.begin_stage(admm.stages()[1], progress)
    weights, budgets = admm._constrained()
    assert set(weights) == {f"{g.producer}.weight" for g in channel_groups(model)}
    for name, z in admm.z.items():  # whole filters: k_g nonzero rows, the largest-norm ones
        rows = z.flatten(1).ne(0).any(1)
        assert int(rows.sum()) == budgets[name]
        norms = weights[name].detach().flatten(1).norm(dim=1)
        assert norms[rows].min() >= norms[~rows].max()
    _steps(model, opt, admm, progress)
    admm.on_epoch_end(progress)
    admm.begin_stage(admm.stages()[2], progress)
    assert admm.granularity == "channel"
    assert admm.masking.channel_counts() == list(budgets.values())
    assert admm.masking.num_active <= admm.masking.target_active


def test_hydra_freezes_the_weights_trains_the_scores_and_masks_their_top_k(tiny_config) -> None:
    from dnr.sparsity.selection import top_k_mask

    model, opt, hydra = _method(tiny_config, "hydra", pretrain_epochs=1, prune_epochs=1)
    assert [s.name for s in hydra.stages()] == ["pretrain", "prune", "finetune"]
    progress = Progress(step=0, epoch=1, epochs=3, steps_per_epoch=3, log=lambda _m: None)
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    hydra.begin_stage(hydra.stages()[1], progress)
    weights = prunable_parameters(model)
    budgets = hydra.uniform_budgets(weights)
    for name, score in hydra.scores.items():  # initialised proportional to w (per layer)
        ratio = score.detach() / pretrained[name]
        assert torch.allclose(ratio[pretrained[name] != 0], ratio[pretrained[name] != 0][0])
    scores_before = {n: s.detach().clone() for n, s in hydra.scores.items()}
    _steps(model, opt, hydra, progress, n=4)
    moved = sum(float((hydra.scores[n].detach() - s).abs().sum()) for n, s in scores_before.items())
    assert moved > 0
    norms = {
        f"{n}.{p}"
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for p in ("weight", "bias")
    }
    for name, p in model.named_parameters():
        if name in hydra.scores:  # the frozen weight times the top-k of the current |scores|
            mask = top_k_mask(hydra.scores[name].abs(), budgets[name])
            assert int(mask.sum()) == budgets[name]
            assert torch.equal(p.detach(), pretrained[name] * mask)
        elif name in norms:  # BatchNorm trains in the prune stage, as in the release
            assert not torch.equal(p.detach(), pretrained[name]), name
        else:
            assert torch.equal(p.detach(), pretrained[name]), name  # the classifier's bias
    final = {n: top_k_mask(s.abs(), budgets[n]) for n, s in hydra.scores.items()}
    hydra.begin_stage(hydra.stages()[2], progress)
    assert hydra.masking is not None
    for name, mask in hydra.masking.masks.items():
        assert torch.equal(mask, final[name])
    assert hydra.masking.layer_counts() == budgets


def test_flyingbird_regrows_by_gradient_and_keeps_every_layer_budget() -> None:
    torch.manual_seed(0)
    model = dnr.create_model("vgg16", num_classes=10, width=0.0625)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    masking = Masking(
        model, opt, density=0.2, redistribution=0.0, grow_by="gradient", keep_regrown_values=False
    )
    counts = masking.layer_counts()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    masking.apply_()
    F.cross_entropy(model(x), y).backward()  # a gradient different from the momentum
    old = {n: m.clone() for n, m in masking.masks.items()}
    stats = masking.rewire(0.3)
    assert masking.layer_counts() == counts
    for name, param in prunable_parameters(model).items():
        grown = masking.masks[name] & ~old[name]
        candidates = ~old[name]
        if grown.any():  # the grown ones have the largest |grad| among the inactive ones
            g = param.grad.abs()
            assert g[grown].min() >= g[candidates & ~grown].max()
    assert sum(stats.regrown.values()) == sum(stats.lost.values()) > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "options", "stages"),
    [
        ("lwm", "{lwm: {pretrain_epochs: 1}}", ["pretrain", "finetune", "finetune"]),
        (
            "lwm",
            "{lwm: {pretrain_epochs: 1, scope: global}, admm: {rho: 1}}",  # admm's: unused
            ["pretrain", "finetune", "finetune"],
        ),
        ("flyingbird", "{}", ["train", "train", "train"]),
        (
            "lasso",
            "{lasso: {sparsify_epochs: 1, lam: 0.001}}",
            ["sparsify", "finetune", "finetune"],
        ),
        (
            "hydra",
            "{hydra: {pretrain_epochs: 1, prune_epochs: 1}}",
            ["pretrain", "prune", "finetune"],
        ),
        (
            "admm",
            "{admm: {pretrain_epochs: 1, admm_epochs: 1, rho: 0.1}}",
            ["pretrain", "admm", "finetune"],
        ),
    ],
)
def test_baselines_train_to_the_exact_density_and_export(tmp_path, method, options, stages) -> None:
    overrides = tiny_overrides(
        sparsity__method=method, sparsity__density=0.1, sparsity__options=options
    ) + (["sparsity.granularity=channel"] if method == "lasso" else [])
    cfg = load_config(None, overrides)
    result = dnr.train(cfg, tmp_path / "run", **QUIET)
    records = metrics(tmp_path / "run")
    assert [r.get("stage", "train") for r in records] == stages
    tuned = [r for r in records if r.get("stage") == "finetune"]
    if tuned:  # fine-tuning trained weights: its own LR from the first step, no warm-up
        assert tuned[0]["lr_first"] == pytest.approx(0.01)
        assert records[0]["lr_first"] < cfg.train.lr / 2  # the first stage warms up
    masking = result.sparsity.masking
    target = round(0.1 * masking.num_prunable)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["sparsity"]["method"] == method
    if method == "lasso":  # channels: within one channel
        assert meta["sparsity"]["mode"] == "channel"
        assert 0.9 * target < masking.num_active <= target
        export_run(tmp_path / "run", "compact", tmp_path / "compact")
    else:
        assert masking.num_active == target
    if method == "flyingbird":  # per-layer budgets never move
        first = records[0]["layer_density_init"]
        assert all(r["layer_density"] == first for r in records)
    export_run(tmp_path / "run", "sparse", tmp_path / "sparse")
    model = dnr.load_model(tmp_path / "sparse")
    nonzero = sum(int(torch.count_nonzero(p)) for p in prunable_parameters(model).values())
    assert nonzero <= meta["sparsity"]["num_active"]
    # the exported model evaluates exactly as the run's own, attack by attack, example by example
    options = {"protocol": "dnr", "progress": False, "sanity": False, "device": "cpu"}
    exported = dnr.evaluate_model(model, *_test_batch(), **options)
    own = dnr.evaluate_model(dnr.load_model(tmp_path / "run"), *_test_batch(), **options)
    assert [r.name for r in exported.results] == [r.name for r in own.results]
    for got, want in zip(exported.results, own.results, strict=True):
        assert torch.equal(got.correct, want.correct), got.name


def _test_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(16, 3, 32, 32, generator=gen) * 255).to(torch.uint8), torch.randint(
        0, 10, (16,), generator=gen
    )


def test_group_lasso_zeroes_the_channels_below_the_cut_by_proximal_steps(tiny_config) -> None:
    from dnr.sparsity.lasso import channel_scores, group_norms, strongest_channels

    tiny_config.sparsity.granularity = "channel"
    model, opt, lasso = _method(tiny_config, "lasso", sparsify_epochs=2)
    sparsify = lasso.stages()[0]
    progress = Progress(step=0, epoch=0, epochs=3, steps_per_epoch=2, log=lambda _m: None)
    progress.stage = sparsify  # 2 epochs of 2 steps: the ramp ends after step 3
    lasso.begin_stage(sparsify, progress)
    scores = channel_scores(model, lasso.layout)
    kept = strongest_channels(scores, lasso.layout.uniform_counts(lasso.target))
    assert [c.tolist() for c in lasso.cut] == [(~k).tolist() for k in kept]
    for score, k, c in zip(scores, kept, lasso.cut):  # per layer: its strongest are kept
        assert score[k].min() >= score[c].max()
    assert 0.5 < lasso.zero_target == sum(int((~k).sum()) for k in kept) / sum(map(len, kept))
    # paced: shrinking alone switches off every channel below the cut by the ramp's end
    below = torch.cat(scores)[torch.cat(lasso.cut)]
    assert lasso.threshold == pytest.approx(float(below.max()) / (0.75 * 4))
    assert lasso.loss_term(model) is None  # proximal: nothing in the loss
    before = torch.cat([n.clone() for n in group_norms(model, lasso.layout)])
    _steps(model, opt, lasso, progress, n=1)
    after, cut = torch.cat(group_norms(model, lasso.layout)), torch.cat(lasso.cut)
    assert (after[cut] < before[cut]).float().mean() > 0.9  # those below the cut shrink,
    assert lasso.zero_fraction() < lasso.zero_target  # not all at once
    _steps(model, opt, lasso, progress, n=2)  # past the ramp's end
    after = torch.cat(group_norms(model, lasso.layout))
    now = torch.cat(lasso.cut)  # re-decided at every step of so short a stage
    assert bool((after[now] <= 1e-8).all())
    assert bool((after[~now] > 1e-8).all())
    zero = lasso.zero_fraction()
    assert zero == int((after <= 1e-8).sum()) / len(after) == lasso.zero_target
    assert lasso.lam == pytest.approx(lasso.threshold / opt.param_groups[0]["lr"])
    record = lasso.on_epoch_end(progress)
    assert record["lasso"] == {
        "threshold": lasso.threshold,
        "lambda": lasso.lam,
        "zero_fraction": zero,
        "target": lasso.zero_target,
    }


def test_group_lasso_spares_the_kept_channels_and_revives_dead_ones(tiny_config) -> None:
    """The proximal step touches only its targets; a kept channel that is exactly zero at
    the cut (a zero channel gets no gradient) restarts from a fresh init."""
    from dnr.sparsity.lasso import channel_scores, revive_channels, shrink_groups

    tiny_config.sparsity.granularity = "channel"
    model, _opt, lasso = _method(tiny_config, "lasso", sparsify_epochs=1)
    rms = channel_scores(model, lasso.layout)
    targets = [torch.arange(len(r)) % 2 == 0 for r in rms]  # every other channel
    shrink_groups(model, lasso.layout, float(torch.cat(rms).max()) * 2, targets)
    after = channel_scores(model, lasso.layout)
    for r, a, t in zip(rms, after, targets):
        assert bool((a[t] == 0).all())
        assert torch.equal(a[~t], r[~t])
    kept = [torch.ones(len(r), dtype=torch.bool) for r in rms]
    kept[0][:] = False  # the first group is cut: it stays as it is
    bn = dict(model.named_modules())[lasso.layout.groups[1].norm]
    with torch.no_grad():  # zero filter and scale, live shift: still dead (β alone moves)
        bn.bias[0] = 0.3
    dead = sum(int(t.sum()) for t in targets[1:])
    assert revive_channels(model, lasso.layout, kept, torch.Generator().manual_seed(0)) == dead
    revived = channel_scores(model, lasso.layout)
    assert all(bool((r > 0).all()) for r in revived[1:])
    assert torch.equal(revived[0], after[0])


def _lasso_overrides(**extra: object) -> list[str]:
    return tiny_overrides(
        sparsity__method="lasso",
        sparsity__granularity="channel",
        sparsity__density=0.1,
        sparsity__options="{lasso: {sparsify_epochs: 2}}",
        train__epochs=3,
        **extra,
    )


@pytest.mark.slow
def test_lasso_reaches_its_zero_fraction_before_the_cut_and_keeps_live_channels(
    tmp_path,
) -> None:
    """The lasso only counts if it produces group sparsity: by the end of its sparsify stage
    the channels below the budget's cut are exactly zero; the cut keeps live channels only,
    and the network still learns (a uniform penalty this strong had left it at chance)."""
    from dnr.sparsity.lasso import channel_scores

    result = dnr.train(load_config(None, _lasso_overrides()), tmp_path / "run", **QUIET)
    records = metrics(tmp_path / "run")
    last = [r for r in records if r.get("stage") == "sparsify"][-1]["lasso"]
    assert last["zero_fraction"] >= last["target"] > 0.5
    method = result.sparsity
    for scores, name in zip(channel_scores(result.model, method.layout), method.layout.names):
        assert bool((scores[method.masking.masks[name]] > 0).all()), name
    assert records[-1]["train_loss"] < records[0]["train_loss"]


@pytest.mark.slow
def test_a_lasso_run_interrupted_mid_sparsify_resumes_to_the_same_bits(
    tmp_path, monkeypatch
) -> None:
    import dnr.sparsity.lasso as lasso_module
    import dnr.training.step as step_module
    from dnr.checkpoints import load_checkpoint
    from dnr.rundir import RunDir

    # the cut re-decided every 4 steps (at 0, 4, 8 of the 8-step stage) and zero by step 6
    # (the ramp's end): the steps after the resume from step 4 (5, 6) shrink with the
    # restored cut and threshold, not fresh ones
    monkeypatch.setattr(lasso_module, "RECUTS", 2)
    cfg = load_config(None, _lasso_overrides(train__checkpoint_every=2, data__subset=128))
    dnr.train(cfg, tmp_path / "straight", **QUIET)
    real, calls = step_module.hybrid_loss, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # inside epoch 2 (sparsify), after the checkpoint of step 4
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(step_module, "hybrid_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dnr.train(cfg, tmp_path / "resumed", **QUIET)
    monkeypatch.setattr(step_module, "hybrid_loss", real)
    dnr.train(cfg, tmp_path / "resumed", resume=True, **QUIET)
    # lr_first: the LR of the epoch's first step, which a resumed epoch does not take
    straight, resumed = (
        strip_timing(metrics(tmp_path / run), "lr_first") for run in ("straight", "resumed")
    )
    assert straight == resumed
    a, b = (load_checkpoint(RunDir(tmp_path / r).last_checkpoint) for r in ("straight", "resumed"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_method_options_are_checked() -> None:
    def load(method: str, options: str) -> None:
        load_config(None, tiny_overrides(sparsity__method=method, sparsity__options=options))

    with pytest.raises(ConfigError, match="sparsity.options.lwm: no option bogus"):
        load("lwm", "{lwm: {bogus: 1}}")
    with pytest.raises(ConfigError, match="sparsity.options.lwm: no option bogus"):
        load("dnr", "{lwm: {bogus: 1}}")  # every method's entry is checked (dnr compare)
    with pytest.raises(ConfigError, match="keys are method names"):
        load("lwm", "{pretrain_epochs: 1}")
    with pytest.raises(ConfigError, match="sparsity.options.lwm: .*no epoch to fine-tune"):
        load("lwm", "{lwm: {pretrain_epochs: 3}}")
    with pytest.raises(ConfigError, match="sparsity.options.lwm.pretrain_epochs: must be >= 0"):
        load("lwm", "{lwm: {pretrain_epochs: -1}}")
    with pytest.raises(ConfigError, match="sparsity.options.lwm.scope: 'all' is not allowed"):
        load("lwm", "{lwm: {scope: all}}")
    with pytest.raises(ConfigError, match="no epoch to fine-tune"):
        load("admm", "{admm: {admm_epochs: 3}}")
    with pytest.raises(ConfigError, match="sparsity.options.admm.rho_growth: must be > 0"):
        load("admm", "{admm: {rho_growth: 0}}")
    with pytest.raises(ConfigError, match="sparsity.method=lasso removes whole channels"):
        load("lasso", "{}")
    for method in ("lwm", "hydra", "flyingbird"):  # refused before any training
        with pytest.raises(ConfigError, match=f"sparsity.method={method} .*granularity"):
            load_config(
                None,
                tiny_overrides(sparsity__method=method, sparsity__granularity="channel"),
            )
    with pytest.raises(ConfigError, match="sparsity.options.dnr: no option x .it takes none"):
        load("dnr", "{dnr: {x: 1}}")
    load("dnr", "{lwm: {pretrain_epochs: 2}}")  # another method's valid options: fine


def test_dnr_paper_runs_the_papers_rewiring_whatever_the_config_says(tiny_config) -> None:
    from dnr.sparsity.dnr_paper import PAPER_REWIRING

    model, opt, method = _method(tiny_config, "dnr-paper")
    assert tiny_config.sparsity.prune_rate == 0.2  # the typed config keeps the tuned value
    s = method.cfg.sparsity
    assert {k: getattr(s, k) for k in PAPER_REWIRING} == PAPER_REWIRING
    m = method.masking.settings
    assert (m.redistribution, m.grow_momentum, m.keep_regrown_values) == (1.0, "keep", True)
    assert not m.protect_channels
    assert method.stats()["rewiring"]["prune_rate"] == 0.5
