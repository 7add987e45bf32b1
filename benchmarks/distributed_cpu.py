"""One process vs. two torchrun processes (gloo) on this CPU: the same DNR run, timed.

On a 2-core machine two ranks share the cores one process already uses, so this measures
the overhead of the distributed path (gradient all-reduce, per-rank batches of half the
size, duplicated setup), not a speed-up; on N GPUs the same command scales out. It also
shows that the 2-rank run trains the same model: per-epoch loss and validation accuracy
next to the 1-process run's (they differ only by BatchNorm statistics per rank).

    python benchmarks/distributed_cpu.py            # ~5 min on 2 cores
    python benchmarks/distributed_cpu.py --subset 2000 --epochs 1   # quick look

Writes ``benchmarks/results/distributed_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def overrides(args: argparse.Namespace, seed: int) -> list[str]:
    """The run both launchers train: DNR on VGG16 w0.25, real CIFAR-10, PGD-3."""
    return [
        f"train.seed={seed}",
        "data.name=npz",
        f"data.train=[{DATA / 'cifar10_train_part0.npz'},{DATA / 'cifar10_train_part1.npz'}]",
        f"data.test={DATA / 'cifar10_test.npz'}",
        f"data.subset={args.subset}",
        "data.val_size=500",
        "model.name=vgg16",
        "model.width=0.25",
        "sparsity.method=dnr",
        "sparsity.density=0.05",
        "attack.steps=3",
        "attack.step_size=0.00784",
        f"train.epochs={args.epochs}",
        "train.batch_size=128",
        "train.lr=0.05",
        "train.schedule=cosine",
        "train.device=cpu",
    ]


def run(name: str, launcher: list[str], threads: int, args: argparse.Namespace, seed: int) -> dict:
    """Train one run through the CLI (``launcher``: one process or torchrun); its figures."""
    out = Path(args.work) / f"{name.replace(' ', '_').replace(',', '')}_seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*launcher, "train", "--out", str(out), "--no-eval", "--quiet", *overrides(args, seed)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rate = records[-1]["images_per_sec"]
    print(f"{name}, seed {seed}: {wall:.0f} s, last epoch {rate:.0f} img/s")
    return {
        "name": name,
        "seed": seed,
        "command": " ".join(cmd[: cmd.index("--out")]),
        "threads_per_process": threads,
        "wall_seconds": wall,
        "images_per_sec_last_epoch": records[-1]["images_per_sec"],
        "train_images_per_epoch": records[-1]["train_images"],
        "epochs": [
            {
                "epoch": r["epoch"],
                "train_loss": r["train_loss"],
                "train_adv_acc": r["train_adv_acc"],
                "val_clean_acc": r.get("val_clean_acc"),
                "val_pgd_acc": r.get("val_pgd_acc"),
                "images_per_sec": r["images_per_sec"],
            }
            for r in records
        ],
    }


def main() -> None:
    """Train each seed in one process and under torchrun; write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subset", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the 1-process/torchrun pairs")
    parser.add_argument("--work", default=str(ROOT / "runs" / "distributed_cpu"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed_cpu"))
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the Markdown from OUT.json"
    )
    args = parser.parse_args()
    if args.report_only:
        write_markdown(json.loads(Path(args.out + ".json").read_text()), args.out)
        return
    dnr = [sys.executable, "-m", "dnr"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cores = os.cpu_count() or 1
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    for seed in seeds:
        results.append(run("1 process", dnr, cores, args, seed))
        results.append(
            run("torchrun, 2 processes", [*torchrun, "-m", "dnr"], max(1, cores // 2), args, seed)
        )
    # Same as the first, one thread: how far float rounding alone moves a run.
    results.append(run("1 process, 1 thread", dnr, 1, args, seeds[0]))
    import torch

    report = {
        "machine": f"{platform.machine()}, {cores} cores",
        "seeds": seeds,
        "torch": torch.__version__,
        "subset": args.subset,
        "epochs": args.epochs,
        "runs": results,
    }
    Path(args.out + ".json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out)


def write_markdown(report: dict, out: str) -> None:
    """The report: throughput of each launcher relative to one process, and the curves."""
    results = report["runs"]
    names = list(dict.fromkeys(r["name"] for r in results))
    first = [r["images_per_sec_last_epoch"] for r in results if r["name"] == names[0]]
    base = sum(first) / len(first)
    subset, epochs = report["subset"], report["epochs"]
    lines = [
        "# One process vs. two torchrun processes on CPU (gloo)",
        "",
        f"{report['machine']}, torch {report['torch']}; VGG16 w0.25, DNR d=0.05, PGD-3 hybrid, "
        f"global batch 128, {subset} CIFAR-10 images, {epochs} epochs, "
        "validation on 500 held-out images every epoch. `python benchmarks/distributed_cpu.py`",
        "",
        "| run | threads / process | seeds | img/s (last epoch, mean) | vs. 1 process | "
        "final val clean / PGD (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        rs = [r for r in results if r["name"] == name]
        ips = sum(r["images_per_sec_last_epoch"] for r in rs) / len(rs)
        clean = sum(r["epochs"][-1]["val_clean_acc"] or 0 for r in rs) / len(rs)
        pgd = sum(r["epochs"][-1]["val_pgd_acc"] or 0 for r in rs) / len(rs)
        lines.append(
            f"| {name} | {rs[0]['threads_per_process']} | {len(rs)} | {ips:.0f} | "
            f"{ips / base:.2f}× | {100 * clean:.1f} / {100 * pgd:.1f} |"
        )
    per_run = ", ".join(
        f"{r['name']} seed {r['seed']} {r['images_per_sec_last_epoch']:.0f}" for r in results
    )
    lines += [
        "",
        f"Each run's img/s, in the order run (the machine's speed drifts between runs; pairs "
        f"ran back to back): {per_run}.",
        "On 2 cores the two ranks share the cores one process uses with 2 threads, so this is "
        "the distributed path's overhead (gloo all-reduce of the gradients, half-size batches "
        "per rank, duplicated setup), not a speed-up.",
    ]
    lines += ["", "| run | seed | epoch | train loss | train adv acc | val clean | val PGD |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in results:
        for e in r["epochs"]:
            lines.append(
                f"| {r['name']} | {r['seed']} | {e['epoch']} | {e['train_loss']:.4f} | "
                f"{100 * e['train_adv_acc']:.1f} | {100 * (e['val_clean_acc'] or 0):.1f} | "
                f"{100 * (e['val_pgd_acc'] or 0):.1f} |"
            )
    Path(out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
