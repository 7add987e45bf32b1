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

import importlib.metadata
import logging
import re
import time
from typing import Any

import torch
from torch import Tensor, nn

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


def run_autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    spec: AttackSpec,
    *,
    clean: Tensor,
    norm: str,
    seed: int,
    batch_size: int,
    device: torch.device,
    num_classes: int,
    progress: bool,
) -> AttackResult:
    """Standard AutoAttack through the reference ``run_standard_evaluation``."""
    AutoAttack = import_autoattack()
    started = time.perf_counter()
    x_float = to_float(x.cpu())
    y_cpu = y.cpu()
    adversary = AutoAttack(
        model, norm=norm, eps=spec.eps, version=AUTOATTACK_VERSION, device=device, seed=seed
    )
    attacks = list(adversary.attacks_to_run)
    settings: dict[str, Any] = {
        "attack": "autoattack",
        "implementation": f"pyautoattack {package_version('pyautoattack')}",
        "version": AUTOATTACK_VERSION,
        "attacks": attacks,
        "norm": norm,
        "eps": spec.eps,
        "seed": seed,
        "batch_size": batch_size,
    }
    if num_classes < 10:  # the standard 9 target classes need 10 classes
        if num_classes < 4:
            raise EvaluationError(
                f"standard AutoAttack needs >= 4 classes (targeted DLR "
                f"loss); the model has {num_classes}"
            )
        adversary.apgd_targeted.n_target_classes = num_classes - 1
        adversary.fab.n_target_classes = num_classes - 1
        settings["n_target_classes"] = num_classes - 1

    logger = logging.getLogger("auto-attack")
    saved = (logger.level, logger.propagate)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with progress_bar(len(attacks), "autoattack", progress) as bar:
        handler = _AutoAttackLog(bar)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        try:
            with torch.random.fork_rng(devices=fork_devices):
                _x_adv, y_adv = adversary.run_standard_evaluation(
                    x_float, y_cpu, batch_size=batch_size
                )
        finally:
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]
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


def square_broken(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    targets: Tensor,
    *,
    eps: float,
    norm: str,
    queries: int,
    seed: int,
    batch_size: int,
    device: torch.device,
) -> int | None:
    """How many ``targets`` examples a ``queries``-query Square attack breaks (None when
    pyautoattack is not installed)."""
    try:
        from pyautoattack.square import SquareAttack
    except ImportError:
        return None
    idx = targets.nonzero().flatten()
    attack = SquareAttack(
        model,
        p_init=0.8,
        n_queries=queries,
        eps=eps,
        norm=norm,
        n_restarts=1,
        seed=seed,
        verbose=False,
        device=device,
        resc_schedule=False,
    )
    broken = 0
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), torch.no_grad():
        for s in batches(len(idx), batch_size):
            xb = to_float(x[idx[s]].to(device))
            yb = y[idx[s]].to(device)
            x_adv = attack.perturb(xb, yb)
            broken += int((model(x_adv).argmax(1) != yb).sum())
    return broken
