"""Paired differences over seeds: is "A beats B" more than seed-to-seed noise?

Two methods trained with the same seeds share their data order, initial weights and mask
draws, so the per-seed difference ``a[seed] - b[seed]`` cancels much of what a seed moves.
Its mean over seeds gets a Student-t interval (the seeds are few, and their spread is
estimated from themselves); "A ahead" is said only when that interval excludes zero.

Pure Python (no numpy, no scipy): the t quantile inverts the t distribution function,
computed from the regularised incomplete beta function.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

__all__ = [
    "MeanSD",
    "PairedDifference",
    "Verdict",
    "mean_sd",
    "paired_by_key",
    "paired_difference",
    "t_cdf",
    "t_quantile",
]

K = TypeVar("K", bound=Hashable)

#: "A ahead": the whole interval above zero; "B ahead": below; otherwise (or with fewer
#: than two pairs, when there is no interval) "no difference shown".
Verdict = Literal["A ahead", "B ahead", "no difference shown"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):  # where the continued fraction converges fast
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p (e.g. ``t_quantile(0.975, 2)`` = 4.3027).

    Bisection on :func:`t_cdf`: slow by numerical standards, exact to ~1e-12 and called a
    handful of times per table.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # bracket: the Cauchy (df = 1) tail needs hi ~ 1/(1 - p)
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class MeanSD:
    """Mean and sample standard deviation (n - 1) of one method's figure over seeds;
    ``sd`` is None for fewer than two values (one run says nothing about the spread)."""

    n: int
    mean: float | None
    sd: float | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, for the documents that record it."""
        return asdict(self)


def mean_sd(values: Sequence[float]) -> MeanSD:
    """Mean and sample standard deviation of ``values``."""
    n = len(values)
    if n == 0:
        return MeanSD(0, None, None)
    mean = math.fsum(values) / n
    if n < 2:
        return MeanSD(n, mean, None)
    return MeanSD(n, mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)))


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the per-pair differences ``a - b`` with its Student-t interval.

    ``lo``/``hi``/``half_width`` are None for fewer than two pairs: no interval can be given.
    """

    n: int
    mean: float | None
    sd: float | None
    lo: float | None
    hi: float | None
    half_width: float | None
    confidence: float
    verdict: Verdict
    diffs: tuple[float, ...]

    def says(self, a: str, b: str) -> str:
        """The verdict with names: ``"dnr ahead"``, ``"static ahead"`` or as it is."""
        return {"A ahead": f"{a} ahead", "B ahead": f"{b} ahead"}.get(self.verdict, self.verdict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``diffs`` as a list), for the documents that record it."""
        document = asdict(self)
        document["diffs"] = list(self.diffs)
        return document


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> PairedDifference:
    """``a[i] - b[i]`` over the pairs: mean, ``confidence`` t interval, verdict.

    The interval is mean ± t(1 - alpha/2, n - 1) · sd / sqrt(n): it treats the pairs (seeds)
    as independent draws, and says nothing about seeds the run did not draw. Identical
    differences (zero spread) give a zero-width interval and no verdict.
    """
    if len(a) != len(b):
        raise ValueError(f"paired figures need equal lengths, got {len(a)} and {len(b)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diffs = tuple(float(x) - float(y) for x, y in zip(a, b))
    spread = mean_sd(diffs)
    n, mean, sd = spread.n, spread.mean, spread.sd
    if mean is None or sd is None:  # fewer than two pairs
        return PairedDifference(
            n, mean, None, None, None, None, confidence, "no difference shown", diffs
        )
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    verdict: Verdict = "A ahead" if lo > 0 else "B ahead" if hi < 0 else "no difference shown"
    if sd <= 1e-12 * max(1.0, abs(mean)):
        # identical differences: accuracies are multiples of 1/examples, so a few seeds can
        # agree exactly; a zero-width interval says nothing about the next seed
        verdict = "no difference shown"
    return PairedDifference(n, mean, sd, lo, hi, half, confidence, verdict, diffs)


def paired_by_key(
    a: Mapping[K, float | None], b: Mapping[K, float | None], confidence: float = 0.95
) -> tuple[list[K], PairedDifference]:
    """Pair two ``{seed: figure}`` maps by key (a seed missing or None on either side is left
    out: an unpaired figure would bring its seed's luck into the difference)."""
    keys = [k for k in a if k in b and a[k] is not None and b[k] is not None]
    xs = [float(a[k]) for k in keys]  # type: ignore[arg-type]  # None filtered above
    ys = [float(b[k]) for k in keys]  # type: ignore[arg-type]
    return keys, paired_difference(xs, ys, confidence)
