"""Robustness evaluation: the protocols a careful reviewer would run, with sanity checks.

``evaluate_model(model, x, y, protocol=...)`` runs a protocol from
:data:`dnr.registry.PROTOCOLS` (see :func:`list_protocols`) and returns an
:class:`EvalReport` whose every number sits next to the exact settings that produced it.

Modules: ``protocols`` (attack specs, the registered protocols), ``context`` (the
:class:`EvalContext` every attack and check reads), ``engine`` (batched fp32
attack loops, subsets), ``autoattack`` (the reference AutoAttack adapter), ``sanity``
(gradient-masking checks), ``results`` (reports), ``evaluate`` (the entry points).
"""

from __future__ import annotations

from dnr.registry import PROTOCOLS
from dnr.robustness.engine import EvaluationError, default_batch_size, select_subset
from dnr.robustness.evaluate import clean_accuracy, evaluate_model, pgd_accuracy
from dnr.robustness.protocols import AttackSpec, Protocol
from dnr.robustness.results import AttackResult, EvalReport, SanityCheck

__all__ = [
    "AttackResult",
    "AttackSpec",
    "EvalReport",
    "EvaluationError",
    "Protocol",
    "SanityCheck",
    "clean_accuracy",
    "default_batch_size",
    "evaluate_model",
    "list_protocols",
    "pgd_accuracy",
    "select_subset",
]


def list_protocols() -> list[str]:
    """The registered protocol names, sorted."""
    return PROTOCOLS.names()
