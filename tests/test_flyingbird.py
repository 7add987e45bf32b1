"""FlyingBird and FlyingBird+ as released (VITA-Group/Sparsity-Win-Robust-Generalization
@6e9a862): IGQ init, update schedule, full-batch growth signal, fixed layer counts, the
dynamic ratio, resume."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

import dnr
from dnr.config import ConfigError, load_config
from dnr.sparsity import Progress, build_sparsity
from dnr.sparsity.budgets import layer_budgets
from dnr.sparsity.flyingbird import RELEASE_STEPS, FlyingBird, rising_share, update_due
from dnr.sparsity.layers import prunable_parameters
from dnr.sparsity.rewiring import prune_counts
from helpers import QUIET, metrics, strip_timing, tiny_overrides


def _flyingbird(
    density: float = 0.2, **options
) -> tuple[torch.nn.Module, torch.optim.SGD, FlyingBird]:
    cfg = load_config(None, tiny_overrides(sparsity__method="flyingbird"))
    cfg.sparsity.density = density
    cfg.sparsity.options = {"flyingbird": dict(options)}
    torch.manual_seed(0)
    model = dnr.create_model("vgg16", num_classes=10, width=0.0625)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = build_sparsity(cfg, model, opt, torch.Generator().manual_seed(0))
    assert isinstance(method, FlyingBird)
    return model, opt, method


def _progress(steps_per_epoch: int, epochs: int) -> Progress:
    return Progress(
        step=0, epoch=0, epochs=epochs, steps_per_epoch=steps_per_epoch, log=lambda _: None
    )


def _step(model, opt, method, progress, n_images: int = 8, seed: int = 0) -> None:
    """One training step on ``n_images`` images, then the method's hook."""
    gen = torch.Generator().manual_seed(1000 + seed)
    x = torch.rand(n_images, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n_images,), generator=gen)
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    progress.step += 1
    progress.epoch = (progress.step - 1) // progress.steps_per_epoch
    method.after_step(progress)


# --------------------------------------------------------------------------- (a) IGQ init


def _release_igq_active(numels: list[int], density: float) -> list[int]:
    """The release's IGQ (sparselearning/igq.py): bisect the force until the overall
    sparsity is within 1/N of the target, then keep numel - int(sparsity_l · numel) per layer."""
    target, tol = 1.0 - density, 1.0 / sum(numels)
    lo, hi = 0.0, 1e20
    while True:
        force = (lo + hi) / 2
        kept = [n / (force * n + 1) for n in numels]
        sparsity = 1 - sum(kept) / sum(numels)
        if abs(sparsity - target) < tol:
            break
        lo, hi = (force, hi) if sparsity < target else (lo, force)
    return [n - int((1 - k / n) * n) for n, k in zip(numels, kept)]


def test_igq_densities_are_the_released_formula() -> None:
    # force f = 0.01: densities 1/2, 1/11, 1/101 of 100, 1000, 10000 weights
    numels = [100, 1000, 10000]
    total = 100 / 2 + 1000 / 11 + 10000 / 101
    assert layer_budgets(numels, total / sum(numels), "igq") == [50, 91, 99]
    model = dnr.create_model("vgg16", num_classes=10, width=0.25)
    sizes = [p.numel() for p in prunable_parameters(model).values()]
    for density in (0.05, 0.2):
        ours = layer_budgets(sizes, density, "igq")
        assert sum(ours) == round(density * sum(sizes))  # exact total
        release = _release_igq_active(sizes, density)
        assert all(abs(a - b) <= 1 for a, b in zip(ours, release)), (ours, release)
        by_size = sorted(zip(sizes, ours))  # small layers denser (up to one weight's rounding)
        assert all(k / n >= (k2 - 1) / n2 for (n, k), (n2, k2) in zip(by_size, by_size[1:]))
        dens = [k / n for n, k in by_size]
        assert dens[0] > 4 * density
        assert dens[-1] < density


def test_flyingbird_starts_from_igq_whatever_sparsity_init() -> None:
    _, _, fb = _flyingbird()
    assert fb.cfg.sparsity.init == "uniform"  # the config's (DNR's) setting ...
    m = fb.masking
    sizes = [math.prod(s) for s in m.layer_shapes.values()]
    assert list(m.layer_counts().values()) == layer_budgets(sizes, 0.2, "igq")  # ... unused
    dens = list(m.layer_densities().values())
    assert max(dens) > 0.8
    assert min(dens) < 0.2
    assert m.state_dict(masks=False)["init"] == "igq"
    _, _, uniform = _flyingbird(init="uniform")
    assert all(abs(d - 0.2) < 0.01 for d in uniform.masking.layer_densities().values())


# --------------------------------------------------------------------------- (c) schedule


def test_update_interval_and_death_rate_are_the_releases() -> None:
    _, _, fb = _flyingbird()
    release = _progress(352, 200)  # 45,000 images, batch 128, 200 epochs
    assert release.total_steps == RELEASE_STEPS == 70_400
    assert [fb.interval(e, release) for e in (0, 100, 101, 199)] == [900, 900, 1200, 1200]
    # the same number of updates as the release's `ite_step % update_frequency == 0`
    ours = [t for t in range(1, 70_401) if update_due(t, 352, lambda e: fb.interval(e, release))]
    theirs = [t for t in range(1, 70_401) if t % (900 if (t - 1) // 352 <= 100 else 1200) == 0]
    assert len(ours) == len(theirs) == 68
    # one of them falls on an epoch's last (partial, 72-image) batch: made one step later
    assert sorted(set(ours) ^ set(theirs)) == [52_800, 52_801]
    # a shorter run keeps the release's share: 24 epochs of 79 steps
    short = _progress(79, 24)
    assert (fb.interval(0, short), fb.interval(23, short)) == (24, 32)  # 900, 1200 · 1896/70400
    # explicit intervals
    _, _, fixed = _flyingbird(update_interval=50)
    assert (fixed.interval(0, short), fixed.interval(23, short)) == (50, 67)
    _, _, fixed = _flyingbird(update_interval=50, late_update_interval=80)
    assert (fixed.interval(0, short), fixed.interval(23, short)) == (50, 80)
    _, _, flat = _flyingbird(update_interval=50, dynamic_frequency=False)
    assert flat.interval(23, short) == 50
    # death rate: the release's CosineDecay(0.5, T, eta_min=0.005), stepped every iteration
    run = _progress(10, 10)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, run.total_steps, 0.005)
    for step in range(1, run.total_steps + 1):
        opt.step()  # (no gradient: the parameter stays; keeps the scheduler's order)
        cosine.step()
        run.step = step
        assert fb.death_rate(run) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
    run.step = 0
    assert fb.death_rate(run) == 0.5


def test_update_due_waits_for_a_full_batch_after_an_epochs_last_batch() -> None:
    def due(spe: int, interval: int, steps: int, per_batch: int = 1) -> list[int]:
        return [t for t in range(1, steps + 1) if update_due(t, spe, lambda _: interval, per_batch)]

    assert due(4, 4, 12) == [5, 9]  # 4, 8 and 12 end an epoch (12: the run)
    assert due(4, 3, 12) == [3, 6, 9]  # 12 ends the run
    assert due(8, 7, 16, per_batch=2) == [9, 14]  # free mode: the last batch is steps 7-8
    assert due(1, 1, 3) == [1, 2, 3]  # one batch per epoch: nothing to wait for


# --------------------------------------------------------------------------- (b) growth signal


def test_gradient_growth_reads_the_full_batch_after_a_partial_last_batch() -> None:
    model, opt, fb = _flyingbird(growth="gradient", update_interval=4)
    progress = _progress(4, 3)
    for i in range(3):
        _step(model, opt, fb, progress, seed=i)
    before = {n: m.clone() for n, m in fb.masking.masks.items()}
    _step(model, opt, fb, progress, n_images=2, seed=3)  # step 4: the epoch's partial batch
    assert all(torch.equal(fb.masking.masks[n], before[n]) for n in before)  # no update yet
    grads: dict[str, torch.Tensor] = {}
    params = prunable_parameters(model)
    real = fb.masking.move_

    def spy(*args, **kwargs):  # the gradient present when the update runs
        grads.update({n: p.grad.clone() for n, p in params.items()})
        return real(*args, **kwargs)

    fb.masking.move_ = spy  # type: ignore[method-assign]
    _step(model, opt, fb, progress, n_images=8, seed=4)  # step 5: a full batch
    assert len(fb._pending) == 1
    assert fb._pending[0]["step"] == 5
    assert grads  # the growth ranked by the gradient of step 5's 8 images:
    grown_any = False
    for name, old in before.items():
        new = fb.masking.masks[name]
        grown, still_off = new & ~old, ~old & ~new
        if grown.any() and still_off.any():
            grown_any = True
            g = grads[name].abs()
            assert g[grown].min() >= g[still_off].max()
    assert grown_any


def test_the_growth_gradient_is_the_full_batch_gradient() -> None:
    """The gradient read at an update is that of the step's whole batch, not a slice."""
    model, opt, fb = _flyingbird(growth="gradient", update_interval=2)
    progress = _progress(4, 3)
    _step(model, opt, fb, progress, seed=0)
    gen = torch.Generator().manual_seed(7)
    x, y = torch.rand(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    params = prunable_parameters(model)
    seen: dict[str, torch.Tensor] = {}
    real = fb.masking.move_

    def spy(*args, **kwargs):
        seen.update({n: p.grad.clone() for n, p in params.items()})
        return real(*args, **kwargs)

    fb.masking.move_ = spy  # type: ignore[method-assign]
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    full = {n: p.grad.clone() for n, p in params.items()}
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x[:2]), y[:2]).backward()
    part = {n: p.grad.clone() for n, p in params.items()}
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    progress.step, progress.epoch = 2, 0
    fb.after_step(progress)
    assert seen
    assert all(torch.equal(seen[n], full[n]) for n in full)
    assert not all(torch.equal(seen[n], part[n]) for n in part)


# --------------------------------------------------------------------------- (d) fixed counts


@pytest.mark.parametrize("growth", ["random", "gradient"])
def test_an_update_keeps_every_layer_count_and_masks_the_momentum(growth: str) -> None:
    model, opt, fb = _flyingbird(growth=growth, update_interval=3)
    counts = fb.masking.layer_counts()
    progress = _progress(5, 2)
    for i in range(3):
        old = {n: m.clone() for n, m in fb.masking.masks.items()}
        _step(model, opt, fb, progress, seed=i)
    (record,) = fb._pending
    assert record["step"] == 3
    assert record["prune_rate"] == fb.death_rate(progress)
    assert fb.masking.layer_counts() == counts
    nnz = torch.tensor(list(counts.values()))
    expected = dict(zip(counts, prune_counts(nnz, record["prune_rate"]).tolist()))
    assert record["lost"] == record["regrown"] == expected  # ceil(p · nnz) per layer
    for name, p in prunable_parameters(model).items():
        off = ~fb.masking.masks[name]
        assert not p[off].any()  # inactive weights are zero ...
        momentum = opt.state[p]["momentum_buffer"]
        assert not momentum[off].any()  # ... and so is their momentum
        grown = fb.masking.masks[name] & ~old[name]
        assert grown.any()
        assert not momentum[grown].any()


def test_a_dense_layer_is_left_alone() -> None:
    model, opt, fb = _flyingbird(density=1.0, update_interval=1)
    progress = _progress(3, 1)
    _step(model, opt, fb, progress)
    (record,) = fb._pending
    assert sum(record["lost"].values()) == sum(record["regrown"].values()) == 0
    assert all(bool(m.all()) for m in fb.masking.masks.values())


# --------------------------------------------------------------------------- (e) FlyingBird+


def test_rising_share_is_the_releases_ratio() -> None:
    assert rising_share([1.0, 2.0, 2.0, 1.0, 3.0], strict=True) == 0.5
    assert rising_share([1.0, 2.0, 2.0, 1.0, 3.0], strict=False) == 0.75
    assert rising_share([1.0], strict=True) is None


def _dynamic_run(gaps: list[float], losses: list[float]) -> tuple[FlyingBird, dict, dict]:
    """FlyingBird+ over 4 epochs of 4 steps, updates every 2, from the history given:
    epochs 0-1 (before dynamic_start, half the run), then the first update of epoch 2."""
    model, opt, fb = _flyingbird(dynamic=True, update_interval=2)
    progress = _progress(4, 4)
    for gap, loss in zip(gaps, losses):
        fb.observe(0.5 + gap, 0.5, loss)
    before = fb.masking.layer_counts()
    for i in range(8):  # updates after steps 2, 5 (4 ends epoch 0) and 6
        _step(model, opt, fb, progress, seed=i)
    assert [r["step"] for r in fb._pending] == [2, 5, 6]
    assert fb.masking.layer_counts() == before
    assert not any(r["extra_prune"] or r["extra_growth"] for r in fb._pending)
    fb._pending.clear()
    before = fb.masking.layer_counts()
    _step(model, opt, fb, progress, seed=8)  # step 9, epoch 2: the one due after step 8
    (record,) = fb._pending
    assert record["step"] == 9
    return fb, before, record


def test_flyingbird_plus_prunes_more_when_the_robust_gap_widens() -> None:
    fb, before, record = _dynamic_run([0.1, 0.2, 0.3], [2.0, 1.9, 1.8])  # gap up, loss down
    assert record["extra_prune"]
    assert not record["extra_growth"]
    nnz = torch.tensor(list(before.values()))
    rate = record["prune_rate"]
    r = dict(zip(before, prune_counts(nnz, rate).tolist()))
    e = dict(zip(before, prune_counts(nnz, rate * 0.4).tolist()))
    assert record["lost"] == {n: r[n] + e[n] for n in before}  # plain + 0.4 · rate · nnz
    assert record["regrown"] == r
    after = fb.masking.layer_counts()
    assert after == {n: before[n] - e[n] for n in before}
    assert fb.masking.num_active < sum(before.values())  # the density falls


def test_flyingbird_plus_grows_when_the_validation_loss_rises() -> None:
    fb, before, record = _dynamic_run([0.3, 0.2, 0.1], [1.8, 1.9, 2.0])  # gap down, loss up
    assert record["extra_growth"]
    assert not record["extra_prune"]
    r = record["lost"]
    assert record["regrown"] == {n: int(r[n] * 1.05) for n in before}
    assert fb.masking.num_active > sum(before.values())  # the density rises
    assert fb.masking.density() == fb.masking.num_active / fb.masking.num_prunable


def test_flyingbird_plus_reads_the_epoch_record_when_the_loop_passes_it() -> None:
    _, _, fb = _flyingbird(dynamic=True, val_signal="loss")
    lines: list[str] = []
    progress = Progress(step=4, epoch=0, epochs=4, steps_per_epoch=4, log=lines.append)
    assert fb.on_epoch_end(progress)["dynamic"] == {"observed": False}
    assert len(lines) == 1
    assert "Progress.metrics" in lines[0]
    # the loss (asked for) is not in the record: the PGD error stands in for it
    progress.metrics = {"train_adv_acc": 0.6, "val_pgd_acc": 0.4}  # type: ignore[attr-defined]
    out = fb.on_epoch_end(progress)["dynamic"]
    assert out == {
        "observed": True,
        "val_signal": "error",
        "gap": pytest.approx(0.2),
        "val_loss": 0.6,
    }
    progress.metrics = {**progress.metrics, "val_pgd_loss": 1.5}  # type: ignore[attr-defined]
    assert fb.on_epoch_end(progress)["dynamic"]["val_signal"] == "loss"
    assert fb.state_dict()["dynamic"] == {"gap": [pytest.approx(0.2)] * 2, "val_loss": [0.6, 1.5]}


# --------------------------------------------------------------------------- (f) resume


def test_state_dict_round_trip_resumes_exactly() -> None:
    model, opt, fb = _flyingbird(dynamic=True, update_interval=2)
    progress = _progress(4, 4)
    for gap, loss in zip([0.1, 0.2, 0.3], [1.8, 1.9, 2.0]):
        fb.observe(0.5 + gap, 0.5, loss)
    for i in range(10):
        _step(model, opt, fb, progress, seed=i)
    assert fb.masking.num_active != round(0.2 * fb.masking.num_prunable)  # drifted
    buf = io.BytesIO()
    torch.save(
        {"sparsity": fb.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()}, buf
    )
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2, opt2, fb2 = _flyingbird(dynamic=True, update_interval=2)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    fb2.load_state_dict(saved["sparsity"])
    assert fb2.state_dict()["pending_rewires"] == fb.state_dict()["pending_rewires"]
    assert fb2.state_dict()["dynamic"] == fb.state_dict()["dynamic"]
    assert fb2.masking.layer_counts() == fb.masking.layer_counts()
    progress2 = _progress(4, 4)
    progress2.step, progress2.epoch = progress.step, progress.epoch
    for i in range(10, 13):
        _step(model, opt, fb, progress, seed=i)
        _step(model2, opt2, fb2, progress2, seed=i)
    for name in fb.masking.masks:
        assert torch.equal(fb.masking.masks[name], fb2.masking.masks[name])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("{flyingbird: {death_rate: 0}}", "sparsity.options.flyingbird.death_rate: must be in"),
        ("{flyingbird: {update_interval: 0}}", "sparsity.options.flyingbird.update_interval"),
        ("{flyingbird: {growth: momentum}}", "sparsity.options.flyingbird.growth"),
        ("{flyingbird: {epoch_range: 0}}", "sparsity.options.flyingbird.epoch_range"),
        ("{flyingbird: {dynamic_start: 2}}", "sparsity.options.flyingbird.dynamic_start"),
        ("{flyingbird: {prune_rate: 0.2}}", "sparsity.options.flyingbird: no option prune_rate"),
    ],
)
def test_bad_options_are_config_errors_naming_the_key(options: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, tiny_overrides(sparsity__method="flyingbird", sparsity__options=options))


def test_flyingbird_plus_needs_a_validation_split() -> None:
    with pytest.raises(ConfigError, match="data.val_size must be > 0"):
        load_config(
            None,
            tiny_overrides(
                sparsity__method="flyingbird",
                sparsity__options="{flyingbird: {dynamic: true}}",
                data__val_size=0,
            ),
        )


@pytest.mark.slow
def test_a_run_interrupted_mid_epoch_resumes_to_the_same_bits(tmp_path, monkeypatch) -> None:
    import dnr.training.step as step_module
    from dnr.checkpoints import load_checkpoint
    from dnr.rundir import RunDir
    from dnr.training import train

    overrides = tiny_overrides(  # 4 steps an epoch, a step checkpoint every 2
        sparsity__method="flyingbird",
        sparsity__density=0.3,
        sparsity__options="{flyingbird: {dynamic: true, dynamic_start: 0}}",
        train__epochs=3,
        train__checkpoint_every=2,
        data__subset=128,
    )
    cfg = load_config(None, overrides)
    train(cfg, tmp_path / "straight", **QUIET)
    real, calls = step_module.hybrid_loss, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # inside epoch 2, after the step checkpoint of step 6
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(step_module, "hybrid_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", **QUIET)
    monkeypatch.setattr(step_module, "hybrid_loss", real)
    train(cfg, tmp_path / "resumed", resume=True, **QUIET)

    def records(run: str) -> list[dict]:
        # the LR of the epoch's first step, which a resumed epoch does not take, goes too
        return strip_timing(metrics(tmp_path / run), "lr_first")

    assert records("straight") == records("resumed")
    assert sum(len(r.get("rewire", [])) for r in records("straight")) > 0
    a, b = (load_checkpoint(RunDir(tmp_path / r).last_checkpoint) for r in ("straight", "resumed"))
    for name, mask in a["sparsity"]["masks"].items():
        assert torch.equal(mask, b["sparsity"]["masks"][name]), name
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
