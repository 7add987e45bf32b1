"""Timing the cases of one model and turning the times into the report's rows.

Per-image cost: each repeat times a short and a long slice of an epoch and takes the
difference, so fixed costs (epoch start, workers, the final sync) cancel; the cases are
measured interleaved, in a rotating order, so drift of the machine hits every row alike.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from benchlib.results import spread
from benchlib.throughput.cases import (
    METHODS,
    Case,
    build_model,
    mode_overrides,
    ours_case,
    reference_case,
)
from benchlib.throughput.passes import forward_passes
from benchlib.throughput.profile import profile_ops, profile_phases
from dnr.costs import model_costs
from dnr.data.loader import Split
from dnr.training.step import train_mode

Row = dict[str, Any]


@dataclass
class Setup:
    """What every model's cases share: the grid, the data, the device and its peaks."""

    methods: list[str]
    modes: list[str]
    extra: list[str]  # --bf16/--channels-last/--compile overrides
    split: Split  # ours: the images as tensors ...
    x: np.ndarray  # ... the reference: as uint8 arrays
    y: np.ndarray
    device: torch.device
    peaks: dict[str, dict[str, Any]]
    precision: str


def measure(cases: list[Case], args: argparse.Namespace, batch: int) -> None:
    """Fill each case's ``per_image`` (seconds) and ``slices``, over ``args.repeats``."""
    for case in cases:  # warm-up (allocator, kernel selection, compile)
        case.run(args.warmup, 10_000)
    for r in range(args.repeats):
        order = cases[r % len(cases) :] + cases[: r % len(cases)]  # rotate the order
        for case in order:
            short = case.run(args.short, 2 * r)
            long = case.run(args.long, 2 * r + 1)
            case.slices.append((short, long))
            case.per_image.append(max(long - short, 1e-9) / ((args.long - args.short) * batch))
        print(
            f"  repeat {r + 1}/{args.repeats}: "
            + ", ".join(f"{c.key} {1 / c.per_image[-1]:.0f}" for c in cases)
            + " img/s",
            flush=True,
        )


def conv_channels(model: nn.Module) -> list[int]:
    """Output channels of every convolution (how wide the GEMMs are)."""
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def limits_note(
    model_name: str,
    width: float,
    channels: list[int],
    ops: dict[str, Any] | None,
    device: torch.device,
) -> str:
    """Why the achieved FLOP/s are what they are (the FLOP/s table's last column)."""
    parts = [
        f"conv widths {min(channels)}-{max(channels)} channels at width {width:g}"
        + (" (small GEMMs: low arithmetic intensity per call)" if max(channels) <= 128 else "")
    ]
    if ops:
        g = ops["groups"]
        conv = g.get("convolution", 0.0) + g.get("matmul (linear)", 0.0)
        parts.append(
            f"conv/linear kernels {100 * conv:.0f} % of operator time, batch norm "
            f"{100 * g.get('batch norm', 0.0):.0f} %, ReLU/pool/elementwise/copies "
            f"{100 * (1 - conv - g.get('batch norm', 0.0)):.0f} %"
        )
    if device.type == "cpu":
        parts.append("oneDNN 3x3 convs reach only a fraction of GEMM peak on 32x32 maps")
    return "; ".join(parts)


def find(cases: list[Case], pipeline: str, method: str, mode: str) -> Case | None:
    """The case of ``pipeline``/``method``/``mode``, if it was measured."""
    for c in cases:
        if (c.pipeline, c.method, c.mode) == (pipeline, method, mode):
            return c
    return None


def build_cases(name: str, batch: int, args: argparse.Namespace, setup: Setup) -> list[Case]:
    """Every case of one model at one batch size: ours per method x mode, then references."""
    base = [
        f"model.name={name}",
        f"model.width={args.width}",
        f"attack.steps={args.steps}",
        f"train.batch_size={batch}",
        f"train.device={setup.device}",
        f"train.seed={args.seed}",
    ]
    print(f"{name} width {args.width:g}, batch {batch}: building cases", flush=True)
    cases = [
        ours_case(
            name,
            method,
            mode,
            base + METHODS[method] + mode_overrides(mode, args.replays) + setup.extra,
            setup.split,
            batch,
            setup.device,
            args.seed,
        )
        for method in setup.methods
        for mode in setup.modes
    ]
    if args.reference:
        for method in args.reference_methods.split(","):
            case = reference_case(
                name,
                method,
                base + METHODS[method],
                setup.x,
                setup.y,
                batch,
                setup.device,
                args.seed,
                args.workers,
            )
            cases.append(case)
    return cases


def weights_finite(model: nn.Module) -> bool:
    """Whether training left every parameter finite (a throughput row is void otherwise)."""
    return bool(
        torch.isfinite(torch.stack([p.detach().float().sum() for p in model.parameters()])).all()
    )


def throughput_rows(
    name: str, batch: int, args: argparse.Namespace, cases: list[Case], macs: int
) -> list[Row]:
    """The throughput table: one row per case of ours, with its ratios to dense and PGD."""
    rows = []
    for c in cases:
        if c.pipeline != "ours":
            continue
        cost = statistics.median(c.per_image)
        dense = find(cases, "ours", "dense", c.mode)
        pgd = find(cases, "ours", c.method, "pgd")
        steps = train_mode(c.cfg).replays(c.cfg)
        passes = forward_passes(c.cfg)
        rows.append(
            {
                "model": name,
                "width": args.width,
                "batch_size": batch,
                "method": c.method,
                "mode": c.mode,
                "optimizer_steps_per_batch": steps,
                "images_per_sec": 1 / cost,
                "seconds_per_image": cost,
                "spread": spread(c.per_image),
                "per_image_repeats": c.per_image,
                "slices_seconds": c.slices,
                "cost_vs_dense_same_mode": (
                    cost / statistics.median(dense.per_image) if dense else None
                ),
                # free trains epochs/replays passes over the data: a PGD-recipe epoch
                # of free costs 1/replays of a pass over the data
                "recipe_epoch_cost_vs_pgd": (
                    cost / steps / statistics.median(pgd.per_image) if pgd else None
                ),
                "forward_passes": passes,
                "achieved_flops": {k: v * 2 * macs / cost for k, v in passes.items()},
                "weights_finite": weights_finite(c.model),
            }
        )
    return rows


def reference_rows(name: str, batch: int, args: argparse.Namespace, cases: list[Case]) -> list[Row]:
    """The reference table: each reference case against our PGD case of its method."""
    refs = []
    for c in cases:
        if c.pipeline != "reference":
            continue
        ours = find(cases, "ours", c.method, "pgd")
        ref_cost = statistics.median(c.per_image)
        refs.append(
            {
                "model": name,
                "width": args.width,
                "batch_size": batch,
                "method": c.method,
                "num_workers": args.workers,
                "reference_images_per_sec": 1 / ref_cost,
                "reference_spread": spread(c.per_image),
                "reference_per_image_repeats": c.per_image,
                "ours_images_per_sec": 1 / statistics.median(ours.per_image) if ours else None,
                "speedup": ref_cost / statistics.median(ours.per_image) if ours else None,
            }
        )
    return refs


def profile_entry(
    name: str,
    batch: int,
    args: argparse.Namespace,
    cases: list[Case],
    dense_pgd: Case | None,
    device: torch.device,
) -> Row:
    """Phases and operator groups of dense / DNR / DNR channel PGD and the references."""
    targets = [
        c
        for c in (
            dense_pgd,
            find(cases, "ours", "dnr", "pgd"),
            find(cases, "ours", "dnr_channel", "pgd"),
        )
        if c
    ]
    targets += [c for c in cases if c.pipeline == "reference"]
    entry: Row = {
        "model": name,
        "batch_size": batch,
        "phases": {},
        "ops": {},
    }
    for c in targets:
        entry["phases"][c.key] = profile_phases(c, device, args.profile_steps)
        entry["ops"][c.key] = profile_ops(c, device)
    return entry


def flops_row(
    name: str,
    batch: int,
    args: argparse.Namespace,
    cases: list[Case],
    dense_pgd: Case,
    plain: nn.Module,
    macs: int,
    ops: dict[str, Any] | None,
    setup: Setup,
) -> Row:
    """Achieved FLOP/s of dense AT with PGD (ours), of the reference, and the peak fractions."""
    peaks, precision = setup.peaks, setup.precision
    cost = statistics.median(dense_pgd.per_image)
    passes = forward_passes(dense_pgd.cfg)
    ref = find(cases, "reference", "dense", "pgd") or find(cases, "reference", "dnr", "pgd")
    ref_cost = statistics.median(ref.per_image) if ref else None
    return {
        "model": name,
        "width": args.width,
        "batch_size": batch,
        "case": dense_pgd.key,
        "macs_per_image": macs,
        "forward_passes": passes,
        "achieved_flops": {k: v * 2 * macs / cost for k, v in passes.items()},
        "fraction_of_matmul_fp32": {
            k: v * 2 * macs / cost / peaks["fp32"]["flops"] for k, v in passes.items()
        },
        "precision": precision,
        "fraction_of_matmul_same_precision": {
            k: v * 2 * macs / cost / peaks[precision]["flops"] for k, v in passes.items()
        }
        if precision in peaks
        else None,
        "reference_case": ref.key if ref else None,
        "reference_achieved_flops_conventional": (
            passes["conventional"] * 2 * macs / ref_cost if ref_cost else None
        ),
        "note": limits_note(name, args.width, conv_channels(plain), ops, setup.device),
    }


def bench_model(
    name: str,
    batch: int,
    args: argparse.Namespace,
    setup: Setup,
    out: dict[str, list[Row]],
) -> None:
    """Measure every case of one model at one batch size; append to ``out``'s tables."""
    cases = build_cases(name, batch, args, setup)
    measure(cases, args, batch)
    plain = build_model(name, args.width, "pytorch", args.seed)  # uncompiled, on the CPU
    macs = model_costs(plain, 32).macs
    out["results"] += throughput_rows(name, batch, args, cases, macs)
    out["reference"] += reference_rows(name, batch, args, cases)
    # FLOP/s of dense AT with PGD (ours), and of the reference
    dense_pgd = find(cases, "ours", "dense", "pgd") or find(
        cases, "ours", setup.methods[0], setup.modes[0]
    )
    ops = None
    if args.profile and not args.compile:
        entry = profile_entry(name, batch, args, cases, dense_pgd, setup.device)
        out["profiles"].append(entry)
        if dense_pgd is not None:
            ops = entry["ops"].get(dense_pgd.key)
    if dense_pgd is not None:
        out["flops"].append(flops_row(name, batch, args, cases, dense_pgd, plain, macs, ops, setup))
