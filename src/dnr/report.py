"""Human-readable summaries of a run: compression table, evaluation, density plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dnr.artifacts import ArtifactError, RunDir, read_model_meta
from dnr.fileio import atomic_write, atomic_write_text, read_jsonl
from dnr.markdown import markdown_table


def compression_table(meta: dict[str, Any]) -> str:
    """Per-layer shapes, densities and kept parameters, plus the overall ratio."""
    sparsity = meta.get("sparsity", {})
    layers = sparsity.get("layers")
    if not layers:
        return "Dense model: every weight is kept (compression 1.0x)."
    rows, kept_total, all_total = [], 0, 0
    for name, info in layers.items():
        numel = 1
        for dim in info["shape"]:
            numel *= dim
        kept = int(info.get("active", round(info["density"] * numel)))
        kept_total += kept
        all_total += numel
        shape = "x".join(str(d) for d in info["shape"])
        rows.append([name, shape, f"{info['density']:.4f}", f"{kept:,} / {numel:,}"])
    ratio = all_total / max(kept_total, 1)
    rows.append(
        ["**total**", "", f"{kept_total / all_total:.4f}", f"{kept_total:,} / {all_total:,}"]
    )
    lines = [
        markdown_table(["layer", "shape", "density", "weights kept"], rows),
        "",
        f"Compression: **{ratio:.1f}x** (target density {sparsity.get('target_density')}, "
        f"achieved {sparsity.get('achieved_density', kept_total / all_total):.6f}). "
        f"Prunable: {sparsity.get('prunable', 'weights of Conv2d and Linear layers')}; "
        "biases, BatchNorm and the input normalization are not prunable and not counted.",
    ]
    return "\n".join(lines)


def summarize_run(run_dir: str | Path) -> str:
    """The Markdown summary ``dnr report`` prints and writes to ``report.md``."""
    run = RunDir(Path(run_dir))
    if not run.path.is_dir():
        raise ArtifactError(f"run directory not found: {run.path}")
    meta = read_model_meta(run.path)
    arch = meta["architecture"]
    parts = [
        f"# Run {run.path}",
        "",
        f"Model: {arch['name']} (width {arch.get('width')}, {arch['num_classes']} classes, "
        f"{arch.get('input_size')}px input); sparsity method: "
        f"{meta.get('sparsity', {}).get('method', 'dense')}.",
    ]
    selection = meta.get("selection")
    if selection:
        parts.append(
            f"Selected epoch {selection['epoch']} by {selection['by']} = {selection['value']:.4f}."
        )
    parts += ["", "## Compression", "", compression_table(meta)]
    if run.eval_md.exists():
        parts += ["", "## Evaluation (test set)", "", run.eval_md.read_text().strip()]
    history = read_jsonl(run.metrics)
    if history:
        last = history[-1]
        parts += [
            "",
            "## Training",
            "",
            f"{len(history)} epochs; last epoch {last.get('images_per_sec', 0):.0f} images/s, "
            f"train loss {last.get('train_loss', float('nan')):.4f}.",
        ]
    return "\n".join(parts) + "\n"


def write_report(run_dir: str | Path) -> Path:
    run = RunDir(Path(run_dir))
    atomic_write_text(run.report_md, summarize_run(run.path))
    return run.report_md


def plot_layer_density(run_dir: str | Path) -> Path | None:
    """Per-layer density over epochs (the paper's figure); None for dense runs."""
    run = RunDir(Path(run_dir))
    history = [r for r in read_jsonl(run.metrics) if "layer_density" in r]
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = list(history[0]["layer_density"])
    if "layer_density_init" in history[0]:  # the initial masks, before any rewiring
        history = [{"epoch": 0, "layer_density": history[0]["layer_density_init"]}, *history]
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cmap = plt.get_cmap("viridis", max(len(names), 2))
    for i, name in enumerate(names):
        ax.plot(epochs, [r["layer_density"][name] for r in history], color=cmap(i), label=name)
    ax.set_xlabel("epoch (0 = initial masks)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("layer density (after rewiring)")
    ax.set_title("Per-layer density over training")
    ax.grid(alpha=0.3)
    if len(names) <= 24:
        ax.legend(fontsize=6, ncol=2, loc="upper right")
    fig.tight_layout()
    atomic_write(run.layer_density_plot, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return run.layer_density_plot
