"""Does a compressed model run faster? Dense vs. channel-compact vs. irregular, on the CPU.

For each architecture, the dense model, a channel-mode model compacted by
``dnr.export.compact`` (the pruned channels physically removed) and an irregular (weight-
mode) model at the given densities: weights, MACs (dense: every weight; irregular: nonzeros
only, the work of a sparse kernel), and the median CPU latency at batch 1 and 64. The
speed-up is measured against the dense model and set beside the FLOPs-ideal speed-up
(dense MACs / MACs), so the table shows how much of the arithmetic saving turns into time.

Masks come either from trained runs (``--runs RUN_DIR ...``: a channel run gives the kept
channels it trained; latency does not depend on the weights' values) or, by default, from a
seeded random mask at each density (static channel mask: the uniform channel fraction).

    python benchmarks/export_speed.py                              # vgg16 + resnet18, width 0.5
    python benchmarks/export_speed.py --runs runs/channel_vgg16_w0.5 --out-name export_speed_runs

Results: ``benchmarks/results/<out-name>.{json,md}``. One process, ``--threads`` threads
(default 2, this machine's cores); nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

import dnr
from benchlib.results import RESULTS
from dnr.costs import measure_latency, model_costs
from dnr.export.compact import compact_model
from dnr.fileio import atomic_write_json, atomic_write_text
from dnr.markdown import markdown_table
from dnr.modelfile import load_model, model_from_architecture, read_model_meta
from dnr.sparsity import ChannelMasking, Masking

BATCHES = {1: 50, 64: 7}  # batch -> timed repeats (median), in each of 3 rounds


def timed(models: list[nn.Module], size: int, rounds: int = 3) -> list[dict[int, float]]:
    """Median latency per model and batch; the models take turns over ``rounds`` rounds and
    each keeps its best round, so a burst of background load hits no model alone."""
    best: list[dict[int, float]] = [{b: float("inf") for b in BATCHES} for _ in models]
    for _ in range(rounds):
        for i, model in enumerate(models):
            for b, r in BATCHES.items():
                best[i][b] = min(best[i][b], measure_latency(model, size, b, repeats=r, warmup=3))
    return best


def rows_for(
    label: str, variants: list[tuple[str, float, nn.Module, bool]], size: int
) -> list[dict]:
    """One row per ``(granularity, density, model, nonzero_only)``; the first is the dense model."""
    latencies = timed([model for _, _, model, _ in variants], size)
    rows: list[dict[str, Any]] = []
    for (granularity, density, model, nonzero), latency in zip(variants, latencies):
        costs = model_costs(model, size, nonzero_only=nonzero)
        row: dict[str, Any] = {
            "model": label,
            "granularity": granularity,
            "density": density,
            "params": costs.params,
            "macs": costs.macs,
            "latency_s": {str(b): t for b, t in latency.items()},
        }
        if rows:
            dense = rows[0]
            row["flops_ideal_speedup"] = dense["macs"] / costs.macs
            row["speedup"] = {str(b): dense["latency_s"][str(b)] / t for b, t in latency.items()}
        rows.append(row)
    return rows


def synthetic(arch: str, width: float, densities: list[float], size: int) -> list[dict]:
    """Dense, channel-compact and weight-masked copies of one architecture (random masks)."""

    def build() -> nn.Module:
        torch.manual_seed(0)
        return dnr.create_model(arch, num_classes=10, width=width, input_size=size).eval()

    variants: list[tuple[str, float, nn.Module, bool]] = [("dense", 1.0, build(), False)]
    for d in densities:
        model = build()
        masking = ChannelMasking(model, None, density=d, generator=torch.Generator().manual_seed(0))
        variants.append(
            ("channel (compact)", d, compact_model(model, masking.kept_channels()), False)
        )
        model = build()
        Masking(model, None, density=d, generator=torch.Generator().manual_seed(0))
        variants.append(("weight (masked)", d, model, True))
    return rows_for(f"{arch} w{width}", variants, size)


def from_run(run_dir: Path) -> list[dict]:
    """A trained run's model next to its freshly built dense architecture."""
    meta = read_model_meta(run_dir)
    arch = meta["architecture"]
    size = int(arch.get("input_size", 32))
    model = load_model(run_dir)
    sparsity = meta.get("sparsity", {})
    d = float(sparsity.get("achieved_density", 1.0))
    # the reference is the unpruned architecture, freshly built (not the masked weights)
    dense = model_from_architecture(arch).eval()
    variants: list[tuple[str, float, nn.Module, bool]] = [("dense", 1.0, dense, False)]
    if sparsity.get("mode") == "channel":
        compact = compact_model(model, sparsity["kept_channels"])
        variants.append(("channel (compact)", d, compact, False))
    else:
        variants.append(("weight (masked)", d, model, True))
    return rows_for(f"{arch['name']} w{arch.get('width')} ({run_dir.name})", variants, size)


def markdown(rows: list[dict], threads: int) -> str:
    """The report: size, MACs and latency of every variant, with its speed-up over dense."""
    header = [
        "model",
        "granularity",
        "density",
        "weights",
        "MACs",
        "latency b=1",
        "latency b=64",
        "speed-up b=1",
        "speed-up b=64",
        "FLOPs-ideal speed-up",
        "achieved / ideal (b=64)",
    ]
    table = []
    for r in rows:
        lat = r["latency_s"]
        sp = r.get("speedup")
        ideal = r.get("flops_ideal_speedup")
        table.append(
            [
                r["model"],
                r["granularity"],
                f"{r['density']:.3f}",
                f"{r['params']:,}",
                f"{r['macs'] / 1e6:,.1f}M",
                f"{1e3 * lat['1']:.2f} ms",
                f"{1e3 * lat['64']:.1f} ms",
                f"{sp['1']:.2f}x" if sp else "1.00x",
                f"{sp['64']:.2f}x" if sp else "1.00x",
                f"{ideal:.2f}x" if ideal else "1.00x",
                f"{sp['64'] / ideal:.0%}" if sp and ideal else "–",
            ]
        )
    return "\n".join(
        [
            "# Export speed: dense vs. channel-compact vs. irregular (CPU)",
            "",
            "Written by `benchmarks/export_speed.py`. Latency: median of "
            + ", ".join(f"{r} forward passes at batch {b}" for b, r in BATCHES.items())
            + ", best of 3 rounds in which the models take turns,"
            + f" on the CPU (eval, inference_mode; {threads} threads; torch {torch.__version__}; "
            f"{platform.processor() or platform.machine()}). MACs of the weight-mode rows "
            "count nonzero weights only (what a sparse kernel would do); they run on the same "
            "dense kernels as the dense model, so their speed-up is about 1. Channel rows are "
            "the compact export: a narrower dense model.",
            "",
            markdown_table(header, table),
            "",
        ]
    )


def main() -> None:
    """Measure every variant asked for; write JSON and Markdown."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default="vgg16,resnet18")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--densities", default="0.1,0.05")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--runs", nargs="*", default=[], help="trained run directories instead")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-name", default="export_speed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    if args.runs:
        for run in args.runs:
            rows += from_run(Path(run))
    else:
        densities = [float(d) for d in args.densities.split(",")]
        for arch in args.archs.split(","):
            rows += synthetic(arch, args.width, densities, args.input_size)
    text = markdown(rows, args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"{args.out_name}.json", {"threads": args.threads, "rows": rows})
    atomic_write_text(RESULTS / f"{args.out_name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
