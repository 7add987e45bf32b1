"""Training and scoring one run of the controls benchmark, and working through the plan.

Every figure a run reports is a test accuracy with its 95 % Wilson interval, next to the
validation figures the defaults are chosen on; the record keeps what a report needs
(history, per-layer densities, config) so reports never retrain.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from benchlib.controls.plan import base_overrides, plan
from benchlib.controls.splits import full_splits, unpack
from dnr.checkpoints import load_checkpoint
from dnr.config import Config, load_config
from dnr.data import DatasetSplits
from dnr.devices import resolve_device
from dnr.fileio import atomic_write_json
from dnr.robustness import evaluate_model
from dnr.rundir import RunDir
from dnr.training import TrainResult, model_for, train

Record = dict[str, Any]
HISTORY_KEYS = (
    "epoch",
    "lr",
    "train_loss",
    "train_clean_acc",
    "train_adv_acc",
    "val_clean_acc",
    "val_pgd_acc",
    "density",
)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def test_eval(model: torch.nn.Module, data: DatasetSplits, device: torch.device) -> Record:
    """Clean and PGD-20 test accuracy, each with its count and Wilson interval."""
    report = evaluate_model(
        model,
        data.test.x,
        data.test.y,
        protocol="pgd20",
        seed=0,
        device=device,
        progress=False,
        sanity=False,
    )
    out = {}
    for r in report.results:
        k, n = r.num_correct, len(data.test.y)
        out[r.name] = {"acc": k / n, "correct": k, "n": n, "ci95": wilson(k, n)}
    return out


def history_rows(history: list[dict[str, Any]]) -> list[Record]:
    """Per epoch: the curves a report draws, and how many weights were regrown."""
    return [
        {k: h.get(k) for k in HISTORY_KEYS}
        | {
            "moved": sum(sum(r["regrown"].values()) for r in h.get("rewire", [])),
            "rewirings": len(h.get("rewire", [])),
        }
        for h in history
    ]


def sparsity_fields(result: TrainResult) -> Record:
    """Active weights, kept channels and per-layer densities at the end (and at the start)."""
    stats = result.sparsity.stats()
    record: Record = {
        "num_active": stats.get("num_active"),
        "num_prunable": stats.get("num_prunable"),
    }
    if "channels" in stats:
        record["channels"] = {n: c["kept"] for n, c in stats["channels"].items()}
    layers = stats.get("layers")
    if layers:
        record["layer_density_final"] = {n: info["density"] for n, info in layers.items()}
        record["layer_density_init"] = result.history[0].get("layer_density_init")
    return record


def final_scores(
    cfg: Config, epochs: int, result: TrainResult, best: Record, data: DatasetSplits, run_dir: Path
) -> Record:
    """Test figures of the last epoch's weights (the best's when the best is the last)."""
    if result.best_epoch == epochs:
        return best
    device = resolve_device(cfg.train.device)
    final = model_for(cfg, data).to(device)
    final.load_state_dict(load_checkpoint(RunDir(run_dir).last_checkpoint)["model"])
    return test_eval(final, data, device)


def run_one(
    group: str,
    name: str,
    seed: int,
    overrides: list[str],
    mult: float,
    data: DatasetSplits,
    args: argparse.Namespace,
) -> Record:
    """Train one run (resuming its checkpoint if there is one) and score it."""
    base = base_overrides(args)
    epochs = max(1, round(args.epochs * mult))
    cfg = load_config(
        "vgg16_cifar10", [*base, f"train.epochs={epochs}", f"train.seed={seed}", *overrides]
    )
    slug = "".join(c if c.isalnum() or c in "-_=." else "_" for c in f"{name}-s{seed}")
    run_dir = Path(args.work_dir) / slug
    started = time.perf_counter()
    result = train(
        cfg,
        run_dir,
        show_progress=False,
        log=lambda _: None,
        data=data,
        resume=RunDir(run_dir).last_checkpoint.exists(),
    )
    train_s = time.perf_counter() - started
    device = resolve_device(cfg.train.device)
    best = test_eval(result.model, data, device)
    last = result.history[-1]
    record: Record = {
        "group": group,
        "name": name,
        "seed": seed,
        "overrides": overrides,
        "epochs": epochs,
        "best_epoch": result.best_epoch,
        "test_best": best,
        "val_best": {
            "clean": result.history[result.best_epoch - 1].get("val_clean_acc"),
            "pgd": result.best_val_pgd,
        },
        "test_final": final_scores(cfg, epochs, result, best, data, run_dir),
        "val_final": {"clean": last.get("val_clean_acc"), "pgd": last.get("val_pgd_acc")},
        "history": history_rows(result.history),
        **sparsity_fields(result),
        "train_seconds": train_s,
        "seconds": time.perf_counter() - started,
        "device": str(device)
        + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "config": cfg.to_dict(),
    }
    return record


def key(r: Record) -> str:
    """A run is its name and seed (a results file holds one test set: use one file per set)."""
    return f"{r['name']}|{r['seed']}"


def result_key(r: Record) -> str:
    """For merging results files: the run and the number of test images it was scored on."""
    return f"{key(r)}|{r['test_final']['clean']['n']}"


def load_results(path: Path) -> list[Record]:
    """The runs of a results file (none when it is not there yet)."""
    return json.loads(path.read_text())["runs"] if path.exists() else []


def run_plan(args: argparse.Namespace) -> None:
    """Train this worker's share of the plan, skipping runs already in the results file."""
    torch.set_num_threads(args.threads)
    groups = set(args.groups.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    todo = [r for r in plan(seeds) if r[0] in groups]
    if args.only:
        todo = [r for r in todo if r[1] in args.only.split(",")]
    todo = todo[args.worker :: args.workers]
    out = Path(args.results)
    done = load_results(out)
    have = {key(r) for r in done}
    data = unpack(Path(args.packed)) if args.packed else full_splits(args)
    print(
        f"{len(todo)} runs for worker {args.worker}/{args.workers}; "
        f"{len(data.train.y)} train / {len(data.val.y)} val / {len(data.test.y)} test images",
        flush=True,
    )
    for group, name, seed, overrides, mult in todo:
        if f"{name}|{seed}" in have:
            continue
        started = time.perf_counter()
        try:
            rec = run_one(group, name, seed, overrides, mult, data, args)
        except Exception as err:  # record and go on: one broken variant must not cost the rest
            print(f"FAILED {name} seed {seed}: {type(err).__name__}: {err}", flush=True)
            continue
        done.append(rec)
        atomic_write_json(out, {"runs": done})
        tb = rec["test_final"]
        print(
            f"{name:<45} s{seed} clean {100 * tb['clean']['acc']:.1f} "
            f"pgd20 {100 * tb['pgd20']['acc']:.1f} val pgd {100 * rec['val_final']['pgd']:.1f} "
            f"loss {rec['history'][-1]['train_loss']:.3f} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
