"""The controls benchmark's figures, each answering one question from the results alone.

* ``dnr_vs_controls_curves.png``: is DNR ahead of its control, epoch by epoch? One small
  panel per (DNR run, control) pair: DNR − control validation PGD-3 accuracy, one line per
  seed both ran and their mean, on one shared scale.
* ``dnr_vs_controls_before.png``: did the new recipe and rewiring help each method? The
  default run − its "before" run (the paper's rewiring, no warm-up), per method, seed 0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchlib.results import RESULTS

Record = dict[str, Any]

#: (DNR run, its control): the pairs whose curves the first figure compares.
CURVE_PAIRS = [
    ("dnr-uniform", "static-uniform"),
    ("dnr-erk", "static-erk"),
    ("dnr-uniform", "dense"),
    ("dnr-channel d=0.1", "static-channel d=0.1"),
    ("dnr-uniform x4 epochs", "static-uniform x4 epochs"),
    ("dnr-erk x4 epochs", "static-erk x4 epochs"),
    ("dnr-weight d=0.1", "static-weight d=0.1"),
    ("dnr-channel d=0.1 x4 epochs", "static-channel d=0.1 x4 epochs"),
]
#: (method as run now, the same method "before"): the second figure's lines.
BEFORE_PAIRS = [
    ("dense", "dense-before"),
    ("static-uniform", "static-uniform-before"),
    ("dnr-uniform", "dnr-uniform-before"),
    ("dnr-erk", "dnr-erk-before"),
]
SEED_COLOURS = [  # distinct (no grey: the mean is black), up to nine seeds
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
]
METHOD_COLOURS = ["tab:gray", "tab:blue", "tab:orange", "tab:green"]


def val_pgd(r: Record) -> list[float]:
    """Validation PGD-3 accuracy (%) per epoch (NaN where an epoch was not validated)."""
    return [math.nan if h["val_pgd_acc"] is None else 100 * h["val_pgd_acc"] for h in r["history"]]


def gap(first: Record, second: Record) -> list[float]:
    """``first`` − ``second`` validation PGD-3 accuracy (percentage points) per epoch."""
    return [a - b for a, b in zip(val_pgd(first), val_pgd(second))]


def by_seed(rs: list[Record], name: str, n: int) -> dict[int, Record]:
    """The runs named ``name`` scored on ``n`` test images, by seed."""
    return {r["seed"]: r for r in rs if r["name"] == name and r["test_final"]["clean"]["n"] == n}


def seed_gaps(rs: list[Record], first: str, second: str, n: int) -> dict[int, list[float]]:
    """Per seed both ran: ``first`` − ``second`` per epoch."""
    a, b = by_seed(rs, first, n), by_seed(rs, second, n)
    return {seed: gap(a[seed], b[seed]) for seed in sorted(a) if seed in b}


def draw_gaps(ax: Any, gaps: dict[int, list[float]], title: str) -> None:
    """One panel: a thin line per seed, their mean in black, and the zero line."""
    ax.axhline(0, color="black", linewidth=0.8, linestyle=":")
    for seed, values in gaps.items():
        epochs = range(1, len(values) + 1)
        colour = SEED_COLOURS[seed % len(SEED_COLOURS)]
        ax.plot(epochs, values, color=colour, linewidth=1, alpha=0.8, label=f"seed {seed}")
    if len(gaps) > 1:
        rows = list(gaps.values())
        mean = [sum(col) / len(col) for col in zip(*rows)]
        ax.plot(range(1, len(mean) + 1), mean, color="black", linewidth=2, label="mean")
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)


def plot_controls(rs: list[Record], n: int, path: Path) -> None:
    """DNR − control, validation PGD-3 per epoch, one panel per pair (shared y scale)."""
    import matplotlib.pyplot as plt

    pairs = [(a, b, seed_gaps(rs, a, b, n)) for a, b in CURVE_PAIRS]
    pairs = [(a, b, g) for a, b, g in pairs if g]
    cols = 4
    rows = max(1, -(-len(pairs) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3 * rows), sharey=True, squeeze=False)
    for ax, (first, second, gaps) in zip(axes.flat, pairs):
        draw_gaps(ax, gaps, f"{first}\n− {second}")
    for ax in list(axes.flat)[len(pairs) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("Δ val PGD-3 acc. (pp)", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("epoch", fontsize=8)
    seeds = sorted({seed for _, _, gaps in pairs for seed in gaps})
    handles = [
        plt.Line2D(
            [], [], color=SEED_COLOURS[s % len(SEED_COLOURS)], linewidth=1, label=f"seed {s}"
        )
        for s in seeds
    ] + [plt.Line2D([], [], color="black", linewidth=2, label="mean over seeds")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.suptitle("Is DNR ahead of its control? DNR − control, epoch by epoch (above 0: DNR)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_before(rs: list[Record], n: int, path: Path) -> None:
    """Now − before, validation PGD-3 per epoch, one line per method (seed 0)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axhline(0, color="black", linewidth=0.8, linestyle=":")
    for (now, before), colour in zip(BEFORE_PAIRS, METHOD_COLOURS):
        gaps = seed_gaps(rs, now, before, n)
        if 0 in gaps:
            epochs = range(1, len(gaps[0]) + 1)
            ax.plot(epochs, gaps[0], color=colour, marker="o", markersize=3, label=now)
    ax.set(xlabel="epoch", ylabel="Δ val PGD-3 acc. (pp)")
    ax.set_title("Did the new recipe and rewiring help? Now − before (seed 0)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_figures(rs: list[Record], n: int, out: Path = RESULTS) -> None:
    """Both figures of the runs scored on ``n`` test images, into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    plot_controls(rs, n, out / "dnr_vs_controls_curves.png")
    plot_before(rs, n, out / "dnr_vs_controls_before.png")
