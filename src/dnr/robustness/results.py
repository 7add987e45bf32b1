"""What an evaluation produced: per-attack accuracies with their exact settings, sanity
verdicts, and the report that eval.json (``to_dict``) and eval.md (``to_markdown``) store.

An example counts as robust under an attack only if the clean input *and* the adversarial
input are classified correctly (as AutoAttack counts), so robust ≤ clean by construction and
the per-example worst case is the AND of every attack's flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from dnr.markdown import markdown_table
from dnr.registry import PROTOCOLS

__all__ = ["AttackResult", "EvalReport", "SanityCheck", "Status", "format_eps", "mean"]

Status = Literal["PASS", "WARN"]


def mean(flags: Tensor) -> float:
    """Fraction of True flags, as an exact ratio of counts (no float32 rounding)."""
    return int(flags.sum()) / flags.numel() if flags.numel() else 0.0


def format_eps(eps: float) -> str:
    """``8/255`` for whole multiples of 1/255, else 4 significant digits."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) > 0 else f"{eps:.4g}"


def _format_settings(settings: dict[str, Any]) -> str:
    parts = []
    for k, v in settings.items():
        if k in ("eps", "step_size") and isinstance(v, float):
            v = format_eps(v)
        elif isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (list, tuple)):
            v = (
                "["
                + ", ".join(
                    format_eps(e)
                    if k.startswith("eps") and isinstance(e, float)
                    else f"{e:.4g}"
                    if isinstance(e, float)
                    else str(e)
                    for e in v
                )
                + "]"
            )
        parts.append(f"{k}={v}")
    return ", ".join(parts)


@dataclass
class AttackResult:
    """One attack's accuracy with the exact settings that produced it."""

    name: str
    accuracy: float
    correct: Tensor = field(repr=False)  # bool per example (clean and adversarial correct), CPU
    settings: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def num_correct(self) -> int:
        return int(self.correct.sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "accuracy": self.accuracy,
            "num_correct": self.num_correct,
            "num_examples": int(self.correct.numel()),
            "settings": dict(self.settings),
            "details": dict(self.details),
            "seconds": round(self.seconds, 3),
        }


@dataclass
class SanityCheck:
    """A PASS/WARN verdict, the numbers behind it and what a WARN would mean."""

    name: str
    status: Status
    numbers: dict[str, Any]
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "numbers": dict(self.numbers),
            "explanation": self.explanation,
        }


@dataclass
class EvalReport:
    """Everything one evaluation produced; ``to_dict`` is what eval.json stores."""

    protocol: str
    results: list[AttackResult]
    sanity: list[SanityCheck]
    subset_indices: list[int] | None
    num_examples: int
    seed: int
    versions: dict[str, str | None]
    device: str
    norm: str = "Linf"
    num_classes: int | None = None
    batch_size: int | None = None
    seconds: float = 0.0
    sanity_seconds: float = 0.0  # of ``seconds``: the sanity checks' extra attacks

    def result(self, name: str) -> AttackResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no result named {name!r}; have {[r.name for r in self.results]}")

    @property
    def worst_case(self) -> AttackResult | None:
        """Per-example worst case over all attacks (None unless ≥ 2 attacks ran)."""
        attacks = [r for r in self.results if r.name != "clean"]
        if len(attacks) < 2:
            return None
        correct = torch.stack([r.correct for r in self.results]).all(dim=0)
        return AttackResult(
            name="worst_case",
            accuracy=mean(correct),
            correct=correct,
            settings={
                "combines": [r.name for r in self.results],
                "eps": max(float(r.settings.get("eps", 0.0)) for r in attacks),
                "norm": self.norm,
            },
        )

    @property
    def all_passed(self) -> bool:
        return all(c.status == "PASS" for c in self.sanity)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (per-example flags are left out; counts are kept)."""
        results = [r.to_dict() for r in self.results]
        worst = self.worst_case
        if worst is not None:
            results.append(worst.to_dict())
        description = PROTOCOLS.get(self.protocol).description if self.protocol in PROTOCOLS else ""
        return {
            "protocol": self.protocol,
            "protocol_description": description,
            "norm": self.norm,
            "num_examples": self.num_examples,
            "num_classes": self.num_classes,
            "seed": self.seed,
            "subset_indices": self.subset_indices,
            "batch_size": self.batch_size,
            "device": self.device,
            "versions": dict(self.versions),
            "results": results,
            "worst_case_accuracy": None if worst is None else worst.accuracy,
            "sanity": [c.to_dict() for c in self.sanity],
            "sanity_passed": self.all_passed,
            "seconds": round(self.seconds, 3),
            "sanity_seconds": round(self.sanity_seconds, 3),
        }

    def to_markdown(self) -> str:
        rows = [
            [
                r.name,
                f"{100 * r.accuracy:.2f}%",
                str(r.num_correct),
                f"{r.seconds:.1f}",
                _format_settings(r.settings),
            ]
            for r in self.results
        ]
        worst = self.worst_case
        if worst is not None:
            rows.append(
                [
                    "**worst case**",
                    f"**{100 * worst.accuracy:.2f}%**",
                    str(worst.num_correct),
                    "",
                    "robust only if it survives every attack above",
                ]
            )
        subset = (
            "all examples"
            if self.subset_indices is None
            else f"seeded random subset (seed {self.seed})"
        )
        lines = [
            f"Protocol `{self.protocol}`, {self.norm}, {self.num_examples} examples "
            f"({subset}), device {self.device}, fp32.",
            "",
            markdown_table(["attack", "accuracy", "correct", "seconds", "settings"], rows),
        ]
        if self.sanity:
            lines += [
                "",
                markdown_table(
                    ["sanity check", "status", "numbers", "explanation"],
                    [
                        [c.name, c.status, _format_settings(c.numbers), c.explanation]
                        for c in self.sanity
                    ],
                ),
            ]
        lines += ["", self.time_line()]
        return "\n".join(lines)

    def time_line(self) -> str:
        """Where the evaluation's time went: it dominates short runs, sanity checks most."""
        line = f"Evaluation took {self.seconds:.1f} s"
        if self.sanity:
            line += (
                f", {self.sanity_seconds:.1f} s of it in the sanity checks' extra attacks "
                "(eval.sanity=false skips them)"
            )
        return line + "."
