"""The training loop: loss goes down, exact sparsity, artifacts, and exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import dnr.sparsity.rewirer as rewirer_module
import dnr.training.step as step_module
from dnr.checkpoints import load_checkpoint
from dnr.config import ConfigError, load_config
from dnr.data import load_dataset
from dnr.modelfile import load_model
from dnr.rundir import RunDir
from dnr.sparsity import build_sparsity
from dnr.sparsity.layers import prunable_parameters
from dnr.training import (
    RunExistsError,
    build_optimizer,
    hybrid_loss,
    learning_rate,
    model_for,
    schedule_warning,
    train,
)
from dnr.training.writer import RunWriter
from helpers import QUIET, assert_same_weights, metrics, strip_timing, tiny_overrides


@pytest.mark.slow
def test_dense_run_learns_and_writes_every_artifact(tmp_path) -> None:
    cfg = load_config(None, tiny_overrides(train__epochs=4, train__lr=0.05))
    result = train(cfg, tmp_path / "run", **QUIET)
    run = RunDir(tmp_path / "run")
    for path in (
        run.config,
        run.metrics,
        run.last_checkpoint,
        run.best_checkpoint,
        run.model_weights,
        run.model_meta,
    ):
        assert path.is_file(), path
    records = metrics(run.path)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert result.history == records  # the returned history is what metrics.jsonl holds
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    for r in records:
        assert {
            "lr",
            "train_loss",
            "train_clean_acc",
            "train_adv_acc",
            "val_clean_acc",
            "val_pgd_acc",
            "images_per_sec",
            "wall_seconds",
        } <= set(r)
        assert 0 <= r["val_pgd_acc"] <= r["val_clean_acc"] + 1e-9 <= 1 + 1e-9
    # The deployed model is the best epoch by validation PGD accuracy.
    best_epoch = max(records, key=lambda r: r["val_pgd_acc"])["epoch"]
    meta = json.loads(run.model_meta.read_text())
    assert meta["selection"]["epoch"] == best_epoch == result.best_epoch
    assert meta["architecture"]["name"] == "vgg16"
    assert meta["architecture"]["num_classes"] == 10
    # Checkpoints load without unpickling arbitrary objects and carry resume state.
    state = torch.load(run.last_checkpoint, weights_only=True)
    assert state["state"]["epochs_done"] == 4
    assert "momentum_buffer" in str(state["optimizer"]["state"][0].keys())


@pytest.mark.slow
def test_load_model_round_trip_identical_logits(tmp_path) -> None:
    cfg = load_config(None, tiny_overrides(train__epochs=1))
    result = train(cfg, tmp_path / "run", **QUIET)
    rebuilt = load_model(tmp_path / "run")
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(result.model.eval()(x), rebuilt(x))
    same = load_model(tmp_path / "run" / "model.json")
    with torch.no_grad():
        assert torch.equal(rebuilt(x), same(x))


@pytest.mark.slow
def test_dnr_run_holds_exact_budget_and_rewires(reference_dnr_run) -> None:
    run = RunDir(reference_dnr_run)  # dnr at density 0.1, 3 epochs (read only)
    masks = load_checkpoint(run.best_checkpoint)["sparsity"]["masks"]  # the deployed masks
    weights = load_file(str(run.model_weights))
    total = sum(weights[name].numel() for name in masks)
    nonzero = sum(int((weights[name] != 0).sum()) for name in masks)
    assert set(masks) == set(prunable_parameters(load_model(run.path)))  # every prunable weight
    # Active weights are exactly the budget; a few may be exactly 0 (regrown at 0 where the
    # gradient is 0, e.g. behind a dead channel), never more than the budget.
    assert round(0.1 * total) * 0.9 < nonzero <= round(0.1 * total)
    # Masked weights are exactly zero; active ones are the mask (a few may be exactly 0
    # only if they were just regrown, which does not happen in the best, pre-rewire model).
    for name, mask in masks.items():
        assert bool(mask.reshape(mask.shape[0], -1).any(1).all()), name  # no dead channel
        assert torch.count_nonzero(weights[name][~mask.cpu()]) == 0
    assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * total)
    records = metrics(run.path)
    assert all("layer_density" in r and "density" in r for r in records)
    assert all(r["density"] == pytest.approx(round(0.1 * total) / total, abs=0) for r in records)
    assert "rewire" in records[0]
    assert "rewire" not in records[-1]
    initial = records[0]["layer_density_init"]  # uniform initial masks
    assert all(abs(v - 0.1) < 0.01 for v in initial.values())
    assert "layer_density_init" not in records[1]
    densities = list(records[0]["layer_density"].values())
    assert max(densities) - min(densities) > 0.01  # budgets moved between layers
    meta = json.loads(run.model_meta.read_text())
    assert meta["sparsity"]["achieved_density"] == round(0.1 * total) / total


@pytest.mark.slow
@pytest.mark.parametrize(
    ("until", "every", "expected"),
    [
        (1.0, 0, [1, 1, 1, 0]),  # the paper: every epoch but the last
        (0.5, 0, [1, 0, 0, 0]),  # 24 steps, masks fixed from step 12: only epoch 1's end (step 6)
        (0.5, 2, [3, 2, 0, 0]),  # every 2 steps: steps 2, 4, 6, 8, 10
    ],
)
def test_masks_stay_fixed_after_rewire_until(tmp_path, until, every, expected) -> None:
    cfg = load_config(
        None,
        tiny_overrides(
            sparsity__method="dnr",
            train__epochs=4,
            sparsity__rewire_until=until,
            sparsity__rewire_every=every,
            sparsity__bn_refresh_batches=1,
        ),
    )
    train(cfg, tmp_path / "run", **QUIET)
    records = metrics(tmp_path / "run")
    assert [len(r.get("rewire", [])) for r in records] == expected
    rates = [w["prune_rate"] for r in records for w in r.get("rewire", [])]
    assert rates == sorted(rates, reverse=True)  # annealed over the rewiring window
    assert records[-1]["layer_density"] == records[-2]["layer_density"]


@pytest.mark.slow
def test_bn_refresh_runs_after_each_rewiring_with_the_configured_batches(
    tmp_path, monkeypatch
) -> None:
    calls: list[int] = []
    real = rewirer_module.refresh_batchnorm_stats

    def spy(model, batches):
        used = real(model, batches)
        calls.append(used)
        return used

    monkeypatch.setattr(rewirer_module, "refresh_batchnorm_stats", spy)
    cfg = load_config(
        None,
        tiny_overrides(
            sparsity__method="dnr",
            train__epochs=3,
            sparsity__rewire_until=1.0,
            sparsity__bn_refresh_batches=3,
        ),
    )
    train(cfg, tmp_path / "on", **QUIET)
    assert calls == [3, 3]  # after each of the two rewirings, three batches each
    calls.clear()
    off = load_config(
        None,
        tiny_overrides(sparsity__method="dnr", train__epochs=3, sparsity__bn_refresh_batches=0),
    )
    train(off, tmp_path / "off", **QUIET)
    assert calls == []


@pytest.mark.slow
def test_static_run_keeps_its_initial_mask(tmp_path) -> None:
    cfg = load_config(None, tiny_overrides(sparsity__method="static", train__epochs=2))
    result = train(cfg, tmp_path / "a", **QUIET)
    model = model_for(cfg, load_dataset(cfg.data))
    initial = build_sparsity(cfg, model, build_optimizer(cfg, model), _mask_generator(cfg))
    for name, mask in initial.masking.masks.items():
        assert torch.equal(mask, result.sparsity.masking.masks[name].cpu()), name
    records = metrics(tmp_path / "a")
    assert "rewire" not in records[0]
    assert records[0]["layer_density"] == records[-1]["layer_density"]


def _interrupt_after(monkeypatch, calls: int) -> None:
    """Make the training attack raise KeyboardInterrupt on its ``calls``-th use."""
    real_pgd = step_module.pgd
    counter = {"n": 0}

    def flaky_pgd(*args, **kwargs):
        counter["n"] += 1
        if counter["n"] == calls:
            raise KeyboardInterrupt
        return real_pgd(*args, **kwargs)

    monkeypatch.setattr(step_module, "pgd", flaky_pgd)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "granularity"), [("dense", "weight"), ("dnr", "weight"), ("dnr", "channel")]
)
def test_interrupted_run_resumes_to_the_same_result(
    tmp_path, monkeypatch, method, granularity
) -> None:
    overrides = tiny_overrides(
        sparsity__method=method,
        sparsity__granularity=granularity,
        sparsity__density=0.3,
        sparsity__redistribution=1.0,
        train__epochs=3,
        data__subset=128,
    )
    cfg = load_config(None, overrides)
    train(cfg, tmp_path / "straight", **QUIET)

    batches_per_epoch = math.ceil(128 / 32)
    _interrupt_after(monkeypatch, batches_per_epoch + 2)  # in the middle of epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", **QUIET)
    assert len(metrics(tmp_path / "resumed")) == 1
    monkeypatch.undo()
    with pytest.raises(RunExistsError):
        train(cfg, tmp_path / "resumed", **QUIET)
    train(cfg, tmp_path / "resumed", resume=True, **QUIET)

    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    assert strip_timing(metrics(tmp_path / "straight")) == strip_timing(
        metrics(tmp_path / "resumed")
    )
    last_a = load_checkpoint(RunDir(tmp_path / "straight").last_checkpoint)
    last_b = load_checkpoint(RunDir(tmp_path / "resumed").last_checkpoint)
    for key, value in last_a["model"].items():
        assert torch.equal(value, last_b["model"][key])


@pytest.mark.slow
def test_resume_refuses_a_different_config(tmp_path) -> None:
    cfg = load_config(None, tiny_overrides(train__epochs=1))
    train(cfg, tmp_path / "run", **QUIET)
    other = load_config(None, tiny_overrides(train__epochs=1, train__lr=0.2))
    with pytest.raises(ConfigError, match="configuration differs"):
        train(other, tmp_path / "run", resume=True, **QUIET)


@pytest.mark.slow
def test_resume_before_the_first_checkpoint_starts_the_run_from_the_beginning(
    tmp_path, capsys
) -> None:
    # a requeue loop passes --resume every time: also to a run killed before its first
    # checkpoint (only config.yaml and an epoch's metrics line written) and to a new one
    cfg = load_config(None, tiny_overrides(train__epochs=1))
    train(cfg, tmp_path / "fresh", **QUIET)
    early = RunWriter(tmp_path / "early")
    early.start(cfg)
    early.append_metrics({"epoch": 1, "train_loss": 9.0})
    train(cfg, tmp_path / "early", resume=True, **QUIET)
    said = capsys.readouterr().err  # on stderr, also with --quiet: it is about the files
    assert "early holds no checkpoint yet: starting the run afresh" in said
    assert_same_weights(tmp_path / "fresh", tmp_path / "early")
    assert len(metrics(tmp_path / "early")) == 1  # the stale line is gone
    train(cfg, tmp_path / "new", resume=True, **QUIET)
    assert_same_weights(tmp_path / "fresh", tmp_path / "new")
    other = load_config(None, tiny_overrides(train__epochs=1, train__lr=0.2))
    RunWriter(tmp_path / "other").start(other)
    with pytest.raises(ConfigError, match=r"configuration differs .*train\.lr"):
        train(cfg, tmp_path / "other", resume=True, **QUIET)


@pytest.mark.slow
def test_bf16_training_runs_its_passes_in_bf16_and_keeps_the_model_fp32(
    tmp_path, monkeypatch
) -> None:
    dtypes: list[torch.dtype] = []
    real = step_module.hybrid_loss

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        dtypes.extend(t.dtype for t in (out.logits_clean, out.logits_adv) if t is not None)
        return out

    monkeypatch.setattr(step_module, "hybrid_loss", spy)
    cfg = load_config(None, tiny_overrides(train__epochs=1, train__bf16=True))
    result = train(cfg, tmp_path / "run", **QUIET)
    # every training forward pass (clean and adversarial, 6 steps) ran in bf16 ...
    assert dtypes == [torch.bfloat16] * 12
    # ... while the weights, in memory and on disk, stayed fp32
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}
    saved = load_file(str(RunDir(tmp_path / "run").model_weights))
    assert {w.dtype for w in saved.values() if w.is_floating_point()} == {torch.float32}
    assert math.isfinite(metrics(tmp_path / "run")[0]["train_loss"])


def test_learning_rate_schedules() -> None:
    cfg = load_config(None, ["train.epochs=200", "train.warmup_epochs=0"])
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 99.9) == pytest.approx(0.1)
    assert learning_rate(cfg, 100) == pytest.approx(0.01)
    assert learning_rate(cfg, 150.5) == pytest.approx(0.001)
    cos = load_config(None, ["train.epochs=10", "train.schedule=cosine", "train.warmup_epochs=0"])
    assert learning_rate(cos, 0) == pytest.approx(0.1)
    assert learning_rate(cos, 5) == pytest.approx(0.05)
    assert learning_rate(cos, 10) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("epochs", [3, 8, 200])
def test_fractional_milestones_decay_at_the_same_point_of_any_run(epochs: int) -> None:
    cfg = load_config(None, [f"train.epochs={epochs}", "train.warmup_epochs=0"])
    assert cfg.train.milestones == [0.5, 0.75]
    assert learning_rate(cfg, 0.5 * epochs - 0.01) == pytest.approx(0.1)
    assert learning_rate(cfg, 0.5 * epochs) == pytest.approx(0.01)
    assert learning_rate(cfg, 0.75 * epochs) == pytest.approx(0.001)
    assert schedule_warning(cfg) is None


def test_absolute_milestones_still_work_inside_the_run_and_are_rejected_outside() -> None:
    cfg = load_config(
        None, ["train.epochs=10", "train.milestones=[4, 8.0]", "train.warmup_epochs=0"]
    )
    assert learning_rate(cfg, 3.9) == pytest.approx(0.1)
    assert learning_rate(cfg, 4) == pytest.approx(0.01)
    assert learning_rate(cfg, 8) == pytest.approx(0.001)
    one = load_config(None, ["train.epochs=10", "train.milestones=[1]", "train.warmup_epochs=0"])
    assert learning_rate(one, 0.99) == pytest.approx(0.1)  # 1 is epoch 1, not "the end"
    assert learning_rate(one, 1.0) == pytest.approx(0.01)
    # A cosine schedule does not read milestones, so old absolute ones do not stop it.
    assert (
        load_config(
            None, ["train.epochs=3", "train.schedule=cosine", "train.milestones=[100, 150]"]
        ).train.schedule
        == "cosine"
    )
    full = load_config(None, ["train.epochs=2", "train.warmup_epochs=2", "train.schedule=cosine"])
    assert learning_rate(full, 1.0, 0.5) == pytest.approx(0.05 * 0.75)
    with pytest.raises(ConfigError, match="train.milestones: 100 .*3-epoch run"):
        load_config(None, ["train.milestones=[100, 150]", "train.epochs=3"])
    # Overrides in any order: the check runs once all of them are applied.
    assert load_config(None, ["train.epochs=300", "train.milestones=[100, 150]"])


def test_linear_warmup_counts_the_current_step() -> None:
    cfg = load_config(None, ["train.epochs=10", "train.schedule=cosine", "train.warmup_epochs=0.5"])
    step = 1 / 20  # 20 steps per epoch
    assert learning_rate(cfg, 0, step) == pytest.approx(0.1 * 0.1, rel=1e-3)  # 1st of 10 steps
    assert learning_rate(cfg, 0.2, step) == pytest.approx(0.1 * 0.5, rel=1e-2)
    assert learning_rate(cfg, 0.45, step) == pytest.approx(learning_rate(cfg, 0.45) / 0.9)
    no_warmup = load_config(
        None, ["train.epochs=10", "train.schedule=cosine", "train.warmup_epochs=0"]
    )
    assert learning_rate(cfg, 0.5, step) == pytest.approx(learning_rate(no_warmup, 0.5))
    with pytest.raises(ConfigError, match="warmup_epochs"):
        load_config(None, ["train.epochs=2", "train.warmup_epochs=3"])


def test_a_stage_sets_its_own_peak_lr_and_whether_it_warms_up() -> None:
    cfg = load_config(None, ["train.epochs=10", "train.schedule=cosine", "train.warmup_epochs=1"])
    step = 1 / 20
    # a fine-tune stage: its own peak, no warm-up, the schedule over the stage's 4 epochs
    assert learning_rate(cfg, 0, step, 4, peak=0.01, warmup=False) == pytest.approx(0.01)
    assert learning_rate(cfg, 2, step, 4, peak=0.01, warmup=False) == pytest.approx(0.005)
    # the default stage: train.lr, warmed up
    assert learning_rate(cfg, 0, step, 4) == pytest.approx(0.1 / 20)


@pytest.mark.slow
def test_dnr_without_any_rewiring_inside_the_window_is_warned_about(tmp_path) -> None:
    cfg = load_config(
        None, tiny_overrides(sparsity__method="dnr", train__epochs=2, sparsity__rewire_until=0.4)
    )
    lines: list[str] = []
    train(cfg, tmp_path / "run", show_progress=False, log=lambda e: lines.append(str(e)))
    assert any("no rewiring falls before sparsity.rewire_until=0.4" in line for line in lines)
    assert all("rewire" not in r for r in metrics(tmp_path / "run"))


@pytest.mark.slow
def test_resume_names_the_keys_that_differ(tmp_path) -> None:
    cfg = load_config(None, tiny_overrides(train__epochs=1))
    train(cfg, tmp_path / "run", **QUIET)
    state = load_checkpoint(RunDir(tmp_path / "run").last_checkpoint)
    del state["config"]["sparsity"]["redistribution"]  # as saved by an older version
    from dnr.checkpoints import save_checkpoint

    save_checkpoint(RunDir(tmp_path / "run").last_checkpoint, state)
    other = load_config(None, tiny_overrides(train__epochs=2))
    with pytest.raises(
        ConfigError,
        match=r"differs in sparsity.redistribution is new since "
        r"that run started, train.epochs",
    ):
        train(other, tmp_path / "run", resume=True, **QUIET)


@pytest.mark.slow
def test_a_schedule_that_never_decays_is_warned_about(tmp_path) -> None:
    cfg = load_config(
        None, tiny_overrides(train__schedule="multistep", train__gamma=1.0, train__epochs=1)
    )
    assert "never decays" in schedule_warning(cfg)
    lines: list[str] = []
    train(cfg, tmp_path / "run", show_progress=False, log=lambda e: lines.append(str(e)))
    assert any(line.startswith("warning: the learning rate never decays") for line in lines)


def test_without_attack_the_loss_is_plain_cross_entropy() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    expected = torch.nn.functional.cross_entropy(model(x), y)
    for beta in (0.0, 0.5, 1.0):
        out = hybrid_loss(model, x, None, y, beta)
        assert torch.allclose(out.loss, expected)
        assert out.logits_adv is None
    x_adv = x.flip(0)
    out = hybrid_loss(model, x, x_adv, y, 0.25)
    mixed = 0.25 * expected + 0.75 * torch.nn.functional.cross_entropy(model(x_adv), y)
    assert torch.allclose(out.loss, mixed)


def test_importing_the_training_package_does_not_shadow_dnr_train() -> None:
    import dnr

    first = dnr.train
    import dnr.training  # the subpackage becomes an attribute of dnr; train must stay

    assert callable(dnr.train)
    assert dnr.train is first is dnr.training.train


def _mask_generator(cfg):
    from dnr.seeding import derive_seed

    return torch.Generator().manual_seed(derive_seed(cfg.train.seed, "masks"))


@pytest.mark.slow
def test_validation_pgd_can_be_stronger_than_the_training_attack(monkeypatch, tmp_path) -> None:
    import dnr
    import dnr.training.loop as loop_module

    seen: list[tuple[int, float]] = []
    real = loop_module.pgd_accuracy

    def spy(*args, **kwargs):
        seen.append((kwargs["steps"], kwargs["step_size"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "pgd_accuracy", spy)
    cfg = load_config(None, tiny_overrides(train__epochs=1, attack__steps=1, attack__val_steps=10))
    dnr.train(cfg, tmp_path / "run", **QUIET)
    assert seen == [(10, pytest.approx(2.5 * cfg.attack.eps / 10))]
    with pytest.raises(ConfigError, match="attack.val_steps: must be >= 1"):
        load_config(None, ["attack.val_steps=0"])
