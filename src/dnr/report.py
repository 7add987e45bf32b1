"""Human-readable summaries of a run: compression table, cost, evaluation, training curves.

The figures themselves are drawn by :mod:`dnr.plots` (re-exported here for the callers of
``plot_layer_density``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dnr.costs import Costs, measure_latency, model_costs
from dnr.fileio import atomic_write_text, read_jsonl
from dnr.markdown import markdown_table
from dnr.modelfile import load_model, read_model_meta
from dnr.plots import plot_layer_density, write_training_curves
from dnr.rundir import ArtifactError, RunDir

__all__ = [
    "compression_table",
    "cost_section",
    "plot_layer_density",
    "summarize_run",
    "write_report",
    "write_training_curves",
]

#: Batch sizes timed by the cost section, and the timed passes (median) for each.
LATENCY_REPEATS: dict[int, int] = {1: 20, 64: 5}


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


def _millions(count: int) -> str:
    """A count in millions, as MACs are read."""
    return f"{count / 1e6:,.2f}M"


def _ratio(reference: float, value: float) -> str:
    """How many times smaller ``value`` is; "–" where it is zero."""
    return f"{reference / value:.1f}x" if value > 0 else "–"


def _latencies(model: nn.Module, input_size: int) -> dict[int, float]:
    """Median CPU latency per batch size of LATENCY_REPEATS."""
    return {
        batch: measure_latency(model, input_size, batch, repeats=repeats, warmup=2)
        for batch, repeats in LATENCY_REPEATS.items()
    }


def cost_section(run_dir: str | Path, meta: dict[str, Any], *, latency: bool = False) -> str:
    """Weights, MACs and (with ``latency``) CPU latency: dense, nonzero, compact.

    Dense counts every weight of the architecture; "nonzero" only the weights a sparse
    kernel would touch; a channel-mode run adds its compact model (the pruned channels
    removed), the one form of sparsity that dense kernels turn into time.
    """
    try:
        model = load_model(run_dir)
    except ArtifactError as err:
        return f"Not computed: {err}."
    size = int(meta["architecture"].get("input_size", 32))
    rows = _cost_rows(model, meta, size)
    timed: dict[str, dict[int, float]] = {}
    if latency:
        for label, _, timed_model in rows:
            if timed_model is not None:
                timed[label] = _latencies(timed_model, size)
    dense = rows[0][1]
    lines = [
        _cost_table(rows, timed, latency),
        f"Weights: Conv2d/Linear weights (the prunable tensors); with biases, BatchNorm and "
        f"the rest, {dense.total_params:,} parameters in all. MACs: multiply-accumulates of "
        f"the Conv2d/Linear layers for one {size}x{size} image; the nonzero row counts only "
        "nonzero weights, the work of a sparse kernel.",
        _latency_note(latency),
    ]
    return "\n\n".join(lines)


#: One row of the cost table: its label, its costs, and the model to time (None: not timed,
#: as the nonzero row runs on the dense kernels of the dense row).
CostRow = tuple[str, Costs, nn.Module | None]


def _cost_rows(model: nn.Module, meta: dict[str, Any], size: int) -> list[CostRow]:
    """Dense, nonzero-only and (channel mode) compact costs, dense first."""
    from dnr.export.base import kept_channels
    from dnr.export.compact import compact_model

    dense = model_costs(model, size)
    rows: list[CostRow] = [
        ("dense architecture", dense, model),
        ("nonzero weights", model_costs(model, size, nonzero_only=True), None),
    ]
    kept = kept_channels(meta)
    if kept is not None:
        compact = compact_model(model, kept).eval()
        rows.append(("compact (pruned channels removed)", model_costs(compact, size), compact))
    return rows


def _cost_table(rows: list[CostRow], timed: dict[str, dict[int, float]], latency: bool) -> str:
    """The cost table; with ``latency`` the timings and speed-ups against the dense row."""
    dense = rows[0][1]
    batches = list(LATENCY_REPEATS)
    header = ["model", "weights", "MACs / image", "MACs vs dense"]
    if latency:
        header += [f"latency b={b}" for b in batches] + [
            "speed-up " + " / ".join(f"b={b}" for b in batches)
        ]
    table = []
    for label, costs, _ in rows:
        row = [label, f"{costs.params:,}", _millions(costs.macs), _ratio(dense.macs, costs.macs)]
        if latency:
            if label in timed:
                row += [f"{timed[label][b] * 1e3:.2f} ms" for b in batches]
                ref = timed["dense architecture"]
                row.append(" / ".join(_ratio(ref[b], timed[label][b]) for b in batches))
            else:
                row += ["as dense"] * len(batches) + ["1.0x (dense kernels)"]
        table.append(row)
    return markdown_table(header, table)


def _latency_note(latency: bool) -> str:
    """How the latencies were measured, and why masked zeros do not make a model faster."""
    if not latency:
        return "Latency: not measured (`dnr report` measures it unless `--no-latency`)."
    batches = list(LATENCY_REPEATS)
    return (
        "Latency: median of "
        + ", ".join(f"{LATENCY_REPEATS[b]} (b={b})" for b in batches)
        + f" CPU forward passes (eval, inference_mode, torch {torch.__version__}, "
        f"threads: {torch.get_num_threads()}). Irregular zeros do not speed up dense "
        "kernels: the masked model runs at the dense latency whatever its MAC count."
    )


def summarize_run(run_dir: str | Path, *, latency: bool = False) -> str:
    """The Markdown summary ``dnr report`` prints and writes to ``report.md``.

    ``latency`` times the model on the CPU (seconds for a large one); off by default so
    the report written after training and evaluation costs nothing noticeable.
    """
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
    parts += ["", "## Cost", "", cost_section(run.path, meta, latency=latency)]
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
    if run.curves_plot.exists():
        parts += ["", f"![training curves]({run.curves_plot.name})"]
    return "\n".join(parts) + "\n"


def write_report(run_dir: str | Path, *, latency: bool = False) -> Path:
    """Write report.md atomically, so a reader never sees half a report."""
    run = RunDir(Path(run_dir))
    atomic_write_text(run.report_md, summarize_run(run.path, latency=latency))
    return run.report_md
