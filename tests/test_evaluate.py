"""Evaluation protocols, subsets, fp32 enforcement, sanity checks and AutoAttack parity.

Tiny MLPs on 3x8x8 synthetic images (10 classes: class patterns + noise) keep the whole
file fast; AutoAttack runs on 16 examples.
"""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
from torch import nn

from dnr.robustness import (
    EvalReport,
    EvaluationError,
    clean_accuracy,
    evaluate_model,
    list_protocols,
    pgd_accuracy,
    select_subset,
)

K = 10
SHAPE = (3, 8, 8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are overhead-bound; one thread is several times faster on a busy box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-sorted-free synthetic images: a ±0.06 class pattern plus noise, in [0,1]."""
    patterns = torch.randint(0, 2, (K, *SHAPE), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(seed)
    y = torch.randperm(n, generator=g) % K
    x = 0.5 + 0.06 * (2 * patterns[y].float() - 1) + 0.08 * torch.randn(n, *SHAPE, generator=g)
    return x.clamp(0, 1), y


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, K))


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """A normal, differentiable model with high clean and partial robust accuracy."""
    torch.manual_seed(0)
    model = mlp()
    x, y = make_data(512, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def test_data() -> tuple[torch.Tensor, torch.Tensor]:
    return make_data(64, seed=3)


class Quantize(nn.Module):
    """Non-differentiable input quantization without a straight-through gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 16) / 16


def status(report: EvalReport) -> dict[str, str]:
    return {c.name: c.status for c in report.sanity}


# ----------------------------------------------------------------------------- subsets


def test_select_subset_is_deterministic_sorted_and_seeded():
    a = select_subset(1000, 100, seed=0)
    assert a == select_subset(1000, 100, seed=0)
    assert a is not None
    assert len(a) == 100
    assert a == sorted(set(a))
    assert 0 <= a[0]
    assert a[-1] < 1000
    assert a != select_subset(1000, 100, seed=1)
    assert select_subset(1000, None, seed=0) is None
    assert select_subset(50, 50, seed=0) is None  # the whole set
    with pytest.raises(EvaluationError, match="subset must be a positive number of examples"):
        select_subset(10, 0, seed=0)


def test_select_subset_is_class_balanced_in_expectation_on_sorted_labels():
    y = torch.arange(10).repeat_interleave(100)  # a test set sorted by class
    counts = torch.zeros(10)
    seeds = 300
    for seed in range(seeds):
        counts += torch.bincount(y[select_subset(len(y), 50, seed)], minlength=10)
    mean = counts / seeds
    assert torch.allclose(mean, torch.full((10,), 5.0), atol=0.6), mean
    assert len(torch.unique(y[select_subset(len(y), 50, 0)])) >= 8  # not a class prefix


# ----------------------------------------------------------------------------- protocols


@pytest.mark.parametrize("protocol", ["dnr", "pgd20", "pgd50", "cw"])
def test_protocol_on_tiny_model(trained, test_data, protocol):
    x, y = test_data
    report = evaluate_model(
        trained, x, y, protocol=protocol, sanity=False, progress=False, batch_size=32
    )
    clean = report.result("clean")
    assert clean.accuracy > 0.8
    for r in report.results:
        assert r.correct.dtype == torch.bool
        assert r.correct.device.type == "cpu"
        assert r.accuracy == r.num_correct / len(r.correct) == r.num_correct / 64
        assert r.accuracy <= clean.accuracy
        assert not bool((r.correct & ~clean.correct).any())  # robust implies clean-correct
    attacks = [r for r in report.results if r.name != "clean"]
    assert attacks
    assert min(r.accuracy for r in attacks) < clean.accuracy
    assert report.subset_indices is None
    assert report.num_examples == 64


def test_protocol_settings_are_exact():
    report = evaluate_model(
        mlp(), *make_data(16, 5), protocol="dnr", sanity=False, progress=False, seed=7
    )
    pgd7 = report.result("pgd7").settings
    assert (pgd7["eps"], pgd7["step_size"], pgd7["steps"], pgd7["restarts"]) == (0.031, 0.01, 7, 1)
    assert pgd7["random_start"] is True
    assert pgd7["loss"] == "ce"
    assert pgd7["norm"] == "Linf"
    assert report.result("fgsm").settings["eps"] == 0.031
    p50 = (
        evaluate_model(mlp(), *make_data(8, 5), protocol="pgd50", sanity=False, progress=False)
        .result("pgd50")
        .settings
    )
    assert (p50["eps"], p50["step_size"], p50["steps"]) == (8 / 255, 2 / 255, 50)
    assert p50["restarts"] > 1
    # an explicit eps applies to every attack; steps keep the protocol's step/eps ratio
    scaled = (
        evaluate_model(
            mlp(), *make_data(8, 5), protocol="dnr", eps=0.062, sanity=False, progress=False
        )
        .result("pgd7")
        .settings
    )
    assert scaled["eps"] == 0.062
    assert scaled["step_size"] == pytest.approx(0.02)


def test_uint8_input_matches_float(trained, test_data):
    x, y = test_data
    x8 = (x * 255).round().to(torch.uint8)
    a = evaluate_model(trained, x8, y, protocol="dnr", sanity=False, progress=False)
    b = evaluate_model(trained, x8.float() / 255, y, protocol="dnr", sanity=False, progress=False)
    assert [r.accuracy for r in a.results] == [r.accuracy for r in b.results]
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        evaluate_model(trained, x * 255, y, progress=False)


def test_subset_indices_recorded_and_used(trained, test_data):
    x, y = test_data
    report = evaluate_model(
        trained, x, y, protocol="dnr", subset=20, seed=3, sanity=False, progress=False
    )
    assert report.subset_indices == select_subset(64, 20, 3)
    assert report.num_examples == 20
    assert report.result("clean").correct.numel() == 20
    rows = torch.tensor(report.subset_indices)
    expected = clean_accuracy(trained, x[rows], y[rows], batch_size=8)
    assert report.result("clean").accuracy == expected


def test_bad_options_are_refused(trained, test_data):
    x, y = test_data
    with pytest.raises(ValueError, match="only supported by protocol 'autoattack'"):
        evaluate_model(trained, x, y, protocol="pgd20", norm="L2", progress=False)
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate_model(trained, x, y, protocol="pgd1000", progress=False)
    assert set(list_protocols()) == {"dnr", "pgd20", "pgd50", "cw", "autoattack", "full"}


def test_protocols_are_registry_entries_with_descriptions_and_specs():
    from dnr.registry import PROTOCOLS
    from dnr.robustness import AttackSpec

    for name in list_protocols():
        entry = PROTOCOLS.get(name)
        assert entry.name == name
        assert entry.description
        specs = entry.specs(None, "Linf", None)
        assert specs[0] == AttackSpec("clean", "clean")
        assert all(isinstance(s, AttackSpec) for s in specs)
    pgd20 = PROTOCOLS.get("pgd20").specs(0.062, "Linf", 2)[1]
    assert (pgd20.eps, pgd20.restarts) == (0.062, 2)
    assert pgd20.step_size == pytest.approx(0.062 / 4)  # step/eps of 2/255 / 8/255 kept
    assert PROTOCOLS.get("autoattack").specs(None, "L2", None)[1].eps == 0.5


def test_attack_seeds_come_from_the_shared_derivation():
    from dnr.seeding import derive_seed

    report = evaluate_model(
        mlp(), *make_data(8, 5), protocol="dnr", sanity=False, progress=False, seed=7
    )
    assert report.result("pgd7").settings["seed"] == derive_seed(7, "pgd7")


def test_sanity_verdicts_are_plain_functions_of_results():
    from dnr.robustness import AttackResult
    from dnr.robustness.sanity import (
        eps_monotonic_check,
        more_iterations_check,
        pgd_vs_fgsm_check,
    )

    def result(name: str, correct: int, **settings) -> AttackResult:
        flags = torch.arange(100) < correct
        return AttackResult(name, correct / 100, flags, settings)

    clean = result("clean", 90)
    pgd = {"attack": "pgd", "loss": "ce", "restarts": 1}
    rising = [
        result("a", 40, eps=0.01, **pgd, steps=10),
        result("b", 60, eps=0.02, **pgd, steps=10),
    ]
    assert eps_monotonic_check(clean, rising, 1).status == "WARN"
    assert eps_monotonic_check(clean, rising[:1], 1).status == "PASS"
    fgsm = result("fgsm", 50, eps=0.02)
    assert pgd_vs_fgsm_check(fgsm, rising[1:], 1).status == "WARN"
    assert pgd_vs_fgsm_check(fgsm, rising[:1], 1).status == "PASS"
    short = result("pgd10", 30, eps=0.02, **pgd, steps=10)
    long = result("pgd50", 35, eps=0.02, **pgd, steps=50)
    assert more_iterations_check([short, long], None, 1).status == "WARN"
    assert more_iterations_check([short], None, 1) is None  # nothing comparable


def test_missing_pyautoattack_says_how_to_install(trained, test_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # makes the import fail
    x, y = test_data
    with pytest.raises(EvaluationError, match=r'pip install "torch-dnr\[eval\]"'):
        evaluate_model(trained, x, y, protocol="autoattack", progress=False)


# ----------------------------------------------------------------------------- full + AutoAttack


@pytest.fixture(scope="module")
def full_report(trained, test_data) -> EvalReport:
    x, y = test_data
    return evaluate_model(
        trained, x, y, protocol="full", subset=16, seed=0, batch_size=8, progress=False
    )


@pytest.mark.slow
def test_full_protocol_worst_case(full_report):
    names = [r.name for r in full_report.results]
    assert names == ["clean", "fgsm", "pgd7", "pgd20", "pgd50", "cw", "autoattack"]
    worst = full_report.worst_case
    assert worst is not None
    for r in full_report.results:
        assert worst.accuracy <= r.accuracy
        assert not bool((worst.correct & ~r.correct).any())
    expected = torch.stack([r.correct for r in full_report.results]).all(0).float().mean()
    assert worst.accuracy == pytest.approx(float(expected))


@pytest.mark.slow
def test_sanity_checks_pass_on_a_normal_model(full_report, trained, test_data):
    assert status(full_report) == {
        "input_gradients": "PASS",
        "deterministic": "PASS",
        "eps_monotonic": "PASS",
        "large_eps": "PASS",
        "pgd_vs_fgsm": "PASS",
        "more_iterations": "PASS",
        "black_box": "PASS",
    }, [c.to_dict() for c in full_report.sanity]
    x, y = test_data
    dnr = evaluate_model(trained, x, y, protocol="dnr", progress=False)
    assert all(c.status == "PASS" for c in dnr.sanity), [c.to_dict() for c in dnr.sanity]
    assert "black_box" not in status(dnr)
    for check in dnr.sanity:
        assert check.numbers
        assert check.explanation


def test_sanity_checks_warn_on_a_gradient_masking_model(trained, test_data):
    masked = nn.Sequential(Quantize(), *trained)
    x, y = test_data
    report = evaluate_model(masked, x, y, protocol="dnr", progress=False)
    assert report.result("clean").accuracy > 0.8  # still a good classifier
    st = status(report)
    assert st["input_gradients"] == "WARN"
    assert st["large_eps"] == "WARN"
    grad = next(c for c in report.sanity if c.name == "input_gradients")
    assert grad.numbers["fraction_nonzero_ce"] == 0.0
    assert "shattered" in grad.explanation
    large = next(c for c in report.sanity if c.name == "large_eps")
    assert large.numbers["accuracy"] > large.numbers["threshold"]
    assert "gradient masking" in large.explanation


def test_gradient_check_names_softmax_saturation(trained, test_data):
    class Saturated(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return trained(x) * 1e4  # CE gradient underflows to exactly 0, margin does not

    x, y = test_data
    report = evaluate_model(Saturated(), x, y, protocol="dnr", progress=False)
    grad = next(c for c in report.sanity if c.name == "input_gradients")
    assert grad.status == "WARN"
    assert "saturation" in grad.explanation
    assert grad.numbers["fraction_nonzero_margin"] > 0.9


@pytest.mark.slow
def test_autoattack_matches_reference_run_standard_evaluation(full_report, trained, test_data):
    from pyautoattack import AutoAttack

    x, y = test_data
    rows = torch.tensor(full_report.subset_indices)
    adversary = AutoAttack(
        trained, norm="Linf", eps=8 / 255, version="standard", device="cpu", seed=0
    )
    _, y_adv = adversary.run_standard_evaluation(x[rows], y[rows], batch_size=8)
    reference = (y_adv == y[rows]).float().mean().item()
    ours = full_report.result("autoattack")
    assert ours.accuracy == reference
    assert torch.equal(ours.correct, y_adv == y[rows])
    assert ours.settings["version"] == "standard"
    assert ours.settings["seed"] == 0
    assert set(ours.details["broken_by"]) == {"apgd-ce", "apgd-t", "fab-t", "square"}
    assert 0.0 < ours.accuracy < full_report.result("clean").accuracy  # not a trivial case


def test_autoattack_l2(trained, test_data):
    x, y = test_data
    report = evaluate_model(
        trained,
        x,
        y,
        protocol="autoattack",
        norm="L2",
        eps=3.0,
        subset=8,
        batch_size=8,
        progress=False,
    )
    aa = report.result("autoattack")
    assert report.norm == "L2"
    assert aa.settings["norm"] == "L2"
    assert aa.settings["eps"] == 3.0
    assert aa.accuracy <= report.result("clean").accuracy
    assert {c.name for c in report.sanity} <= {"input_gradients", "deterministic", "black_box"}


@pytest.mark.slow
def test_to_dict_is_json_with_settings_next_to_numbers(full_report):
    doc = json.loads(json.dumps(full_report.to_dict()))
    assert doc["protocol"] == "full"
    assert doc["num_examples"] == 16
    assert doc["seed"] == 0
    assert doc["subset_indices"] == full_report.subset_indices
    assert set(doc["versions"]) >= {"torch", "python", "pyautoattack", "dnr"}
    by_name = {r["name"]: r for r in doc["results"]}
    assert by_name["pgd50"]["settings"]["steps"] == 50
    assert by_name["autoattack"]["settings"]["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert by_name["worst_case"]["accuracy"] == doc["worst_case_accuracy"]
    for r in doc["results"]:
        assert isinstance(r["accuracy"], float)
        assert isinstance(r["settings"], dict)
    for c in doc["sanity"]:
        assert c["status"] in ("PASS", "WARN")
        assert c["numbers"]
        assert c["explanation"]
    md = full_report.to_markdown()
    assert "| attack | accuracy |" in md
    assert "| sanity check | status |" in md
    assert "worst case" in md
    assert "8/255" in md
    # The time went somewhere, and the sanity checks' share is named (it dominates short runs)
    assert 0 < doc["sanity_seconds"] < doc["seconds"]
    assert sum(r["seconds"] for r in doc["results"]) + doc["sanity_seconds"] <= doc["seconds"]
    assert "| attack | accuracy | correct | seconds | settings |" in md
    assert f"Evaluation took {full_report.seconds:.1f} s, {full_report.sanity_seconds:.1f} s" in md
    assert "eval.sanity=false skips them" in md


# ----------------------------------------------------------------------------- fp32 / state


def test_fp32_enforced_for_bf16_model_under_outer_autocast(trained, test_data):
    model = mlp()
    model.load_state_dict(trained.state_dict())
    model = model.to(torch.bfloat16)
    seen: list[torch.dtype] = []
    model[1].register_forward_hook(
        lambda m, i, o: seen.extend([i[0].dtype, m.weight.dtype, o.dtype])
    )
    x, y = test_data
    with torch.autocast("cpu", dtype=torch.bfloat16):
        report = evaluate_model(model, x, y, protocol="dnr", progress=False)
    assert seen
    assert set(seen) == {torch.float32}
    assert next(model.parameters()).dtype == torch.bfloat16  # the caller's model untouched
    # the same as evaluating an fp32 copy of the bf16 weights outside autocast, exactly
    reference = evaluate_model(copy.deepcopy(model).float(), x, y, protocol="dnr", progress=False)
    assert [r.name for r in report.results] == [r.name for r in reference.results]
    for got, want in zip(report.results, reference.results, strict=True):
        assert torch.equal(got.correct, want.correct), got.name


def test_fp32_model_under_outer_autocast_stays_fp32(trained, test_data):
    seen: list[torch.dtype] = []
    handle = trained[3].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x, y = test_data
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            evaluate_model(trained, x, y, protocol="dnr", sanity=False, progress=False)
            clean_accuracy(trained, x, y, batch_size=16)
            pgd_accuracy(trained, x, y, eps=0.03, step_size=0.01, steps=2, batch_size=16)
    finally:
        handle.remove()
    assert seen
    assert set(seen) == {torch.float32}


def test_model_state_is_restored(test_data):
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(192, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, K)
    )
    model.train()
    model[2].eval()  # a mixed-mode model must come back mixed
    model[4].weight.requires_grad_(False)
    stats = model[2].running_mean.clone()
    x, y = test_data
    evaluate_model(model, x, y, protocol="dnr", progress=False)
    clean_accuracy(model, x, y, batch_size=16)
    pgd_accuracy(model, x, y, eps=0.03, step_size=0.01, steps=2, batch_size=16)
    assert model.training
    assert not model[2].training
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, True, False, True]
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[2].running_mean, stats)  # BN statistics never updated


def test_training_helpers_agree_with_evaluate_model(trained, test_data):
    x, y = test_data
    report = evaluate_model(
        trained, x, y, protocol="dnr", sanity=False, progress=False, batch_size=16
    )
    assert clean_accuracy(trained, x, y, batch_size=16) == report.result("clean").accuracy
    acc = pgd_accuracy(
        trained,
        x,
        y,
        eps=0.031,
        step_size=0.01,
        steps=7,
        batch_size=16,
        generator=torch.Generator().manual_seed(0),
    )
    assert 0.0 <= acc <= report.result("clean").accuracy
    assert acc == pytest.approx(report.result("pgd7").accuracy, abs=3 / 64)
