"""The entry points: ``evaluate_model`` (a protocol, its sanity checks, one report) and the
two training-validation helpers, counted the same way so validation and test numbers agree.

Our FGSM/PGD are ℓ∞ only, so ``norm="L2"`` is accepted for ``autoattack`` alone. Options are
checked, and a missing ``pyautoattack`` reported, before any attack runs.
"""

from __future__ import annotations

import math
import platform
import time

import torch
from torch import Tensor, nn

from dnr.distributed import Distributed
from dnr.registry import PROTOCOLS
from dnr.robustness.autoattack import import_autoattack, package_version, run_autoattack
from dnr.robustness.context import EvalContext
from dnr.robustness.engine import (
    EvaluationError,
    attack_correct,
    check_images,
    default_batch_size,
    fp32_eval,
    model_device,
    predict_correct,
    progress_enabled,
    run_attack,
    select_subset,
    spec_settings,
    to_float,
)
from dnr.robustness.protocols import AttackSpec
from dnr.robustness.results import AttackResult, EvalReport, mean
from dnr.robustness.sanity import run_sanity_checks

__all__ = ["clean_accuracy", "evaluate_model", "pgd_accuracy"]


def _normalize_norm(norm: str) -> str:
    """``"Linf"`` or ``"L2"`` from the spellings users type (``linf``, ``inf``, ``l2``...)."""
    key = str(norm).lower().replace("_", "")
    if key in ("linf", "inf", "l-inf"):
        return "Linf"
    if key == "l2":
        return "L2"
    raise EvaluationError(f"norm must be 'Linf' or 'L2', got {norm!r}")


def _checked_request(
    protocol: str, eps: float | None, norm: str, restarts: int | None
) -> tuple[str, str, list[AttackSpec]]:
    """(protocol, norm, attack specs) once every option is valid: refused before any work,
    including a missing ``pyautoattack`` when the protocol needs it."""
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS.names()}")
    protocol = PROTOCOLS.get(protocol).name
    norm = _normalize_norm(norm)
    if norm == "L2" and protocol != "autoattack":
        raise EvaluationError(
            f"norm 'L2' is only supported by protocol 'autoattack' (the "
            f"reference implementation); protocol {protocol!r} uses our "
            "FGSM/PGD, which are l-inf only"
        )
    if eps is not None and not (math.isfinite(eps) and eps > 0):
        raise EvaluationError(f"eps must be a positive number, got {eps!r}")
    if restarts is not None and restarts < 1:
        raise EvaluationError(f"restarts must be >= 1, got {restarts}")
    specs = PROTOCOLS.get(protocol).specs(eps, norm, restarts)
    if any(s.kind == "autoattack" for s in specs):
        import_autoattack()  # fail before any work if the package is missing
    return protocol, norm, specs


def _take_subset(
    x: Tensor, y: Tensor, subset: int | None, seed: int
) -> tuple[Tensor, Tensor, list[int] | None]:
    """The seeded subset's rows (all rows when ``subset`` is None), labels as long."""
    indices = select_subset(len(y), subset, seed)
    if indices is not None:
        rows = torch.tensor(indices, dtype=torch.long)
        x, y = x[rows.to(x.device)], y[rows.to(y.device)]
    y = y.long()
    if len(y) == 0:
        raise EvaluationError("no examples to evaluate")
    return x, y, indices


def _measured_defaults(
    model: nn.Module,
    x: Tensor,
    device: torch.device,
    batch_size: int | None,
    num_classes: int | None,
) -> tuple[int, int]:
    """(batch size, classes) as given, else measured on the fp32 ``model``: a batch size
    that fits the device, and the width of its output."""
    if batch_size is None:
        batch_size = default_batch_size(model, tuple(x.shape[1:]), device)
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model(to_float(x[:1].to(device))).shape[1])
    return batch_size, num_classes


def _run_protocol(ctx: EvalContext, specs: list[AttackSpec]) -> list[AttackResult]:
    """The clean pass (``specs[0]``), then every attack on its clean-correct examples."""
    t0 = time.perf_counter()
    clean = predict_correct(ctx.model, ctx.x, ctx.y, ctx.batch_size, ctx.device, ctx.progress)
    settings = spec_settings(specs[0], ctx.norm, ctx.seed, ctx.batch_size)
    results = [
        AttackResult("clean", mean(clean), clean, settings, seconds=time.perf_counter() - t0)
    ]
    for spec in specs[1:]:
        if spec.kind == "autoattack":
            results.append(run_autoattack(ctx, spec, clean))
        else:
            results.append(run_attack(ctx, spec, clean))
    return results


def evaluate_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    protocol: str = "dnr",
    eps: float | None = None,
    norm: str = "Linf",
    subset: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    sanity: bool = True,
    num_classes: int | None = None,
    restarts: int | None = None,
) -> EvalReport:
    """Run ``protocol`` (a name in :data:`dnr.registry.PROTOCOLS`) on ``model`` and return
    an :class:`EvalReport`.

    ``x``: NCHW images, uint8 (divided by 255 per batch) or float in [0,1]; ``y``: labels.
    ``subset``: evaluate a seeded random subset of that many examples (indices recorded).
    ``eps``: radius for every attack (default: each protocol's own). ``norm``: ``"Linf"``,
    or ``"L2"`` for ``autoattack`` only. ``restarts`` overrides pgd20/pgd50/cw restarts.
    ``device``: where to run (default: the model's device). Runs in fp32 and leaves the
    model as it was.
    """
    started = time.perf_counter()
    protocol, norm, specs = _checked_request(protocol, eps, norm, restarts)
    check_images(x, y)
    device = torch.device(device) if device is not None else model_device(model)
    show = progress_enabled(progress)
    x, y, indices = _take_subset(x, y, subset, seed)

    with fp32_eval(model, device) as m:
        batch_size, num_classes = _measured_defaults(m, x, device, batch_size, num_classes)
        ctx = EvalContext(m, x, y, norm, seed, batch_size, device, num_classes, show)
        results = _run_protocol(ctx, specs)
        sanity_started = time.perf_counter()
        checks = run_sanity_checks(ctx, results, specs, protocol) if sanity else []
        sanity_seconds = time.perf_counter() - sanity_started

    return EvalReport(
        protocol=protocol,
        results=results,
        sanity=checks,
        subset_indices=indices,
        num_examples=len(y),
        seed=int(seed),
        versions=_versions(),
        device=str(device),
        norm=norm,
        num_classes=num_classes,
        batch_size=batch_size,
        seconds=time.perf_counter() - started,
        sanity_seconds=sanity_seconds,
    )


def _versions() -> dict[str, str | None]:
    """The software a report's numbers came from (recorded next to them)."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "pyautoattack": package_version("pyautoattack"),
        "dnr": package_version("torch-dnr"),
    }


def clean_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int = 256,
    *,
    dist: Distributed | None = None,
) -> float:
    """Clean accuracy in fp32 and eval mode (for validation during training).

    With ``dist`` each rank does its share of the batches and the ranks' results are
    summed: every rank returns the single-process number.
    """
    if len(y) == 0:
        return 0.0
    dist = dist or Distributed()
    device = model_device(model)
    with fp32_eval(model, device) as m:
        clean = predict_correct(m, x, y.long(), batch_size, device, shard=_shard(dist))
    return mean(_gather(dist, clean, device))


def pgd_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    batch_size: int = 256,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    dist: Distributed | None = None,
) -> float:
    """PGD (CE, 1 restart) robust accuracy in fp32, counted as in :func:`evaluate_model`
    (clean and adversarial correct). ``dist``: sharded as in :func:`clean_accuracy`."""
    if len(y) == 0:
        return 0.0
    dist = dist or Distributed()
    device = model_device(model)
    y = y.long()
    spec = AttackSpec(
        "pgd", "pgd", eps=eps, step_size=step_size, steps=steps, random_start=random_start
    )
    with fp32_eval(model, device) as m:
        clean = predict_correct(m, x, y, batch_size, device, shard=_shard(dist))
        clean = _gather(dist, clean, device)  # every rank attacks the same rows
        correct = attack_correct(
            m,
            x,
            y,
            spec,
            batch_size=batch_size,
            device=device,
            generator=generator,
            attack_mask=clean,
            shard=_shard(dist),
        )
    return mean(_gather(dist, correct, device) & clean)


def _shard(dist: Distributed) -> tuple[int, int]:
    """This rank's share of the batches, as ``predict_correct``/``attack_correct`` take it."""
    return dist.rank, dist.world


def _gather(dist: Distributed, done: Tensor, device: torch.device) -> Tensor:
    """Each rank's rows of a per-example bool vector (others False), combined on all ranks."""
    if not dist.enabled:
        return done
    return dist.all_reduce_(done.to(device, torch.int32)).cpu() > 0
