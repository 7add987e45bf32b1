"""``dnr.DNR`` and ``dnr.evaluate``: DNR in a user's own loop, exactly as the README shows it.

The README's example runs as written (torchvision, where it imports) and with the model
swapped for a project model (everywhere); the schedule's promises — exact budget, rewiring
inside the window only, annealed prune rate, BN refresh, exact resume — are checked on a
tiny project model in the README's loop, and against ``dnr train``'s own method.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dnr
from dnr.config import ConfigError, load_config
from dnr.seeding import derive_seed
from dnr.sparsity import Progress, build_sparsity, cosine_prune_rate
from dnr.sparsity.rewirer import Rewirer
from dnr.sparsity.schedules import RewireSchedule
from helpers import optional_import

README = Path(__file__).resolve().parents[1] / "README.md"
TORCHVISION_MODEL = "torchvision.models.resnet18(num_classes=10)"
PROJECT_MODEL = 'dnr.create_model("resnet18", num_classes=10)'

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def readme_example() -> str:
    """The first python block of the README section "DNR in your own training loop"."""
    text = README.read_text()
    section = text[text.index("## DNR in your own training loop") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the README section has no python block"
    return match.group(1)


def run_example(code: str, where: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Execute ``code`` as a script in ``where``; returns its globals."""
    monkeypatch.chdir(where)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    return namespace


def check_example_outcome(ns: dict[str, Any], where: Path) -> None:
    """What the README example promises: budget, rewirings in the window, a checkpoint that
    loads without pickle, an evaluation under the released protocol."""
    sparse = ns["sparse"]
    masking = sparse.masking
    assert masking.num_active == round(0.05 * masking.num_prunable)
    assert sparse.density() == masking.num_active / masking.num_prunable
    # 3 epochs of 4 steps, window round(0.75 * 12) = 9: epoch ends 4 and 8 rewire, 12 not
    assert [r["step"] for r in sparse.history] == [4, 8]
    assert all(r["bn_refresh_batches"] == 2 for r in sparse.history)
    for name, param in ns["model"].named_parameters():
        if name in sparse.masks:
            assert not param.detach()[~sparse.masks[name]].any(), name
    saved = torch.load(where / "checkpoint.pt", weights_only=True)
    assert saved["dnr"]["steps"] == 12
    report = ns["report"]
    assert [r.name for r in report.results] == ["clean", "fgsm", "pgd7"]
    assert all(0.0 <= r.accuracy <= 1.0 for r in report.results)


@pytest.mark.slow
def test_readme_example_runs_as_written_with_torchvision(tmp_path, monkeypatch) -> None:
    optional_import("torchvision")
    code = readme_example()
    assert TORCHVISION_MODEL in code
    check_example_outcome(run_example(code, tmp_path, monkeypatch), tmp_path)


@pytest.mark.slow
def test_readme_example_runs_on_a_project_model(tmp_path, monkeypatch) -> None:
    code = readme_example()
    assert TORCHVISION_MODEL in code
    assert "import torchvision\n" in code
    code = code.replace(TORCHVISION_MODEL, PROJECT_MODEL).replace("import torchvision\n", "")
    check_example_outcome(run_example(code, tmp_path, monkeypatch), tmp_path)


# ---------------------------------------------------------------------- the README's loop


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return dnr.create_model("resnet18", num_classes=10, width=0.125)


def tiny_batches(n: int = 4, seed: int = 1) -> Batches:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))
        for _ in range(n)
    ]


def sgd(model: nn.Module, momentum: float = 0.9) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum, weight_decay=5e-4)


def train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sparse: dnr.DNR,
    loader: Batches,
    epochs: range,
    after_step: Any = None,
) -> None:
    """The README's loop (plain cross-entropy: the schedule does not care what the loss is)."""
    for _ in epochs:
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sparse.step()
            if after_step is not None:
                after_step()
        sparse.epoch_end()


def masks_copy(sparse: dnr.DNR) -> dict[str, torch.Tensor]:
    return {n: m.clone() for n, m in sparse.masks.items()}


def same_masks(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[n], b[n]) for n in a)


def test_budget_is_exact_after_every_step_and_masks_move_only_inside_the_window() -> None:
    model, loader = tiny_model(), tiny_batches(4)
    optimizer = sgd(model)
    sparse = dnr.DNR(
        model,
        optimizer,
        density=0.1,
        epochs=4,
        steps_per_epoch=4,
        refresh_batches=loader,
        bn_refresh_batches=1,
    )
    params = dict(model.named_parameters())
    target = round(0.1 * sparse.masking.num_prunable)
    snapshots: list[dict[str, torch.Tensor]] = []

    def check() -> None:
        assert sparse.masking.num_active == target
        assert sum(int(m.sum()) for m in sparse.masks.values()) == target
        for name, mask in sparse.masks.items():
            assert not params[name].detach()[~mask].any(), (sparse.steps, name)
        snapshots.append(masks_copy(sparse))

    train_epochs(model, optimizer, sparse, loader, range(4), after_step=check)
    # 16 steps, window round(0.75 * 16) = 12: the ends of epochs 1 and 2 rewire, 3 and 4 not
    assert [r["step"] for r in sparse.history] == [4, 8]
    assert not same_masks(snapshots[3], snapshots[4])  # the rewiring after step 4
    assert not same_masks(snapshots[7], snapshots[8])  # ... and after step 8
    for k in (0, 1, 2, 4, 5, 6, *range(8, 15)):  # no change between other steps
        assert same_masks(snapshots[k], snapshots[k + 1]), k
    assert same_masks(snapshots[-1], sparse.masks)  # nor at the last epoch ends
    assert all(r["lost"] and sum(r["regrown"].values()) > 0 for r in sparse.history)
    assert not sparse.rewiring
    assert sparse.density() == target / sparse.masking.num_prunable


def test_rewire_every_rewires_between_steps_until_the_window_closes() -> None:
    model, loader = tiny_model(), tiny_batches(4)
    optimizer = sgd(model)
    sparse = dnr.DNR(
        model, optimizer, density=0.1, total_steps=16, rewire_every=3, bn_refresh_batches=0
    )
    train_epochs(model, optimizer, sparse, loader, range(4))
    assert [r["step"] for r in sparse.history] == [3, 6, 9]  # window 12: step 12 is outside it
    assert sparse.epochs_done == 4  # epoch ends came, and did not rewire


def test_prune_rate_anneals_by_cosine_over_the_window() -> None:
    model, loader = tiny_model(), tiny_batches(2)
    optimizer = sgd(model)
    sparse = dnr.DNR(
        model,
        optimizer,
        density=0.1,
        total_steps=20,
        rewire_every=2,
        rewire_until=0.8,
        prune_rate=0.3,
        prune_rate_min=0.01,
        bn_refresh_batches=0,
    )
    assert sparse.prune_rate == pytest.approx(0.3)
    train_epochs(model, optimizer, sparse, loader, range(10))
    rates = [r["prune_rate"] for r in sparse.history]
    steps = [r["step"] for r in sparse.history]
    assert steps == [2, 4, 6, 8, 10, 12, 14]  # window round(0.8 * 20) = 16
    assert rates == [pytest.approx(cosine_prune_rate(s, 16, 0.3, 0.01)) for s in steps]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[0] < 0.3
    assert rates[-1] > 0.01
    assert sparse.prune_rate == pytest.approx(0.01)  # the end of the run: the floor


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n}


def test_batchnorm_statistics_are_refreshed_after_a_rewiring() -> None:
    loader = tiny_batches(3)
    after: dict[int, dict[str, torch.Tensor]] = {}
    before: dict[int, dict[str, torch.Tensor]] = {}
    for refresh in (0, 2):
        model = tiny_model()
        optimizer = sgd(model)
        sparse = dnr.DNR(
            model,
            optimizer,
            density=0.1,
            epochs=2,
            steps_per_epoch=3,
            refresh_batches=loader,
            bn_refresh_batches=refresh,
        )
        train_epochs(model, optimizer, sparse, loader, range(1))
        before[refresh] = {n: p.detach().clone() for n, p in model.named_parameters()}
        after[refresh] = bn_buffers(model)
        assert [r["bn_refresh_batches"] for r in sparse.history] == [refresh]
    # the same weights (the refresh runs forward passes only) ...
    assert all(torch.equal(before[0][n], before[2][n]) for n in before[0])
    # ... but BN statistics re-estimated on the refresh batches: those of a cumulative average
    changed = [n for n in after[0] if not torch.equal(after[0][n], after[2][n])]
    assert len(changed) == len([n for n in after[0] if "running_mean" in n]) * 2


def test_missing_refresh_batches_warn_once() -> None:
    model, loader = tiny_model(), tiny_batches(2)
    optimizer = sgd(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sparse = dnr.DNR(model, optimizer, density=0.1, epochs=4, steps_per_epoch=2)
        train_epochs(model, optimizer, sparse, loader, range(4))
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1
    assert "BatchNorm refresh" in messages[0]
    assert "skipped" in messages[0]
    assert [r["bn_refresh_batches"] for r in sparse.history] == [0, 0]  # it rewired, unrefreshed


def test_an_exhausted_refresh_source_warns_once() -> None:
    model, loader = tiny_model(), tiny_batches(2)
    optimizer = sgd(model)
    sparse = dnr.DNR(
        model,
        optimizer,
        density=0.1,
        epochs=4,
        steps_per_epoch=2,
        refresh_batches=iter(loader),
        bn_refresh_batches=2,
    )
    with pytest.warns(UserWarning, match="yielded no batch") as caught:
        train_epochs(model, optimizer, sparse, loader, range(4))
    assert len(caught) == 1
    assert [r["bn_refresh_batches"] for r in sparse.history] == [2, 0]


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.0),
        lambda ps: torch.optim.Adam(ps, betas=(0.0, 0.99)),
        lambda ps: torch.optim.Adagrad(ps),
    ],
    ids=["sgd-default", "sgd-momentum-0", "adam-beta1-0", "adagrad"],
)
def test_an_optimizer_without_momentum_is_refused(make) -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="momentum") as err:
        dnr.DNR(model, make(model.parameters()), density=0.1, total_steps=10)
    assert "grow_by='gradient'" in str(err.value)


def test_momentum_growth_needs_every_prunable_weight_stepped() -> None:
    model = tiny_model()
    head = [p for n, p in model.named_parameters() if "fc" in n or "classifier" in n]
    optimizer = torch.optim.SGD(head, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="does not step"):
        dnr.DNR(model, optimizer, density=0.1, total_steps=10)


def test_adam_and_gradient_growth_are_accepted() -> None:
    model = tiny_model()
    dnr.DNR(
        model,
        torch.optim.AdamW(model.parameters()),
        density=0.1,
        total_steps=10,
        bn_refresh_batches=0,
    )
    model = tiny_model()
    sparse = dnr.DNR(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        density=0.1,
        total_steps=10,
        grow_by="gradient",
        bn_refresh_batches=0,
    )
    assert sparse.masking.settings.grow_by == "gradient"


def test_state_dict_round_trip_resumes_identically() -> None:
    loader = tiny_batches(3)
    kw: dict[str, Any] = {
        "density": 0.1,
        "epochs": 4,
        "steps_per_epoch": 3,
        "refresh_batches": loader,
        "bn_refresh_batches": 2,
        "rewire_until": 1.0,  # rewirings at steps 3, 6 and 9: one after the resume
    }
    model = tiny_model()
    optimizer = sgd(model)
    straight = dnr.DNR(model, optimizer, **kw)
    train_epochs(model, optimizer, straight, loader, range(4))

    first = tiny_model()
    opt1 = sgd(first)
    sparse1 = dnr.DNR(first, opt1, **kw)
    train_epochs(first, opt1, sparse1, loader, range(2))
    buffer = io.BytesIO()
    state = {"model": first.state_dict(), "opt": opt1.state_dict(), "dnr": sparse1.state_dict()}
    torch.save(state, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = tiny_model(seed=123)  # other weights and other masks until the state arrives
    opt2 = sgd(resumed)
    sparse2 = dnr.DNR(resumed, opt2, **{**kw, "seed": 7})
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sparse2.load_state_dict(saved["dnr"])
    assert (sparse2.steps, sparse2.epochs_done) == (6, 2)
    train_epochs(resumed, opt2, sparse2, loader, range(2, 4))

    assert sparse2.history == straight.history
    assert [(r["step"], r["epoch"]) for r in straight.history] == [(3, 1), (6, 2), (9, 3)]
    assert same_masks(sparse2.masks, straight.masks)
    final, expected = resumed.state_dict(), model.state_dict()
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_a_state_of_another_run_length_is_refused() -> None:
    model = tiny_model()
    sparse = dnr.DNR(model, sgd(model), density=0.1, total_steps=12, bn_refresh_batches=0)
    other = dnr.DNR(model, sgd(model), density=0.1, total_steps=20, bn_refresh_batches=0)
    with pytest.raises(ValueError, match="20-step run"):
        sparse.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="not a dnr.DNR state"):
        sparse.load_state_dict(sparse.masking.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"density": 1.5}, "sparsity.density"),
        ({"rewire_untill": 0.5}, "rewire_untill"),
        ({"method": "static"}, "takes no method"),
        ({"granularity": "block"}, "sparsity.granularity"),
    ],
)
def test_a_bad_setting_is_one_config_error_naming_it(kwargs, match) -> None:
    model = tiny_model()
    with pytest.raises(ConfigError, match=match):
        dnr.DNR(model, sgd(model), total_steps=10, **{"density": 0.1, **kwargs})


def test_the_run_length_must_be_given() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="total_steps="):
        dnr.DNR(model, sgd(model), density=0.1, epochs=3)
    with pytest.raises(ValueError, match="epochs \\* steps_per_epoch"):
        dnr.DNR(model, sgd(model), density=0.1, total_steps=10, epochs=3, steps_per_epoch=4)


def test_channel_granularity_holds_its_budget_and_rewires() -> None:
    model, loader = tiny_model(), tiny_batches(2)
    optimizer = sgd(model)
    sparse = dnr.DNR(
        model,
        optimizer,
        density=0.3,
        epochs=4,
        steps_per_epoch=2,
        granularity="channel",
        refresh_batches=loader,
    )
    start, active = masks_copy(sparse), sparse.masking.num_active
    train_epochs(model, optimizer, sparse, loader, range(4))
    assert sparse.masking.granularity == "channel"
    assert abs(sparse.density() - 0.3) < 0.05
    assert len(sparse.history) == 2
    assert sparse.masking.num_active == pytest.approx(active, rel=0.05)
    assert not same_masks(start, sparse.masks)


def test_dnr_train_and_dnr_DNR_run_one_schedule() -> None:
    """The registered method (``dnr train``) and the library object, fed the same steps,
    draw the same masks and end with the same weights: one implementation."""
    epochs, loader = 4, tiny_batches(2)
    cfg = load_config(
        None, ["sparsity.method=dnr", "sparsity.density=0.1", "sparsity.bn_refresh_batches=0"]
    )
    ours = tiny_model()
    ours_opt = sgd(ours)
    sparse = dnr.DNR(
        ours, ours_opt, density=0.1, epochs=epochs, steps_per_epoch=2, bn_refresh_batches=0
    )
    theirs = tiny_model()
    theirs_opt = sgd(theirs)
    rng = torch.Generator().manual_seed(derive_seed(cfg.train.seed, "masks"))
    method = build_sparsity(cfg, theirs, theirs_opt, rng)
    assert isinstance(method.rewirer, Rewirer)  # type: ignore[attr-defined]
    assert same_masks(method.masking.masks, sparse.masks)

    train_epochs(ours, ours_opt, sparse, loader, range(epochs))
    step, records = 0, []
    for epoch in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(theirs(x), y)
            theirs_opt.zero_grad()
            loss.backward()
            theirs_opt.step()
            step += 1
            method.after_step(Progress(step, epoch, epochs, len(loader), seed=cfg.train.seed))
        progress = Progress(step, epoch, epochs, len(loader), seed=cfg.train.seed)
        records.extend(method.on_epoch_end(progress).get("rewire", []))

    assert len(records) == len(sparse.history) == 2
    for theirs_record, ours_record in zip(records, sparse.history):
        assert theirs_record["prune_rate"] == ours_record["prune_rate"]
        assert theirs_record["regrown"] == ours_record["regrown"]
    assert same_masks(method.masking.masks, sparse.masks)
    a, b = ours.state_dict(), theirs.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_is_the_protocol_evaluation() -> None:
    model = tiny_model().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    report = dnr.evaluate(model, x, y, protocol="dnr", eps=8 / 255, progress=False, sanity=False)
    assert dnr.evaluate is dnr.evaluate_model
    assert report.protocol == "dnr"
    assert report.num_examples == 8
    assert report.result("pgd7").settings["eps"] == pytest.approx(8 / 255)
    assert report.result("pgd7").accuracy <= report.result("clean").accuracy


def test_rewire_schedule_known_answers() -> None:
    """The schedule both drivers share, by known answers: window, due steps, rates."""
    every = RewireSchedule(prune_rate=0.4, prune_rate_min=0.0, rewire_every=5, rewire_until=0.5)
    assert every.window(100) == 50
    assert [s for s in range(1, 101) if every.due_after_step(s, 100)] == list(range(5, 50, 5))
    assert not any(every.due_at_epoch_end(s, 100) for s in range(101))
    assert every.rate(0, 100) == pytest.approx(0.4)
    assert every.rate(25, 100) == pytest.approx(0.2)
    assert every.rate(50, 100) == pytest.approx(0.0)
    epochs = RewireSchedule(rewire_until=0.75)
    assert [s for s in (10, 20, 30, 40) if epochs.due_at_epoch_end(s, 40)] == [10, 20]
    assert epochs.never_rewires(steps_per_epoch=30, total_steps=40)
    assert not epochs.never_rewires(steps_per_epoch=10, total_steps=40)
    with pytest.raises(ValueError, match="prune_rate_min"):
        RewireSchedule(prune_rate=0.1, prune_rate_min=0.2)
    with pytest.raises(ValueError, match="rewire_until"):
        RewireSchedule(rewire_until=0.0)
