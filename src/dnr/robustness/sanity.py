"""Gradient-masking sanity checks: cheap signs that an attack number overstates robustness.

Each check is PASS or WARN with the numbers behind it; a WARN explains which kind of
masking it suggests (Athalye et al. 2018, Carlini et al. 2019). "Should not be larger"
comparisons allow a slack of max(1 example, 0.5 %), which is noise, not masking.

* ``input_gradients``: input gradients are non-zero on ≥ 90 % of examples.
* ``deterministic``: two forward passes agree (otherwise stochastic gradients).
* ``eps_monotonic``: PGD-10 accuracy does not rise over ε ∈ {0, ε/2, ε, 2ε}.
* ``large_eps``: PGD-10 (CW loss) at ε = max(0.5, 4ε) leaves ≤ min(10 %, chance + 5 %).
* ``pgd_vs_fgsm``: PGD is not weaker than FGSM at the same or a smaller ε.
* ``more_iterations``: more steps/restarts (and AutoAttack) do not raise accuracy.
* ``black_box``: Square (from AutoAttack's cascade, or a 1000-query run when AutoAttack did
  not run) breaks no example that every white-box attack missed. Not run for ``dnr``.

The ε checks use our ℓ∞ PGD and run only for ``norm="Linf"``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dnr.attacks import LossName, attack_loss
from dnr.registry import PROTOCOLS
from dnr.robustness.autoattack import square_broken
from dnr.robustness.context import EvalContext
from dnr.robustness.engine import batches, run_attack, to_float
from dnr.robustness.protocols import AttackSpec
from dnr.robustness.results import AttackResult, SanityCheck, format_eps, mean

__all__ = [
    "black_box_check",
    "determinism_check",
    "eps_monotonic_check",
    "input_gradient_check",
    "large_eps_check",
    "more_iterations_check",
    "pgd_vs_fgsm_check",
    "run_sanity_checks",
    "slack",
]

GRAD_FRACTION_MIN = 0.9
GRID_STEPS = 10
LARGE_EPS = 0.5
SQUARE_QUERIES = 1000


def slack(n: int) -> int:
    """Examples of tolerance for 'should not be larger' comparisons (noise, not masking)."""
    return max(1, math.ceil(0.005 * n))


def _pgd_spec(name: str, eps: float, loss: LossName = "ce", steps: int = GRID_STEPS) -> AttackSpec:
    """Cheap PGD for the checks: step 2.5·ε/steps (Madry et al.), random start."""
    return AttackSpec(name, "pgd", eps=eps, step_size=2.5 * eps / steps, steps=steps, loss=loss)


def input_gradient_check(ctx: EvalContext) -> SanityCheck:
    """Zero input gradients: softmax saturation (CE only) or shattered gradients (both)."""
    model, x, y, device = ctx.model, ctx.x, ctx.y, ctx.device
    ce_nonzero = torch.zeros(len(y), dtype=torch.bool)
    cw_nonzero = torch.zeros(len(y), dtype=torch.bool)
    norms = torch.zeros(len(y))
    with torch.enable_grad():
        for s in batches(len(y), ctx.batch_size):
            xb = to_float(x[s].to(device)).requires_grad_(True)
            yb = y[s].to(device)
            logits = model(xb)
            (g_ce,) = torch.autograd.grad(
                attack_loss(logits, yb, "ce").sum(), xb, retain_graph=True
            )
            (g_cw,) = torch.autograd.grad(attack_loss(logits, yb, "cw").sum(), xb)
            n_ce = g_ce.flatten(1).norm(dim=1).cpu()
            norms[s] = n_ce
            ce_nonzero[s] = n_ce > 0
            cw_nonzero[s] = g_cw.flatten(1).norm(dim=1).cpu() > 0
    frac_ce, frac_cw = mean(ce_nonzero), mean(cw_nonzero)
    numbers = {
        "fraction_nonzero_ce": frac_ce,
        "fraction_nonzero_margin": frac_cw,
        "median_grad_norm_ce": float(norms.median()) if len(norms) else 0.0,
        "threshold": GRAD_FRACTION_MIN,
    }
    if frac_ce >= GRAD_FRACTION_MIN:
        return SanityCheck(
            "input_gradients",
            "PASS",
            numbers,
            f"{100 * frac_ce:.1f}% of examples have a non-zero input gradient",
        )
    if frac_cw >= GRAD_FRACTION_MIN:
        why = (
            "the CE-loss input gradient is exactly zero on "
            f"{100 * (1 - frac_ce):.1f}% of examples but the margin-loss gradient is not: "
            "gradient masking by softmax saturation (over-confident logits); trust the "
            "CW / AutoAttack (DLR) numbers, not CE-PGD"
        )
    else:
        why = (
            f"the input gradient is exactly zero on {100 * (1 - frac_ce):.1f}% of "
            "examples for CE and margin losses: shattered gradients (a non-differentiable "
            "or zero-derivative operation, e.g. input quantization/thresholding); "
            "gradient attacks cannot progress, use BPDA or black-box attacks"
        )
    return SanityCheck("input_gradients", "WARN", numbers, why)


@torch.no_grad()
def determinism_check(ctx: EvalContext) -> SanityCheck:
    """Two forward passes on one batch must agree; otherwise gradients are stochastic."""
    xb = to_float(ctx.x[: ctx.batch_size].to(ctx.device))
    a, b = ctx.model(xb), ctx.model(xb)
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(a.abs().max()) if a.numel() else 0.0
    same_pred = bool((a.argmax(1) == b.argmax(1)).all())
    numbers = {"max_abs_logit_diff": diff, "max_abs_logit": scale, "examples": len(xb)}
    if same_pred and diff <= 1e-4 * max(1.0, scale):
        return SanityCheck(
            "deterministic", "PASS", numbers, "two forward passes on the same inputs agree"
        )
    return SanityCheck(
        "deterministic",
        "WARN",
        numbers,
        "the model's output changes between identical forward passes: "
        "stochastic gradients (randomized defense); evaluate with EOT "
        "(AutoAttack version='rand')",
    )


def eps_monotonic_check(
    clean: AttackResult, grid: list[AttackResult], slack_examples: int
) -> SanityCheck:
    """Accuracy must not rise along ``grid`` (PGD at increasing ε, after clean at ε 0)."""
    grid_eps = [r.settings["eps"] for r in grid]
    accs = [clean.accuracy] + [r.accuracy for r in grid]
    counts = [clean.num_correct] + [r.num_correct for r in grid]
    rises = [i for i in range(1, len(counts)) if counts[i] > counts[i - 1] + slack_examples]
    numbers = {
        "eps": [0.0] + grid_eps,
        "accuracy": accs,
        "attack": "pgd10 random start",
        "step_size": "2.5*eps/10",
        "slack_examples": slack_examples,
    }
    return SanityCheck(
        "eps_monotonic",
        "WARN" if rises else "PASS",
        numbers,
        "accuracy rises with eps: the attack fails to optimise, a sign of obfuscated "
        "gradients (or stochastic gradients); a correct evaluation can only get worse "
        "with a larger budget"
        if rises
        else "accuracy does not increase with eps",
    )


def large_eps_check(large: AttackResult, num_classes: int) -> SanityCheck:
    """At a huge ε almost any image is reachable: accuracy must be near zero."""
    big = large.settings["eps"]
    threshold = min(0.10, 1 / num_classes + 0.05)
    numbers = {
        "eps": big,
        "accuracy": large.accuracy,
        "threshold": threshold,
        "attack": "pgd10, CW margin loss, random start",
    }
    ok = large.accuracy <= threshold
    return SanityCheck(
        "large_eps",
        "PASS" if ok else "WARN",
        numbers,
        f"accuracy at eps={big:.3g} is near zero"
        if ok
        else f"{100 * large.accuracy:.1f}% of examples survive eps={big:.3g}, where almost any "
        "image is reachable: gradient masking (shattered/obfuscated gradients) makes "
        "the attack fail, so the robust accuracy at the real eps is overstated",
    )


def pgd_vs_fgsm_check(
    fgsm_result: AttackResult, pgds: list[AttackResult], slack_examples: int
) -> SanityCheck:
    """Iterative PGD (at ≥ FGSM's ε) must not be weaker than single-step FGSM."""
    worse = [r.name for r in pgds if r.num_correct > fgsm_result.num_correct + slack_examples]
    numbers = {
        "fgsm_eps": fgsm_result.settings["eps"],
        "fgsm": fgsm_result.accuracy,
        **{r.name: r.accuracy for r in pgds},
        "slack_examples": slack_examples,
    }
    return SanityCheck(
        "pgd_vs_fgsm",
        "WARN" if worse else "PASS",
        numbers,
        f"{', '.join(worse)} is weaker than single-step FGSM: the loss surface is "
        "locally non-smooth or misleading, typical of gradient masking (obfuscated "
        "gradients) where a large single step jumps past what small steps cannot"
        if worse
        else "iterative PGD is at least as strong as FGSM",
    )


def more_iterations_check(
    pgds: list[AttackResult], autoattack: AttackResult | None, slack_examples: int
) -> SanityCheck | None:
    """More steps × restarts at the same ε and loss (or AutoAttack at ≥ that ε) must not
    raise accuracy. None when no two attacks are comparable (e.g. protocol ``cw``)."""
    pairs = []
    for weak in pgds:
        for strong in pgds:
            same = (
                strong.settings["eps"] == weak.settings["eps"]
                and strong.settings["loss"] == weak.settings["loss"]
            )
            more = (
                strong.settings["steps"] * strong.settings["restarts"]
                > weak.settings["steps"] * weak.settings["restarts"]
            )
            if same and more:
                pairs.append((weak, strong))
        if autoattack is not None and autoattack.settings["eps"] >= weak.settings["eps"] - 1e-12:
            pairs.append((weak, autoattack))
    if not pairs:
        return None
    bad = [
        f"{s.name} > {w.name}" for w, s in pairs if s.num_correct > w.num_correct + slack_examples
    ]
    numbers: dict[str, Any] = {r.name: r.accuracy for pair in pairs for r in pair}
    numbers["slack_examples"] = slack_examples
    return SanityCheck(
        "more_iterations",
        "WARN" if bad else "PASS",
        numbers,
        f"a stronger attack is weaker ({'; '.join(bad)}): the attack does not "
        "converge, suggesting stochastic or obfuscated gradients"
        if bad
        else "more steps, restarts and AutoAttack do not raise accuracy",
    )


def black_box_check(ctx: EvalContext, results: list[AttackResult]) -> SanityCheck | None:
    """Square must not break examples every white-box attack missed. Its count comes from
    AutoAttack's cascade when AutoAttack ran, else from a short Square run on the white-box
    survivors. None when neither is available (counts unparsed, pyautoattack missing)."""
    slack_examples = slack(len(ctx.y))
    aa = next((r for r in results if r.name == "autoattack"), None)
    if aa is not None:
        if "broken_by" not in aa.details:
            return None
        k = aa.details["broken_by"].get("square", 0)
        numbers = {
            "square_broke": k,
            "source": "AutoAttack cascade (5000 queries, after APGD-CE, APGD-T, FAB-T)",
            "slack_examples": slack_examples,
        }
        return _black_box_verdict(k, slack_examples, numbers)
    white = [r for r in results if r.name != "clean"]
    survivors = results[0].correct.clone()
    for r in white:
        survivors &= r.correct
    eps = max(r.settings["eps"] for r in white)
    k = square_broken(ctx, survivors, eps=eps, queries=SQUARE_QUERIES)
    if k is None:
        return None
    numbers = {
        "square_broke": k,
        "white_box_survivors": int(survivors.sum()),
        "eps": eps,
        "queries": SQUARE_QUERIES,
        "slack_examples": slack_examples,
    }
    return _black_box_verdict(k, slack_examples, numbers)


def _black_box_verdict(broken: int, slack_examples: int, numbers: dict[str, Any]) -> SanityCheck:
    """PASS within the slack; a WARN says what Square breaking them means."""
    if broken <= slack_examples:
        return SanityCheck(
            "black_box",
            "PASS",
            numbers,
            f"Square broke {broken} examples the white-box attacks missed",
        )
    return SanityCheck(
        "black_box",
        "WARN",
        numbers,
        f"black-box Square broke {broken} examples every white-box attack "
        "missed: gradients point in uninformative directions (gradient "
        "masking / obfuscated gradients); the white-box numbers overstate "
        "robustness",
    )


def _linf_checks(
    ctx: EvalContext, results: list[AttackResult], specs: list[AttackSpec]
) -> list[SanityCheck]:
    """The checks that run our ℓ∞ PGD/FGSM at other ε (extra attacks, clean-correct only)."""
    n_slack = slack(len(ctx.y))
    clean, by_name = results[0], {r.name: r for r in results}
    checks = []

    def run(spec: AttackSpec) -> AttackResult:
        return run_attack(ctx, spec, clean.correct)

    eps = max(s.eps for s in specs if s.kind != "clean")
    grid = [run(_pgd_spec(f"pgd10@{format_eps(e)}", e)) for e in (eps / 2, eps, 2 * eps)]
    checks.append(eps_monotonic_check(clean, grid, n_slack))

    # margin loss: a random start at a huge eps can land where softmax saturates and
    # CE gradients vanish even for a healthy model
    big = max(LARGE_EPS, 4 * eps)
    large = run(_pgd_spec(f"cw10@{format_eps(big)}", big, loss="cw"))
    checks.append(large_eps_check(large, ctx.num_classes))

    fgsm_result = by_name.get("fgsm") or run(
        AttackSpec(f"fgsm@{format_eps(eps)}", "fgsm", eps=eps, random_start=False)
    )
    fgsm_eps = fgsm_result.settings["eps"]
    pgds = [
        r
        for r in results
        if r.settings.get("attack") == "pgd"
        and r.settings["loss"] == "ce"
        and r.settings["eps"] >= fgsm_eps - 1e-12
    ]
    pgds += [r for r in grid if r.settings["eps"] >= fgsm_eps - 1e-12]
    checks.append(pgd_vs_fgsm_check(fgsm_result, pgds, n_slack))

    candidates = [r for r in results if r.settings.get("attack") == "pgd"]
    candidates.append(grid[1])  # PGD-10 at the main eps
    more = more_iterations_check(candidates, by_name.get("autoattack"), n_slack)
    return checks if more is None else [*checks, more]


def run_sanity_checks(
    ctx: EvalContext, results: list[AttackResult], specs: list[AttackSpec], protocol: str
) -> list[SanityCheck]:
    """Every check that applies to ``protocol`` / ``ctx.norm``, given its ``results`` (clean
    first). Runs the extra PGD/FGSM/Square attacks the checks need on ``ctx.model``."""
    checks = [input_gradient_check(ctx), determinism_check(ctx)]
    if ctx.norm == "Linf":
        checks += _linf_checks(ctx, results, specs)
    if PROTOCOLS.get(protocol).black_box:
        black_box = black_box_check(ctx, results)
        if black_box is not None:
            checks.append(black_box)
    return checks
