"""Per-seed statistics of a comparison: mean ± s.d. per method, paired differences per pair.

One seed says nothing about whether a gap between two methods is more than seed noise; the
paired difference over seeds (same seed on both sides, :mod:`dnr.stats`) with its 95 % t
interval does, and "reference against itself" (the reference again at seed +
NOISE_SEED_OFFSET) is the interval that identical configurations differ by.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dnr.compare.protocol import NOISE_SEED_OFFSET
from dnr.compare.rows import accuracy_names, figure
from dnr.stats import mean_sd, paired_by_key

__all__ = ["seed_statistics"]

#: One method's figures: metric -> seed -> accuracy (None where the run has none).
Figures = dict[str, dict[int, float | None]]


def seed_statistics(
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    reference: str,
    noise_rows: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Per method and metric the mean and s.d. over seeds; per pair the paired difference
    over seeds (``a - b``, same seed) with its 95 % t interval and verdict.

    Pairs: every method against ``reference``, and against ``static`` when it is compared.
    ``noise_rows`` (the reference at seed + NOISE_SEED_OFFSET) give "reference against
    itself": how far apart identical configurations land, the noise floor of the table.
    """
    metrics = [*accuracy_names(rows), "worst_case"]
    figures = _figures_by_method(rows, methods, metrics)
    return {
        "metrics": metrics,
        "summary": _summary(rows, methods, metrics, figures),
        "differences": _differences(methods, reference, metrics, figures),
        "noise_floor": _noise_floor(noise_rows, reference, metrics, figures),
    }


def _figures_by_method(
    rows: Sequence[dict[str, Any]], methods: Sequence[str], metrics: Sequence[str]
) -> dict[str, Figures]:
    """Each method's figures keyed by seed, so pairs are matched by seed, not position."""
    figures: dict[str, Figures] = {m: {metric: {} for metric in metrics} for m in methods}
    for row in rows:
        for metric in metrics:
            figures[row["method"]][metric][row["seed"]] = figure(row, metric)
    return figures


def _summary(
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    metrics: Sequence[str],
    figures: dict[str, Figures],
) -> list[dict[str, Any]]:
    """Mean and s.d. over seeds of every method and metric (missing figures left out)."""
    return [
        {
            "method": m,
            "seeds": sorted(r["seed"] for r in rows if r["method"] == m),
            "metrics": {
                metric: mean_sd([v for v in figures[m][metric].values() if v is not None]).to_dict()
                for metric in metrics
            },
        }
        for m in methods
    ]


def _pair(
    a: str, b: str, against: str, fig_a: Figures, fig_b: Figures, metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """One entry per metric: the paired difference ``a - b`` over the seeds both have."""
    entries = []
    for metric in metrics:
        seeds, diff = paired_by_key(fig_a[metric], fig_b[metric])
        entries.append(
            {
                "a": a,
                "b": b,
                "against": against,
                "metric": metric,
                "n": diff.n,
                "mean": diff.mean,
                "lo": diff.lo,
                "hi": diff.hi,
                "half_width": diff.half_width,
                "sd": diff.sd,
                "confidence": diff.confidence,
                "verdict": diff.says(a, b),
                "seeds": seeds,
                "diffs": list(diff.diffs),
            }
        )
    return entries


def _differences(
    methods: Sequence[str], reference: str, metrics: Sequence[str], figures: dict[str, Figures]
) -> list[dict[str, Any]]:
    """Every method against the reference, then (when compared) every one against static."""
    differences = []
    for m in methods:
        if m != reference:
            differences += _pair(m, reference, "reference", figures[m], figures[reference], metrics)
    if "static" in methods:
        for m in methods:
            if m != "static":
                differences += _pair(m, "static", "static", figures[m], figures["static"], metrics)
    return differences


def _noise_floor(
    noise_rows: Sequence[dict[str, Any]],
    reference: str,
    metrics: Sequence[str],
    figures: dict[str, Figures],
) -> list[dict[str, Any]] | None:
    """The reference at seed + NOISE_SEED_OFFSET paired with itself at seed; None unmeasured."""
    if not noise_rows:
        return None
    again: Figures = {metric: {} for metric in metrics}
    for row in noise_rows:  # keyed by the seed it is paired with
        for metric in metrics:
            again[metric][row["seed"] - NOISE_SEED_OFFSET] = figure(row, metric)
    name = f"{reference} (seed + {NOISE_SEED_OFFSET})"
    return _pair(name, reference, "itself", again, figures[reference], metrics)
