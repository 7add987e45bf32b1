"""Sparsity methods as plug-ins: a toy method from outside the package trains through
``dnr.train``; the built-ins keep their contracts; ``train.init_from`` starts from a run."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dnr.checkpoints import load_checkpoint
from dnr.config import ConfigError, load_config
from dnr.data import load_dataset
from dnr.registry import SPARSITY_METHODS
from dnr.rundir import RunDir
from dnr.sparsity import (
    Progress,
    SparsityMethod,
    Stage,
    build_sparsity,
    list_methods,
    register_method,
)
from dnr.training import build_optimizer, model_for, stage_plan, train, train_step
from helpers import QUIET, tiny_overrides


class FrozenFirstLayer(SparsityMethod):
    """A toy: two stages; in the second, the first conv's weights are held at zero and an
    L1 term is added to the loss. Counts every hook call."""

    name = "toy-frozen-first"
    description = "test-only"
    granularities = ("weight",)

    def __init__(self, cfg, model, optimizer, generator) -> None:
        super().__init__(cfg, model, optimizer, generator)
        self.first = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).weight
        self.calls = {"begin_stage": [], "loss_term": 0, "after_step": 0, "on_epoch_end": 0}
        self.frozen = False

    def stages(self) -> list[Stage]:
        return [Stage("warm", 1), Stage("frozen", self.cfg.train.epochs - 1)]

    def begin_stage(self, stage: Stage, progress: Progress) -> None:
        self.calls["begin_stage"].append((stage.name, progress.epoch))
        self.frozen = stage.name == "frozen"

    def loss_term(self, model: nn.Module) -> torch.Tensor | None:
        self.calls["loss_term"] += 1
        return 1e-4 * self.first.abs().sum() if self.frozen else None

    def after_step(self, progress: Progress) -> None:
        self.calls["after_step"] += 1
        if self.frozen:
            with torch.no_grad():
                self.first.zero_()

    def on_epoch_end(self, progress: Progress) -> dict[str, Any]:
        self.calls["on_epoch_end"] += 1
        return {"toy_first_layer_norm": float(self.first.detach().abs().sum())}

    def stats(self) -> dict[str, Any]:
        n = sum(p.numel() for p in self.model.parameters() if p.dim() > 1)
        active = n - (self.first.numel() if self.frozen else 0)
        return {"target_density": 1.0, "achieved_density": active / n}

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.name, "frozen": self.frozen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.frozen = bool(state["frozen"])


@pytest.fixture
def toy_method():
    register_method(FrozenFirstLayer)
    try:
        yield FrozenFirstLayer
    finally:
        SPARSITY_METHODS.unregister(FrozenFirstLayer.name)


@pytest.mark.slow
def test_a_method_registered_outside_the_package_trains_through_dnr_train(
    tmp_path, toy_method, monkeypatch
) -> None:
    built: list[FrozenFirstLayer] = []
    real_init = toy_method.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(toy_method, "__init__", spy)
    assert "toy-frozen-first" in list_methods()
    cfg = load_config(
        None, tiny_overrides(sparsity__method="toy-frozen-first", train__epochs=3, data__subset=128)
    )
    lines: list[str] = []
    result = train(cfg, tmp_path / "run", show_progress=False, log=lambda e: lines.append(str(e)))

    (method,) = built
    steps = result.history[-1]["step"]
    assert steps == 3 * result.history[0]["step"] > 0
    assert method.calls["begin_stage"] == [("warm", 0), ("frozen", 1)]
    assert method.calls["loss_term"] == method.calls["after_step"] == steps
    assert method.calls["on_epoch_end"] == 3
    assert any(line.startswith("stage frozen: epochs 2-3") for line in lines)
    records = [json.loads(x) for x in RunDir(tmp_path / "run").metrics.read_text().splitlines()]
    assert [r["stage"] for r in records] == ["warm", "frozen", "frozen"]
    assert records[0]["toy_first_layer_norm"] > 0 == records[-1]["toy_first_layer_norm"]
    weights = load_file(str(RunDir(tmp_path / "run").model_weights))
    first = next(k for k, v in weights.items() if v.dim() == 4)
    assert result.best_epoch > 1  # selected in the last stage, never the warm-up epoch
    assert weights[first].abs().sum() == 0
    meta = json.loads(RunDir(tmp_path / "run").model_meta.read_text())
    assert meta["sparsity"]["method"] == "toy-frozen-first"
    assert meta["sparsity"]["mode"] == "weight"
    state = load_checkpoint(RunDir(tmp_path / "run").last_checkpoint)
    assert state["sparsity"] == {"method": "toy-frozen-first", "frozen": True}


def test_stages_must_cover_the_run() -> None:
    plan = stage_plan([Stage("a", 1), Stage("b", 2)], 3)
    assert [(s.name, start) for s, start in plan] == [("a", 0), ("b", 1), ("b", 1)]
    with pytest.raises(ConfigError, match="add up to train.epochs=4"):
        stage_plan([Stage("a", 1), Stage("b", 2)], 4)
    with pytest.raises(ConfigError, match=">= 1"):
        stage_plan([Stage("a", 0), Stage("b", 3)], 3)


def test_an_unknown_method_is_a_config_error_listing_the_registered_ones() -> None:
    with pytest.raises(
        ConfigError,
        match="choose one of admm, dense, dnr, dnr-paper, flyingbird, hydra, lasso, lwm, static",
    ):
        load_config(None, ["sparsity.method=magic"])


def test_registering_a_non_method_is_refused() -> None:
    with pytest.raises(TypeError):
        register_method(dict)  # type: ignore[arg-type]


def _built(cfg):
    model = model_for(cfg, load_dataset(cfg.data))
    optimizer = build_optimizer(cfg, model)
    return model, optimizer, build_sparsity(cfg, model, optimizer, torch.Generator().manual_seed(0))


def test_static_method_never_moves_its_mask(tiny_config) -> None:
    tiny_config.sparsity.method = "static"
    model, optimizer, method = _built(tiny_config)
    before = {n: m.clone() for n, m in method.masking.masks.items()}
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    progress = Progress(step=0, epoch=0, epochs=3, steps_per_epoch=2)
    for epoch in range(3):
        progress.epoch = epoch
        for _ in range(2):
            train_step(model, optimizer, x, y, tiny_config, method, progress)
        record = method.on_epoch_end(progress)
        assert "rewire" not in record
        assert record["density"] == record["density_after_rewire"]
    assert progress.step == 6
    params = dict(model.named_parameters())
    for name, mask in before.items():
        assert torch.equal(method.masking.masks[name], mask)
        assert torch.count_nonzero(params[name][~mask]) == 0  # after_step re-applied the mask


def test_train_step_is_one_sgd_step_with_the_hybrid_loss(tiny_config) -> None:
    tiny_config.attack.steps = 0  # no attack: plain cross-entropy, easy to reproduce
    model, optimizer, method = _built(tiny_config)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    model.train()
    expected = nn.functional.cross_entropy(model(x), y).item()
    before = [p.detach().clone() for p in model.parameters()]
    progress = Progress(step=5, epoch=0, epochs=1, steps_per_epoch=10)
    out = train_step(model, optimizer, x, y, tiny_config, method, progress)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.logits_adv is None
    assert progress.step == 6
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.slow
def test_init_from_takes_weights_and_optionally_masks(tmp_path) -> None:
    base = tiny_overrides(sparsity__method="static", train__epochs=1, data__subset=128)
    source = train(load_config(None, base), tmp_path / "src", **QUIET)
    src_masks = {n: m.cpu() for n, m in source.sparsity.masking.masks.items()}

    src_weights = load_file(str(RunDir(tmp_path / "src").model_weights))

    # masks asked for: the new run (static, another seed) keeps the source's masks, and its
    # weights (vanishing learning rate) are the source's, none lost to the run's own masks
    cfg = load_config(
        None,
        [
            *base,
            f"train.init_from={tmp_path / 'src'}",
            "train.init_masks=true",
            "train.seed=7",
            "train.lr=1e-9",
        ],
    )
    result = train(cfg, tmp_path / "b", **QUIET)
    for name, mask in src_masks.items():
        assert torch.equal(result.sparsity.masking.masks[name].cpu(), mask), name
        kept = dict(result.model.named_parameters())[name].detach()
        assert torch.count_nonzero(kept) == torch.count_nonzero(src_weights[name]) > 0, name
        assert torch.allclose(kept, src_weights[name], atol=1e-6), name
    records = [json.loads(x) for x in RunDir(tmp_path / "b").metrics.read_text().splitlines()]
    assert records[0]["layer_density_init"] == records[0]["layer_density"]  # the adopted masks
    meta = json.loads(RunDir(tmp_path / "b").model_meta.read_text())
    assert meta["training"]["init_from"] == str(tmp_path / "src")

    # weights only, through dnr.train: with a vanishing learning rate the trained weights are
    # the source's (a fresh init would differ everywhere)
    cfg = load_config(
        None,
        [*base, "sparsity.method=dense", f"train.init_from={tmp_path / 'src'}", "train.lr=1e-9"],
    )
    result = train(cfg, tmp_path / "c", **QUIET)
    params = dict(result.model.named_parameters())
    for name, value in params.items():
        assert torch.allclose(value.detach(), src_weights[name], atol=1e-6), name
    fresh = model_for(cfg, load_dataset(cfg.data))
    assert not torch.allclose(dict(fresh.named_parameters())[name], src_weights[name])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["model.width=0.125"], "architecture differs in width"),
        (["sparsity.density=0.2", "train.init_masks=true"], "do not fit"),
        (["train.init_masks=true", "sparsity.method=dense"], "has no masks to take"),
    ],
)
def test_init_from_mismatches_are_config_errors(tmp_path, extra, message) -> None:
    base = tiny_overrides(sparsity__method="static", train__epochs=1, data__subset=96)
    train(load_config(None, base), tmp_path / "src", **QUIET)
    cfg = load_config(None, [*base, f"train.init_from={tmp_path / 'src'}", *extra])
    with pytest.raises(ConfigError, match=message):
        train(cfg, tmp_path / "b", **QUIET)


def test_init_from_a_missing_run_and_masks_without_a_source_are_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="needs train.init_from"):
        load_config(None, ["train.init_masks=true"])
    cfg = load_config(None, tiny_overrides(train__init_from=str(tmp_path / "nothing")))
    with pytest.raises(ConfigError, match="not a finished run"):
        train(cfg, tmp_path / "b", **QUIET)


def test_progress_generator_replays_per_purpose_and_position() -> None:
    a = Progress(step=10, epoch=2, epochs=4, steps_per_epoch=5, seed=3)
    b = Progress(step=10, epoch=2, epochs=4, steps_per_epoch=5, seed=3)
    draw = lambda p, *purpose: torch.rand(4, generator=p.generator(*purpose))  # noqa: E731
    assert torch.equal(draw(a, "scores"), draw(b, "scores"))  # a resumed run draws the same
    assert not torch.equal(draw(a, "scores"), draw(a, "regrow"))
    b.step += 1
    assert not torch.equal(draw(a, "scores"), draw(b, "scores"))
    assert a.stage_epochs == 4
    assert a.total_steps == 20
