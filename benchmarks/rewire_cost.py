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

import torch
import torch.nn.functional as F

from dnr.attacks import pgd as project_pgd
from dnr.models import create_model
from dnr.sparsity import Masking


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training attack a step pays for: PGD-7, eps 8/255, step 2/255, random start."""
    return project_pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=7, random_start=True)


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    model = create_model("vgg16", num_classes=10, width=args.width).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    masking = Masking(model, opt, density=args.density, generator=torch.Generator().manual_seed(0))
    x = torch.rand(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))

    def train_step() -> None:
        x_adv = pgd(model, x, y)
        loss = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_s = timed(train_step, args.repeats)
    masking.apply_()

    apply_s = timed(masking.apply_, max(20, args.repeats), warmup=2)

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

    step, apply, rewire = (statistics.median(v) for v in (step_s, apply_s, rewire_s))
    # Other processes on a shared machine inflate every number (and small multi-threaded
    # ops the most); the load average says how quiet the machine was.
    load = {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}
    result = {
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
        "samples_s": {"train_step": step_s, "apply": apply_s, "rewire": rewire_s},
        "ratio": {"apply_over_step": apply / step, "rewire_over_step": rewire / step},
        "targets_met": {"apply_lt_2pct_step": apply / step < 0.02, "rewire_lt_step": rewire < step},
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "rewire_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    md = "\n".join(
        [
            f"# Sparsity cost vs. a PGD-7 hybrid training step (VGG16 width {args.width}, "
            f"d = {args.density}, batch {args.batch_size})",
            "",
            f"CPU ({result['cpu']}, {os.cpu_count()} cores, 1-min load average "
            f"{load['before']} before / {load['after']} after), torch {torch.__version__}, "
            f"{result['threads']} threads; "
            f"N = {masking.num_prunable:,} prunable weights in {result['layers']} tensors; "
            f"medians over {len(step_s)} / {len(apply_s)} / {len(rewire_s)} runs.",
            "",
            "| operation | median (s) | / training step | target |",
            "|---|---:|---:|---|",
            f"| PGD-7 hybrid training step | {step:.3f} | 1 | |",
            f"| `Masking.apply_()` (every step) | {apply:.4f} | {apply / step:.3%} | < 2 % "
            f"{'met' if apply / step < 0.02 else 'MISSED'} |",
            f"| `Masking.rewire({args.prune_rate})` (once per epoch) | {rewire:.3f} | "
            f"{rewire / step:.3f}× | < 1× {'met' if rewire < step else 'MISSED'} |",
            "",
        ]
    )
    (args.out_dir / "rewire_cost.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
