"""Figures of a run, drawn from its ``metrics.jsonl``: training curves and per-layer density.

``curves.png`` is written when training ends and again by ``dnr report``; both read the
file, not the live run, so the figure of a finished run can always be redrawn. matplotlib
runs on its Agg backend (no display) and is imported only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dnr.fileio import atomic_write, read_jsonl
from dnr.rundir import RunDir

__all__ = ["CURVES_DPI", "PANEL_INCHES", "plot_layer_density", "write_training_curves"]

#: Size of one panel of ``curves.png`` (width, height) in inches, and its resolution: the
#: figure is panels x PANEL_INCHES at CURVES_DPI pixels per inch.
PANEL_INCHES = (5.0, 4.0)
CURVES_DPI = 100

#: The accuracy curves: (record key, label, line style).
_ACCURACIES = (
    ("train_clean_acc", "train clean", ":"),
    ("train_adv_acc", "train adversarial", ":"),
    ("val_clean_acc", "validation clean", "-"),
    ("val_pgd_acc", "validation PGD", "-"),
)


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _density_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The epochs that report per-layer densities, with the initial masks as epoch 0."""
    kept = [r for r in history if "layer_density" in r]
    if kept and "layer_density_init" in kept[0]:
        kept = [{"epoch": 0, "layer_density": kept[0]["layer_density_init"]}, *kept]
    return kept


def _draw_layer_density(ax: Any, history: list[dict[str, Any]], legend: int = 24) -> None:
    """One line per layer over epochs (``history`` from :func:`_density_history`)."""
    from matplotlib.ticker import MaxNLocator

    names = list(history[0]["layer_density"])
    cmap = _pyplot().get_cmap("viridis", max(len(names), 2))
    epochs = [r["epoch"] for r in history]
    for i, name in enumerate(names):
        values = [r["layer_density"].get(name) for r in history]
        ax.plot(epochs, values, color=cmap(i), label=name)
    ax.set_xlabel("epoch (0 = initial masks)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("layer density (after rewiring)")
    ax.grid(alpha=0.3)
    if len(names) <= legend:
        ax.legend(fontsize=6, ncol=2, loc="upper right")


def _epoch_axis(ax: Any) -> None:
    """Epochs on the x axis, at whole numbers."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _draw_loss(ax: Any, history: list[dict[str, Any]]) -> None:
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r.get("train_loss") for r in history], marker="o", ms=3)
    ax.set_title("training loss")
    _epoch_axis(ax)


def _draw_accuracy(ax: Any, history: list[dict[str, Any]]) -> None:
    """Train (dotted) and validation (solid) accuracies; epochs without one are skipped."""
    for key, label, style in _ACCURACIES:
        points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, [100 * y for y in ys], style, marker="o", ms=3, label=label)
    ax.set_title("accuracy (validation PGD selects the epoch)")
    ax.set_ylabel("%")
    _epoch_axis(ax)
    if ax.lines:
        ax.legend(fontsize=7)


def write_training_curves(run_dir: str | Path) -> Path | None:
    """``curves.png``: loss, accuracies and (sparse runs) per-layer density per epoch.

    None when the run has no epoch yet. The figure has a fixed size: 2 panels (3 with
    per-layer densities) of :data:`PANEL_INCHES` at :data:`CURVES_DPI`.
    """
    run = RunDir(Path(run_dir))
    history = [r for r in read_jsonl(run.metrics) if "epoch" in r]
    if not history:
        return None
    density = _density_history(history)
    plt = _pyplot()
    panels = 3 if density else 2
    width, height = PANEL_INCHES
    fig, axes = plt.subplots(1, panels, figsize=(width * panels, height), dpi=CURVES_DPI)
    _draw_loss(axes[0], history)
    _draw_accuracy(axes[1], history)
    if density:
        _draw_layer_density(axes[2], density, legend=12)
        axes[2].set_title("per-layer density")
    fig.tight_layout()
    atomic_write(run.curves_plot, lambda tmp: fig.savefig(tmp, dpi=CURVES_DPI, format="png"))
    plt.close(fig)
    return run.curves_plot


def plot_layer_density(run_dir: str | Path) -> Path | None:
    """Per-layer density over epochs (the paper's figure); None for dense runs."""
    run = RunDir(Path(run_dir))
    history = _density_history(read_jsonl(run.metrics))
    if not history:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    _draw_layer_density(ax, history)
    ax.set_title("Per-layer density over training")
    fig.tight_layout()
    atomic_write(run.layer_density_plot, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return run.layer_density_plot
