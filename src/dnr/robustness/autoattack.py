"""Adapter for the reference AutoAttack (package ``pyautoattack``): standard evaluation and
the short Square run of the black-box sanity check.

We call the reference ``run_standard_evaluation`` rather than re-implementing it, so our
AutoAttack number is the reference number (the parity test checks it example by example).
It reseeds the global torch RNG, so it runs inside ``torch.random.fork_rng`` and the
caller's RNG stream is untouched.

``run_standard_evaluation`` returns only the final adversarial examples; how many examples
each attack of the cascade broke (which the black-box check needs: Square only sees what
APGD/FAB left) is only in its debug log, lines like
``apgd-ce - 1/2 - tensor(3) out of 8 successfully perturbed``. We parse that log, and
``pyproject.toml`` pins ``pyautoattack>=0.2,<0.3``, the series whose ``autoattack.py`` writes
that format (checked against 0.2.0). Should a later release change it, nothing breaks
silently: the parsed counts must add up to the examples AutoAttack broke, otherwise
``broken_by`` is left out and the black-box check is skipped rather than fed wrong numbers.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from dnr.robustness.context import EvalContext
from dnr.robustness.engine import EvaluationError, batches, progress_bar, to_float
from dnr.robustness.protocols import AttackSpec
from dnr.robustness.results import AttackResult, mean

__all__ = [
    "AUTOATTACK_VERSION",
    "import_autoattack",
    "package_version",
    "run_autoattack",
    "square_broken",
]

log = logging.getLogger(__name__)

AUTOATTACK_VERSION = "standard"
_INSTALL_HINT = 'AutoAttack needs the reference package: pip install "torch-dnr[eval]"'

_BATCH_LINE = re.compile(
    r"^(?P<attack>\S+) - \d+/\d+ - (?:tensor\()?(?P<broken>\d+)(?:,[^)]*)?\)? out of \d+ "
    r"successfully perturbed"
)


def import_autoattack() -> Any:
    """The reference ``AutoAttack`` class; :class:`EvaluationError` saying how to install it."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as err:
        raise EvaluationError(_INSTALL_HINT) from err
    return AutoAttack


def package_version(name: str) -> str | None:
    """The installed version of ``name`` (recorded in reports), or None when absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


class _AutoAttackLog(logging.Handler):
    """Collects the reference log: per-attack broken counts, its warnings, bar progress."""

    def __init__(self, bar: Any) -> None:
        super().__init__(logging.DEBUG)
        self.bar = bar
        self.broken: dict[str, int] = {}
        self._warnings: dict[str, tuple[str, int]] = {}  # digits-free key -> (first, count)

    @property
    def warnings(self) -> list[str]:
        return [
            msg if count == 1 else f"{msg} (reported {count} times)"
            for msg, count in self._warnings.values()
        ]

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            key = re.sub(r"\d+", "N", msg)
            first, count = self._warnings.get(key, (msg, 0))
            self._warnings[key] = (first, count + 1)
        m = _BATCH_LINE.match(msg)
        if m:
            self.broken[m["attack"]] = self.broken.get(m["attack"], 0) + int(m["broken"])
        elif msg.startswith("robust accuracy after"):
            self.bar.update(1)


def _fork_devices(device: torch.device) -> list[int]:
    """The CUDA device whose RNG ``fork_rng`` must save too (the reference reseeds it)."""
    return [device.index or 0] if device.type == "cuda" else []


def _settings(ctx: EvalContext, spec: AttackSpec, adversary: Any) -> dict[str, Any]:
    """The recorded settings; fits the targeted attacks to a model with < 10 classes."""
    settings: dict[str, Any] = {
        "attack": "autoattack",
        "implementation": f"pyautoattack {package_version('pyautoattack')}",
        "version": AUTOATTACK_VERSION,
        "attacks": list(adversary.attacks_to_run),
        "norm": ctx.norm,
        "eps": spec.eps,
        "seed": ctx.seed,
        "batch_size": ctx.batch_size,
    }
    num_classes = ctx.num_classes
    if num_classes < 10:  # the standard 9 target classes need 10 classes
        if num_classes < 4:
            raise EvaluationError(
                f"standard AutoAttack needs >= 4 classes (targeted DLR "
                f"loss); the model has {num_classes}"
            )
        adversary.apgd_targeted.n_target_classes = num_classes - 1
        adversary.fab.n_target_classes = num_classes - 1
        settings["n_target_classes"] = num_classes - 1
    return settings


@contextlib.contextmanager
def _reference_log(attacks: int, progress: bool) -> Iterator[_AutoAttackLog]:
    """The reference logger routed only to a collecting handler (which also moves the bar)
    while the body runs; its level, propagation and handlers restored afterwards."""
    logger = logging.getLogger("auto-attack")
    saved = (logger.level, logger.propagate)
    with progress_bar(attacks, "autoattack", progress) as bar:
        handler = _AutoAttackLog(bar)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        try:
            yield handler
        finally:
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]


def run_autoattack(ctx: EvalContext, spec: AttackSpec, clean: Tensor) -> AttackResult:
    """Standard AutoAttack through the reference ``run_standard_evaluation``."""
    AutoAttack = import_autoattack()
    started = time.perf_counter()
    x_float = to_float(ctx.x.cpu())
    y_cpu = ctx.y.cpu()
    adversary = AutoAttack(
        ctx.model,
        norm=ctx.norm,
        eps=spec.eps,
        version=AUTOATTACK_VERSION,
        device=ctx.device,
        seed=ctx.seed,
    )
    settings = _settings(ctx, spec, adversary)
    attacks = settings["attacks"]
    with (
        _reference_log(len(attacks), ctx.progress) as handler,
        torch.random.fork_rng(devices=_fork_devices(ctx.device)),
    ):
        _x_adv, y_adv = adversary.run_standard_evaluation(x_float, y_cpu, batch_size=ctx.batch_size)
    for message in handler.warnings:
        log.warning("AutoAttack: %s", message)
    robust = y_adv.cpu() == y_cpu  # y_adv: clean prediction where never broken
    details: dict[str, Any] = {"reference_warnings": handler.warnings}
    if sum(handler.broken.values()) == int(clean.sum()) - int(robust.sum()):
        details["broken_by"] = {a: handler.broken.get(a, 0) for a in attacks}
    if bool((robust & ~clean).any()):
        details["note"] = "AutoAttack's clean pass disagreed with ours on some examples"
    correct = robust & clean
    return AttackResult(
        spec.name, mean(correct), correct, settings, details, seconds=time.perf_counter() - started
    )


def square_broken(ctx: EvalContext, targets: Tensor, *, eps: float, queries: int) -> int | None:
    """How many ``targets`` examples a ``queries``-query Square attack breaks (None when
    pyautoattack is not installed)."""
    try:
        from pyautoattack.square import SquareAttack
    except ImportError:
        return None
    idx = targets.nonzero().flatten()
    attack = SquareAttack(
        ctx.model,
        p_init=0.8,
        n_queries=queries,
        eps=eps,
        norm=ctx.norm,
        n_restarts=1,
        seed=ctx.seed,
        verbose=False,
        device=ctx.device,
        resc_schedule=False,
    )
    broken = 0
    with torch.random.fork_rng(devices=_fork_devices(ctx.device)), torch.no_grad():
        for s in batches(len(idx), ctx.batch_size):
            xb = to_float(ctx.x[idx[s]].to(ctx.device))
            yb = ctx.y[idx[s]].to(ctx.device)
            x_adv = attack.perturb(xb, yb)
            broken += int((ctx.model(x_adv).argmax(1) != yb).sum())
    return broken
