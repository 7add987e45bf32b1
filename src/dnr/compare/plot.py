"""comparison.png: clean vs. worst-case robust accuracy per method (mean ± s.d. over seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dnr.fileio import atomic_write
from dnr.stats import mean_sd

__all__ = ["plot_comparison"]


def plot_comparison(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Clean vs. worst-case robust accuracy, one labelled point per method (Agg backend);
    with several seeds per method the point is the mean, its error bars ± one s.d."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["clean_accuracy"] is not None and r["worst_case_accuracy"] is not None:
            by_method.setdefault(r["method"], []).append(
                (100 * r["clean_accuracy"], 100 * r["worst_case_accuracy"])
            )
    labels: dict[tuple[float, float], list[str]] = {}  # methods on one spot share a label
    spread: dict[tuple[float, float], tuple[float, float]] = {}
    for method, figures in by_method.items():
        x, y = mean_sd([c for c, _ in figures]), mean_sd([w for _, w in figures])
        assert x.mean is not None and y.mean is not None  # figures is not empty
        spot = (x.mean, y.mean)
        labels.setdefault(spot, []).append(method)
        spread[spot] = (x.sd or 0.0, y.sd or 0.0)
    points = [(", ".join(names), clean, robust) for (clean, robust), names in labels.items()]
    seeds = max((len(f) for f in by_method.values()), default=1)
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, clean, robust in points:
        if seeds > 1:
            xerr, yerr = spread[clean, robust]
            ax.errorbar([clean], [robust], xerr=[xerr], yerr=[yerr], fmt="o", capsize=3)
        else:
            ax.scatter([clean], [robust], s=40)
        ax.annotate(name, (clean, robust), textcoords="offset points", xytext=(5, 5))
    if points:
        low = min(min(p[1], p[2]) for p in points)
        high = max(max(p[1], p[2]) for p in points)
        pad = max(2.0, 0.1 * (high - low), *(max(e) + 1.0 for e in spread.values()))
        lo, hi = max(0.0, low - pad), min(100.0, high + pad)
        ax.plot([lo, hi], [lo, hi], "--", color="grey", linewidth=0.8, label="robust = clean")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run has both clean and worst-case accuracy", ha="center")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("worst-case robust accuracy (%)")
    title = "Clean vs. worst-case robust accuracy"
    ax.set_title(title if seeds == 1 else f"{title}\n(mean ± s.d. over {seeds} seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return Path(path)
