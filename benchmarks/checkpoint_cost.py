"""What does a checkpoint cost next to an epoch of training? (full-size VGG16, CIFAR-10, DNR)

Builds a DNR run as ``dnr train --config vgg16_cifar10`` sets it up (VGG16 width 1.0, 10
classes, ``sparsity.method=dnr`` at density 0.05, SGD with momentum), takes a few PGD-7
hybrid training steps with the public ``dnr.training.train_step`` at batch 128 (so the
optimizer holds its momentum buffers, as in a real run), then measures on this machine:

* the size of ``checkpoints/last.pt`` (the resume state: config, counters, weights,
  optimizer, masks, RNG; what ``RunWriter.save_last`` writes after every epoch) and of
  ``best.pt`` (weights + masks; written when validation improves);
* the time to write it (``dnr.checkpoints.save_checkpoint``: ``torch.save`` to a temp file,
  SHA-256 seal, fsync, rename, with ``previous.pt`` rotation), and the part of that the
  checksum takes;
* the time to load it (``load_checkpoint``: verify the checksum, then
  ``torch.load(weights_only=True)``), and the part of that the verification takes.

The epoch time is an **estimate**: the median of the timed ``train_step`` calls, scaled
to the 50,000 CIFAR-10 training images (50,000 / 128 steps; no validation, no data
loading). Writes ``results/checkpoint_cost.{json,md}``. Takes about two minutes on two CPU
cores::

    python benchmarks/checkpoint_cost.py
    python benchmarks/checkpoint_cost.py --device cuda --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchlib.machine import cpu_name
from dnr.checkpoints import load_checkpoint, save_checkpoint, verify_checkpoint
from dnr.config import Config, load_config
from dnr.fileio import atomic_write
from dnr.models import create_model, init_weights
from dnr.sparsity import Progress, SparsityMethod
from dnr.training import TrainState, build_training_parts, train_step

CIFAR10_TRAIN_IMAGES = 50_000


@dataclass
class Training:
    """The run whose checkpoints are timed: its parts and one timed train step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    method: SparsityMethod
    progress: Progress
    step: Callable[[], None]


def timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` (device work included)."""
    out = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - start)
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed train steps (after 1 warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="checkpoint writes and loads")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to write the checkpoints (default: a temp dir)",
    )
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    return ap.parse_args(argv)


def training(cfg: Config, batch_size: int, device: torch.device) -> Training:
    """Full-size VGG16 with DNR at d = 0.05, and a PGD-7 hybrid step on a fixed batch."""
    torch.manual_seed(0)
    model = init_weights(create_model("vgg16", num_classes=10, width=1.0), cfg.model.init)
    model.train()
    parts = build_training_parts(cfg, model, device, masks_seed=0)
    model, optimizer, method = parts.model, parts.optimizer, parts.method
    steps_per_epoch = -(-CIFAR10_TRAIN_IMAGES // batch_size)
    progress = Progress(step=0, epoch=0, epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        train_step(model, optimizer, x, y, cfg, method, progress, gen)

    return Training(model, optimizer, method, progress, step)


def checkpoint_states(cfg: Config, run: Training) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the loop writes to ``last.pt`` (resume state) and ``best.pt`` (weights + masks)."""
    state = TrainState(epochs_done=1, step=run.progress.step)
    last_state = {
        "version": 2,
        "config": cfg.to_dict(),
        "state": state.state_dict(),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "sparsity": run.method.state_dict(),
        "rng_cpu": torch.get_rng_state(),
    }
    best_state = {"epoch": 0, "model": run.model.state_dict(), "sparsity": run.method.state_dict()}
    return last_state, best_state


def time_checkpoints(
    args: argparse.Namespace,
    device: torch.device,
    sync: Callable[[], None],
    last_state: dict[str, Any],
    best_state: dict[str, Any],
) -> dict[str, Any]:
    """Seconds to write (sealed and plain), verify and load, and the files' sizes."""
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp) / "checkpoints"
        last, previous, best = folder / "last.pt", folder / "previous.pt", folder / "best.pt"
        save_checkpoint(last, last_state)  # warm the page cache and the allocator
        write_s = timed(
            lambda: save_checkpoint(last, last_state, previous=previous), args.repeats, sync
        )
        plain_s = timed(  # the same atomic write without the seal: what the checksum adds
            lambda: atomic_write(folder / "plain.pt", lambda t: torch.save(last_state, t)),
            args.repeats,
            sync,
        )
        save_checkpoint(best, best_state)
        verify_s = timed(lambda: verify_checkpoint(last), args.repeats, sync)
        load_s = timed(lambda: load_checkpoint(last, map_location=device), args.repeats, sync)
        last_bytes, best_bytes = last.stat().st_size, best.stat().st_size
        assert verify_checkpoint(last)
        assert verify_checkpoint(best)
    return {
        "write_s": write_s,
        "plain_s": plain_s,
        "verify_s": verify_s,
        "load_s": load_s,
        "last_bytes": last_bytes,
        "best_bytes": best_bytes,
    }


def tensor_bytes(run: Training) -> dict[str, int]:
    """Bytes of the weights and of the optimizer's state (what a checkpoint mostly holds)."""
    return {
        "model": sum(t.numel() * t.element_size() for t in run.model.state_dict().values()),
        "optimizer": sum(
            t.numel() * t.element_size()
            for s in run.optimizer.state.values()
            for t in s.values()
            if isinstance(t, torch.Tensor)
        ),
    }


def result_record(
    args: argparse.Namespace,
    device: torch.device,
    load_before: float,
    step_s: list[float],
    t: dict[str, Any],
    tensors: dict[str, int],
) -> dict[str, Any]:
    """Every figure of the benchmark, as ``checkpoint_cost.json`` holds them."""
    step_median = statistics.median(step_s)
    epoch_estimate = step_median * CIFAR10_TRAIN_IMAGES / args.batch_size
    write, plain = statistics.median(t["write_s"]), statistics.median(t["plain_s"])
    verify, load = statistics.median(t["verify_s"]), statistics.median(t["load_s"])
    return {
        "model": "vgg16",
        "width": 1.0,
        "dataset": "cifar10 (10 classes, 32x32)",
        "method": "dnr, density 0.05",
        "batch_size": args.batch_size,
        "attack": "PGD-7 hybrid (train.beta 0.5)",
        "device": str(device),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "train_step_s": step_s,
        "train_step_median_s": step_median,
        "epoch_estimate_s": epoch_estimate,
        "epoch_estimate_note": (
            f"estimate: median train_step x {CIFAR10_TRAIN_IMAGES:,} / {args.batch_size} "
            "steps; no validation, data loading or rewiring"
        ),
        "last_pt_bytes": t["last_bytes"],
        "best_pt_bytes": t["best_bytes"],
        "disk_bytes_per_run": 2 * t["last_bytes"] + t["best_bytes"],  # last + previous + best
        "tensor_bytes": tensors,
        "write_s": t["write_s"],
        "write_median_s": write,
        "write_without_checksum_median_s": plain,
        "load_verified_s": t["load_s"],
        "load_verified_median_s": load,
        "verify_median_s": verify,
        "write_fraction_of_epoch": write / epoch_estimate,
        "load_fraction_of_epoch": load / epoch_estimate,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time a train step and the checkpoint's write and load; write JSON and Markdown."""
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    load_before = os.getloadavg()[0]
    cfg = load_config(
        "vgg16_cifar10",
        [
            "sparsity.method=dnr",
            "sparsity.density=0.05",
            "model.width=1.0",
            "attack.steps=7",
            f"train.batch_size={args.batch_size}",
            f"train.device={args.device}",
        ],
    )
    run = training(cfg, args.batch_size, device)
    timed(run.step, 1, sync)  # warm-up (and the optimizer's momentum buffers)
    step_s = timed(run.step, args.steps, sync)
    last_state, best_state = checkpoint_states(cfg, run)
    times = time_checkpoints(args, device, sync, last_state, best_state)
    result = result_record(args, device, load_before, step_s, times, tensor_bytes(run))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "checkpoint_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / "checkpoint_cost.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


def to_markdown(r: dict[str, Any]) -> str:
    """The report: sizes, write and load times, and their share of an (estimated) epoch."""
    mb = 1e6
    m = r["machine"]
    return f"""# Checkpoint cost: full-size VGG16 on CIFAR-10 (DNR, density 0.05)

Machine: {m["cpu"]}, {m["cores"]} cores, {r["device"]}; torch {r["torch"]}, {r["threads"]} \
threads; load average {r["load_average"]["before"]} before, {r["load_average"]["after"]} \
after (a shared machine: other work inflates every time).

| what | figure |
|---|---|
| `last.pt` (resume state: weights, momentum, masks, config, RNG) | \
{r["last_pt_bytes"] / mb:.1f} MB |
| `best.pt` (weights + masks) | {r["best_pt_bytes"] / mb:.1f} MB |
| disk per run (`last.pt` + `previous.pt` + `best.pt`) | {r["disk_bytes_per_run"] / mb:.1f} MB |
| write `last.pt` (save, SHA-256 seal, fsync, rename, rotate) | {r["write_median_s"]:.3f} s |
| ... the same atomic write without seal and rotation | \
{r["write_without_checksum_median_s"]:.3f} s |
| load `last.pt` (verify + `torch.load(weights_only=True)`) | {r["load_verified_median_s"]:.3f} s |
| ... of which the checksum verification | {r["verify_median_s"]:.3f} s |
| one PGD-7 hybrid train step, batch {r["batch_size"]} (median of \
{len(r["train_step_s"])}) | {r["train_step_median_s"]:.2f} s |
| one epoch, **estimated** ({r["epoch_estimate_note"]}) | {r["epoch_estimate_s"]:.0f} s |
| write / epoch | {100 * r["write_fraction_of_epoch"]:.3f} % |
| load / epoch | {100 * r["load_fraction_of_epoch"]:.3f} % |

Medians of {len(r["write_s"])} writes and loads (the page cache is warm: a cold disk or a
network file system writes slower). Run: `python benchmarks/checkpoint_cost.py`.
"""


if __name__ == "__main__":
    main()
