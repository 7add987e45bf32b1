"""What does sparsity cost next to a DNR training step? (irregular mode, VGG16, d = 0.05)

Measures on the current machine:

  (a) one ``Masking.rewire(p)`` with random (dense) momentum buffers,
  (b) one ``Masking.apply_()`` — the per-step masking after ``optimizer.step()``,
  (c) one PGD-7 hybrid-loss training step (7 input-gradient steps, clean + adversarial
      forward/backward, SGD step), i.e. what (b) is paid on top of and what (a) is
      amortised over (one rewiring per epoch).

Targets: (b) < 2 % of (c); (a) < (c). Writes ``rewire_cost.json`` and ``rewire_cost.md``
into ``--out-dir``. Usage::

    python benchmarks/rewire_cost.py                      # full-size VGG16, batch 128
    python benchmarks/rewire_cost.py --width 0.25 --batch-size 32 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dnr.attacks import pgd as project_pgd
from dnr.models import create_model
from dnr.sparsity import Masking


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training attack a step pays for: PGD-7, eps 8/255, step 2/255, random start."""
    return project_pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=7, random_start=True)


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the training step")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument(
        "--prune-rate",
        type=float,
        default=0.5,
        help="rewiring cost grows with p; 0.5 (the schedule's start) is the worst",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return ap.parse_args(argv)


def hybrid_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None]:
    """One PGD-7 hybrid-loss training step on the fixed batch (what the masking rides on)."""

    def train_step() -> None:
        x_adv = pgd(model, x, y)
        loss = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return train_step


def time_rewire(
    model: nn.Module, opt: torch.optim.Optimizer, masking: Masking, args: argparse.Namespace
) -> list[float]:
    """Seconds of ``rewire(prune_rate)`` from dense random momentum, the first call untimed."""
    g = torch.Generator().manual_seed(1)

    def randomize() -> None:  # dense random momentum, as after many SGD steps
        for p in model.parameters():
            opt.state[p]["momentum_buffer"] = torch.randn(p.shape, generator=g)

    rewire_s: list[float] = []
    for i in range(max(5, args.repeats) + 1):
        randomize()
        t0 = time.perf_counter()
        stats = masking.rewire(args.prune_rate)
        if i:  # first call is warm-up
            rewire_s.append(time.perf_counter() - t0)
        assert stats.total_active == masking.target_active
    return rewire_s


def result_record(
    args: argparse.Namespace,
    masking: Masking,
    load_before: float,
    samples: dict[str, list[float]],
) -> dict[str, Any]:
    """Every figure, as ``rewire_cost.json`` holds them."""
    step, apply, rewire = (statistics.median(v) for v in samples.values())
    # Other processes on a shared machine inflate every number (and small multi-threaded
    # ops the most); the load average says how quiet the machine was.
    load = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    return {
        "model": "vgg16",
        "width": args.width,
        "density": args.density,
        "batch_size": args.batch_size,
        "prune_rate": args.prune_rate,
        "num_prunable": masking.num_prunable,
        "num_active": masking.num_active,
        "layers": len(masking.layer_names),
        "attack": "pgd (dnr.attacks)",
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_1min": load,
        "median_s": {"train_step": step, "apply": apply, "rewire": rewire},
        "samples_s": samples,
        "ratio": {"apply_over_step": apply / step, "rewire_over_step": rewire / step},
        "targets_met": {"apply_lt_2pct_step": apply / step < 0.02, "rewire_lt_step": rewire < step},
    }


def render(r: dict[str, Any]) -> str:
    """The report: each operation's median and its share of a training step, with targets."""
    step, apply, rewire = r["median_s"].values()
    load, samples = r["loadavg_1min"], r["samples_s"]
    return "\n".join(
        [
            f"# Sparsity cost vs. a PGD-7 hybrid training step (VGG16 width {r['width']}, "
            f"d = {r['density']}, batch {r['batch_size']})",
            "",
            f"CPU ({r['cpu']}, {r['cpu_count']} cores, 1-min load average "
            f"{load['before']} before / {load['after']} after), torch {r['torch']}, "
            f"{r['threads']} threads; "
            f"N = {r['num_prunable']:,} prunable weights in {r['layers']} tensors; "
            f"medians over {len(samples['train_step'])} / {len(samples['apply'])} / "
            f"{len(samples['rewire'])} runs.",
            "",
            "| operation | median (s) | / training step | target |",
            "|---|---:|---:|---|",
            f"| PGD-7 hybrid training step | {step:.3f} | 1 | |",
            f"| `Masking.apply_()` (every step) | {apply:.4f} | {apply / step:.3%} | < 2 % "
            f"{'met' if apply / step < 0.02 else 'MISSED'} |",
            f"| `Masking.rewire({r['prune_rate']})` (once per epoch) | {rewire:.3f} | "
            f"{rewire / step:.3f}× | < 1× {'met' if rewire < step else 'MISSED'} |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time a training step, the per-step masking and a rewiring; write JSON and Markdown."""
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    model = create_model("vgg16", num_classes=10, width=args.width).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    masking = Masking(model, opt, density=args.density, generator=torch.Generator().manual_seed(0))
    x = torch.rand(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))

    step_s = timed(hybrid_step(model, opt, x, y), args.repeats)
    masking.apply_()
    apply_s = timed(masking.apply_, max(20, args.repeats), warmup=2)
    rewire_s = time_rewire(model, opt, masking, args)
    samples = {"train_step": step_s, "apply": apply_s, "rewire": rewire_s}
    result = result_record(args, masking, load_before[0], samples)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "rewire_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render(result)
    (args.out_dir / "rewire_cost.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
