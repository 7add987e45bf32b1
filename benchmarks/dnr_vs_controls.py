"""DNR against its controls: dense, and the fixed random mask it starts from.

Real CIFAR-10, VGG16 width 0.25, 10,000 training images (1,000 more held out for
validation), a few epochs of PGD-3 hybrid training (eps 8/255, step 2.5·eps/3, beta 0.5),
density 0.05, one recipe for every method (cosine LR 0.05, one warm-up epoch). Each model
is evaluated with PGD-20 × 5 restarts on 1,000 seeded test images; every figure comes
with its 95 % (Wilson) interval, and every difference between two runs is paired by seed
and comes with its 95 % Student-t interval over seeds (``dnr.stats``). Runs are grouped:

* ``main``      dense / static (uniform, ERK) / DNR (uniform, ERK), every seed given;
* ``before``    the recipe and rewiring of the paper as first implemented (no warm-up,
                regrown weights restart at 0, unprotected channels, no BN refresh,
                undamped redistribution): the "before" row of issue 7;
* ``ablation``  one change at a time around the default DNR settings;
* ``long``      static vs DNR with four times the epochs: how the margin moves with length;
* ``channel``   channel mode at d = 0.1 (budget in weights of the compacted network): channel
                DNR against a static random channel mask at the same compacted size, and
                weight-mode (irregular) DNR and static at the same density.

Defaults of ``sparsity.*`` are chosen on the *validation* columns, never on the test ones.

Usage (a run is skipped when its result is already in the results file, so an interrupted
benchmark resumes; one training process at a time on a CPU)::

    python benchmarks/dnr_vs_controls.py --groups main,before --seeds 0,1
    python benchmarks/dnr_vs_controls.py --pack /tmp/c10_bench.npz      # 33 MiB of splits
    python benchmarks/dnr_vs_controls.py --packed /tmp/c10_bench.npz --workers 6 --worker 0 ...
    python benchmarks/dnr_vs_controls.py --report runs/bench/*.json     # JSON + Markdown

Results: ``benchmarks/results/dnr_vs_controls.{json,md}`` and ``..._curves.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dnr.checkpoints import load_checkpoint  # noqa: E402
from dnr.config import load_config  # noqa: E402
from dnr.data import (  # noqa: E402
    DatasetMeta,  # noqa: E402
    DatasetSplits,
    load_dataset,
)
from dnr.data.loader import Split  # noqa: E402
from dnr.devices import resolve_device  # noqa: E402
from dnr.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from dnr.robustness import evaluate_model, select_subset  # noqa: E402
from dnr.rundir import RunDir  # noqa: E402
from dnr.stats import PairedDifference, paired_by_key  # noqa: E402
from dnr.training import model_for, train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
EPS = 8 / 255


#: The shared recipe: identical for every method, no method-specific tuning.
def base_overrides(args: argparse.Namespace) -> list[str]:
    return [
        "model.width=" + str(args.width),
        "attack.steps=3",
        f"attack.step_size={2.5 * EPS / 3}",
        f"train.epochs={args.epochs}",
        "train.schedule=cosine",
        "train.lr=0.05",
        "train.warmup_epochs=1",
        "train.batch_size=128",
        "train.beta=0.5",
        "sparsity.density=0.05",
        f"train.device={args.device}",
    ]


# The paper's rewiring as first implemented, and its recipe (no warm-up).
PAPER = [
    "train.warmup_epochs=0",
    "sparsity.keep_regrown_values=false",
    "sparsity.protect_channels=false",
    "sparsity.bn_refresh_batches=0",
    "sparsity.redistribution=1.0",
    "sparsity.grow_momentum=keep",
    "sparsity.rewire_until=1.0",
    "sparsity.prune_rate=0.5",
    "sparsity.rewire_every=0",
]
STATIC_U = ["sparsity.method=static", "sparsity.init=uniform"]
DNR_U = ["sparsity.method=dnr", "sparsity.init=uniform"]
FGSM_RS = "attack.train_mode=fgsm_rs"
CHANNEL = ["sparsity.granularity=channel", "sparsity.density=0.1"]
CHANNEL_RUNS = [
    ("dnr-channel d=0.1", [*DNR_U, *CHANNEL]),
    ("static-channel d=0.1", [*STATIC_U, *CHANNEL]),
    ("dnr-weight d=0.1", [*DNR_U, "sparsity.density=0.1"]),
    ("static-weight d=0.1", [*STATIC_U, "sparsity.density=0.1"]),
]


def plan(seeds: list[int]) -> list[tuple[str, str, int, list[str], float]]:
    """(group, name, seed, overrides, epochs multiplier) in priority order."""
    main = [
        ("dense", ["sparsity.method=dense"]),
        ("static-uniform", STATIC_U),
        ("static-erk", ["sparsity.method=static", "sparsity.init=erk"]),
        ("dnr-uniform", DNR_U),
        ("dnr-erk", ["sparsity.method=dnr", "sparsity.init=erk"]),
    ]
    peers = [  # the nearest alternatives, same recipe and total epochs
        # (FlyingBird as released starts from IGQ; this row keeps the uniform start it
        # was measured with)
        (
            "flyingbird-uniform",
            ["sparsity.method=flyingbird", "sparsity.options={flyingbird: {init: uniform}}"],
        ),
        ("lwm", ["sparsity.method=lwm"]),
    ]
    runs: list[tuple[str, str, int, list[str], float]] = []
    for seed in seeds:
        runs += [("main", name, seed, ov, 1) for name, ov in main]
    for seed in seeds:
        runs += [("peers", name, seed, ov, 1) for name, ov in peers]
    fast = [  # the same DNR run trained on PGD-3, FGSM-RS or free examples
        ("dnr-uniform pgd3", DNR_U, 1.0),
        ("dnr-uniform fgsm_rs", [*DNR_U, "attack.train_mode=fgsm_rs"], 1.0),
        # free replays each batch 3 times: a third of the epochs, the same optimizer steps
        ("dnr-uniform free m=3", [*DNR_U, "attack.train_mode=free", "attack.replays=3"], 1 / 3),
        # at about the training cost of the PGD-3 run: twice the epochs, or every epoch
        ("dnr-uniform fgsm_rs x2 epochs", [*DNR_U, "attack.train_mode=fgsm_rs"], 2.0),
        (
            "dnr-uniform free m=3 x3 epochs",
            [*DNR_U, "attack.train_mode=free", "attack.replays=3"],
            1.0,
        ),
        # FGSM-RS's step: the paper's 1.25 eps, a smaller and a larger one
        ("dnr-uniform fgsm_rs step 1.0", [*DNR_U, FGSM_RS, "attack.fgsm_step=1.0"], 1.0),
        ("dnr-uniform fgsm_rs step 1.5", [*DNR_U, FGSM_RS, "attack.fgsm_step=1.5"], 1.0),
        ("dnr-uniform fgsm_rs step 2.0", [*DNR_U, FGSM_RS, "attack.fgsm_step=2.0"], 1.0),
        ("dnr-uniform fgsm_rs step 1.5 x2 epochs", [*DNR_U, FGSM_RS, "attack.fgsm_step=1.5"], 2.0),
    ]
    for seed in seeds:
        runs += [("fast", name, seed, ov, mult) for name, ov, mult in fast]
    for seed in seeds:
        runs += [("channel", name, seed, ov, 1) for name, ov in CHANNEL_RUNS]
        runs += [("channel", f"{name} x4 epochs", seed, ov, 4) for name, ov in CHANNEL_RUNS[:2]]
    channel_ablation = [
        ("redistribution=1 (paper)", ["sparsity.redistribution=1.0"]),
        ("prune_rate=0.5 + redistribution=1 (paper)", ["sparsity.prune_rate=0.5", PAPER[4]]),
        ("regrown channels reinitialised", ["sparsity.keep_regrown_values=false"]),
    ]
    for seed in seeds:
        runs += [
            ("channel", f"dnr-channel d=0.1 {label}", seed, [*CHANNEL_RUNS[0][1], *ov], 1)
            for label, ov in channel_ablation
        ]
    runs += [
        ("before", "dense-before", 0, ["sparsity.method=dense", "train.warmup_epochs=0"], 1),
        ("before", "static-uniform-before", 0, [*STATIC_U, *PAPER], 1),
        ("before", "dnr-uniform-before", 0, [*DNR_U, *PAPER], 1),
        ("before", "dnr-erk-before", 0, ["sparsity.method=dnr", "sparsity.init=erk", *PAPER], 1),
    ]
    ablation = [
        ("redistribution=1 (paper)", ["sparsity.redistribution=1.0"]),
        ("redistribution=0 (counts frozen)", ["sparsity.redistribution=0.0"]),
        ("redistribution=0.6", ["sparsity.redistribution=0.6"]),
        ("prune_rate=0.5 (paper)", ["sparsity.prune_rate=0.5"]),
        ("prune_rate=0.1", ["sparsity.prune_rate=0.1"]),
        ("all paper rewiring, new recipe", PAPER[1:]),
        ("rewire_until=1 (paper)", ["sparsity.rewire_until=1.0"]),
        ("rewire_until=0.5", ["sparsity.rewire_until=0.5"]),
        (
            "rewire_every=25 steps + prune_rate=0.1",
            ["sparsity.rewire_every=25", "sparsity.prune_rate=0.1"],
        ),
        ("bn_refresh off (paper)", ["sparsity.bn_refresh_batches=0"]),
        ("grow_momentum=keep (paper)", ["sparsity.grow_momentum=keep"]),
        ("regrown restart at 0 (paper)", ["sparsity.keep_regrown_values=false"]),
        ("channels unprotected (paper)", ["sparsity.protect_channels=false"]),
        ("init=xavier", ["model.init=xavier"]),
    ]
    runs += [("ablation", f"dnr-uniform {label}", 0, [*DNR_U, *ov], 1) for label, ov in ablation]
    runs += [
        ("ablation", "static-uniform init=xavier", 0, [*STATIC_U, "model.init=xavier"], 1),
        ("ablation", "dense init=xavier", 0, ["sparsity.method=dense", "model.init=xavier"], 1),
        ("long", "static-uniform x4 epochs", 0, STATIC_U, 4),
        ("long", "dnr-uniform x4 epochs", 0, DNR_U, 4),
    ]
    # Second seeds of the ablation rows that move the most weights, if time allows.
    extra = {
        "redistribution=1 (paper)",
        "redistribution=0 (counts frozen)",
        "rewire_every=25 steps + prune_rate=0.1",
        "all paper rewiring, new recipe",
        "prune_rate=0.5 (paper)",
        "rewire_until=1 (paper)",
    }
    runs += [
        ("ablation", f"dnr-uniform {label}", 1, [*DNR_U, *ov], 1)
        for label, ov in ablation
        if label in extra
    ]
    runs += [
        ("long", "static-uniform x4 epochs", 1, STATIC_U, 4),
        ("long", "dnr-uniform x4 epochs", 1, DNR_U, 4),
        ("long", "static-erk x4 epochs", 0, ["sparsity.method=static", "sparsity.init=erk"], 4),
        ("long", "dnr-erk x4 epochs", 0, ["sparsity.method=dnr", "sparsity.init=erk"], 4),
    ]
    return runs


# --------------------------------------------------------------------------- data


def full_splits(args: argparse.Namespace) -> DatasetSplits:
    d = Path(args.data_dir)
    cfg = load_config(
        "vgg16_cifar10",
        [
            "data.name=npz",
            f"data.train=[{d / 'cifar10_train_part0.npz'},{d / 'cifar10_train_part1.npz'}]",
            f"data.test={d / 'cifar10_test.npz'}",
            f"data.subset={args.train_size}",
            "data.val_size=1000",
        ],
    )
    data = load_dataset(cfg.data)
    rows = select_subset(len(data.test.y), args.test_size, seed=0)  # seeded, never a prefix
    if rows is not None:
        t = torch.tensor(rows)
        data.test = Split(data.test.x[t].contiguous(), data.test.y[t].contiguous())
        data.indices["test"] = [data.indices["test"][i] for i in rows]
    return data


def pack(data: DatasetSplits, path: Path) -> None:
    arrays = {
        f"{k}_{n}": getattr(getattr(data, k), n).numpy()
        for k in ("train", "val", "test")
        for n in ("x", "y")
    }
    meta = json.dumps({**data.meta.__dict__, "indices": data.indices})
    np.savez_compressed(path, meta=np.array(meta), **arrays)


def unpack(path: Path) -> DatasetSplits:
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        indices = meta.pop("indices")
        splits = {
            k: Split(torch.from_numpy(z[f"{k}_x"]), torch.from_numpy(z[f"{k}_y"]))
            for k in ("train", "val", "test")
        }
    meta["mean"], meta["std"] = tuple(meta["mean"]), tuple(meta["std"])
    return DatasetSplits(**splits, meta=DatasetMeta(**meta), indices=indices)


# --------------------------------------------------------------------------- runs


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def test_eval(model: torch.nn.Module, data: DatasetSplits, device: torch.device) -> dict:
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


def run_one(
    group: str,
    name: str,
    seed: int,
    overrides: list[str],
    mult: float,
    data: DatasetSplits,
    args: argparse.Namespace,
) -> dict[str, Any]:
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
    record: dict[str, Any] = {
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
    }
    if result.best_epoch == epochs:
        record["test_final"] = best
    else:  # the last epoch's weights, for the "final checkpoint" column
        final = model_for(cfg, data).to(device)
        final.load_state_dict(load_checkpoint(RunDir(run_dir).last_checkpoint)["model"])
        record["test_final"] = test_eval(final, data, device)
    last = result.history[-1]
    record["val_final"] = {"clean": last.get("val_clean_acc"), "pgd": last.get("val_pgd_acc")}
    record["history"] = [
        {
            k: h.get(k)
            for k in (
                "epoch",
                "lr",
                "train_loss",
                "train_clean_acc",
                "train_adv_acc",
                "val_clean_acc",
                "val_pgd_acc",
                "density",
            )
        }
        | {
            "moved": sum(sum(r["regrown"].values()) for r in h.get("rewire", [])),
            "rewirings": len(h.get("rewire", [])),
        }
        for h in result.history
    ]
    stats = result.sparsity.stats()
    record["num_active"], record["num_prunable"] = (
        stats.get("num_active"),
        stats.get("num_prunable"),
    )
    if "channels" in stats:
        record["channels"] = {n: c["kept"] for n, c in stats["channels"].items()}
    layers = stats.get("layers")
    if layers:
        record["layer_density_final"] = {n: info["density"] for n, info in layers.items()}
        record["layer_density_init"] = result.history[0].get("layer_density_init")
    record["train_seconds"] = train_s
    record["seconds"] = time.perf_counter() - started
    record["device"] = str(device) + (
        f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""
    )
    record["config"] = cfg.to_dict()
    return record


def key(r: dict) -> str:
    """A run is its name and seed (a results file holds one test set: use one file per set)."""
    return f"{r['name']}|{r['seed']}"


def result_key(r: dict) -> str:
    """For merging results files: the run and the number of test images it was scored on."""
    return f"{key(r)}|{r['test_final']['clean']['n']}"


def load_results(path: Path) -> list[dict]:
    return json.loads(path.read_text())["runs"] if path.exists() else []


def run_plan(args: argparse.Namespace) -> None:
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


# --------------------------------------------------------------------------- report


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _summary_rows(rs: list[dict]) -> list[str]:
    """One row per run name: mean over seeds (each seed's own value in brackets)."""
    by_name: dict[tuple[str, int], list[dict]] = {}
    for r in rs:
        by_name.setdefault((r["name"], r["test_final"]["clean"]["n"]), []).append(r)
    rows = []
    for (name, _), group in by_name.items():
        group.sort(key=lambda r: r["seed"])
        acc = {m: [r["test_final"][m]["acc"] for r in group] for m in ("clean", "pgd20")}
        val = [r["val_final"]["pgd"] for r in group]
        loss = [r["history"][-1]["train_loss"] for r in group]
        half = _mean(
            [
                (r["test_final"]["pgd20"]["ci95"][1] - r["test_final"]["pgd20"]["ci95"][0]) / 2
                for r in group
            ]
        )
        each = lambda xs: " / ".join(f"{100 * x:.1f}" for x in xs)  # noqa: E731
        rows.append(
            f"| {name} | {len(group)} | {group[0]['test_final']['clean']['n']} | "
            f"**{100 * _mean(acc['clean']):.1f}** ({each(acc['clean'])}) | "
            f"**{100 * _mean(acc['pgd20']):.1f}** ({each(acc['pgd20'])}) | ±{100 * half:.1f} | "
            f"{100 * _mean(val):.1f} | {_mean(loss):.3f} |"
        )
    return rows


def _delta_cells(diff: PairedDifference, first: str, second: str) -> list[str]:
    """Δ (mean, per seed), its 95 % t interval and the verdict, as three table cells."""
    if diff.mean is None:
        return ["–", "–", "–"]
    each = " / ".join(f"{100 * d:+.1f}" for d in diff.diffs)
    delta = f"**{100 * diff.mean:+.1f}**" + (f" ({each})" if diff.n > 1 else "")
    if diff.lo is None or diff.hi is None:
        return [delta, "none (1 seed)", "no difference shown"]
    return [delta, f"[{100 * diff.lo:+.1f}, {100 * diff.hi:+.1f}]", diff.says(first, second)]


SUMMARY_HEADER = [
    "| run | seeds | test images | test clean % (per seed) | test PGD-20 % (per seed) | "
    "95 % CI of one PGD-20 figure | val PGD-3 % | final train loss |",
    "|---|---|---|---|---|---|---|---|",
]


def report(paths: list[Path]) -> None:
    """Merge results files into results/ (later files win for the same run, seed and test set).

    The main rows appear once per test-set size: the ablation compares against the main runs
    evaluated on its own (1,000-image) test set.
    """
    runs: dict[str, dict] = {}
    for p in paths:
        for r in load_results(p):
            runs[result_key(r)] = r
    rs = sorted(runs.values(), key=lambda r: (r["group"], r["name"], r["seed"]))
    if not rs:
        raise SystemExit("no results to report")
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "dnr_vs_controls.json", {"runs": rs})
    devices = sorted({r["device"] for r in rs})
    lines = [
        "# DNR against its controls (real CIFAR-10, VGG16 width 0.25, d = 0.05)",
        "",
        "Written by `benchmarks/dnr_vs_controls.py --report` from `dnr_vs_controls.json` (every "
        "run's config, per-epoch history and per-layer densities are there). Recipe shared by "
        "every row: 10,000 training images, PGD-3 hybrid training (ε 8/255, step 2.5·ε/3, "
        "β 0.5), SGD lr 0.05 cosine with one warm-up epoch, batch 128, 6 epochs (24 in `long`). "
        "Test: PGD-20 × 5 restarts (ε 8/255, step 2/255) on a seeded subset of the CIFAR-10 "
        "test set, final weights; val: the held-out 1,000 training images, PGD-3 — defaults "
        "are chosen on val, never on test.",
        f"Devices: {', '.join(devices)}. GPU runs are not bit-reproducible (cuDNN); how far a "
        "rerun of the same seed moves a figure has not been measured here.",
    ]
    main_n = max(
        (r["test_final"]["clean"]["n"] for r in rs if r["group"] == "main"),
        default=rs[0]["test_final"]["clean"]["n"],
    )
    for group, title in (
        ("main", "Main table: dense, static and DNR (defaults)"),
        ("before", "Before this change: the paper's rewiring and no warm-up"),
        ("long", "Longer runs: four times the epochs"),
        ("peers", "Peers at the same recipe and epochs: FlyingBird and LWM (d = 0.05)"),
        ("fast", "Fast training modes: DNR on PGD-3, FGSM-RS and free (m = 3) examples"),
        ("channel", "Channel mode at d = 0.1: DNR, its static control, and weight mode"),
        ("ablation", "Ablation around the DNR defaults (uniform init)"),
    ):
        sel = [
            r
            for r in rs
            if r["group"] == group and (group != "main" or r["test_final"]["clean"]["n"] == main_n)
        ]
        if group == "ablation":  # the defaults on the ablation's own test images first
            ns = {r["test_final"]["clean"]["n"] for r in sel}
            sel = [
                r
                for r in rs
                if r["group"] == "main"
                and r["test_final"]["clean"]["n"] in ns
                and r["test_final"]["clean"]["n"] != main_n
            ] + sel
        if sel:
            lines += ["", f"## {title}", "", *SUMMARY_HEADER, *_summary_rows(sel)]
    lines += [
        "",
        "## Paired differences, same seed (test, final weights)",
        "",
        "Δ = first − second run, in percentage points: the mean over the seeds both ran, each "
        "seed's own Δ in brackets, and the 95 % Student-t interval of the mean over seeds "
        "(`dnr.stats`, n − 1 degrees of freedom; the seeds are treated as independent draws). "
        '"X ahead" only where that interval excludes 0, otherwise "no difference shown"; one '
        "seed gives no interval. The interval is over training seeds on one test set: it does "
        "not include the test-set sampling error of the Wilson columns above.",
        "",
        "| pair | seeds | test images | Δ clean (per seed) | 95 % CI | verdict (clean) | "
        "Δ PGD-20 (per seed) | 95 % CI | verdict (PGD-20) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    pairs = [
        ("dnr-uniform", "static-uniform"),
        ("dnr-erk", "static-erk"),
        ("dnr-uniform x4 epochs", "static-uniform x4 epochs"),
        ("dnr-erk x4 epochs", "static-erk x4 epochs"),
        ("dnr-uniform", "flyingbird-uniform"),
        ("dnr-uniform", "lwm"),
        ("dnr-channel d=0.1", "static-channel d=0.1"),
        ("dnr-weight d=0.1", "static-weight d=0.1"),
        ("dnr-channel d=0.1", "dnr-weight d=0.1"),
        ("dnr-channel d=0.1 x4 epochs", "static-channel d=0.1 x4 epochs"),
        ("dnr-uniform fgsm_rs", "dnr-uniform pgd3"),
        ("dnr-uniform free m=3", "dnr-uniform pgd3"),
        ("dnr-uniform fgsm_rs x2 epochs", "dnr-uniform pgd3"),
        ("dnr-uniform free m=3 x3 epochs", "dnr-uniform pgd3"),
        ("dnr-uniform fgsm_rs step 1.0", "dnr-uniform pgd3"),
        ("dnr-uniform fgsm_rs step 1.5", "dnr-uniform pgd3"),
        ("dnr-uniform fgsm_rs step 2.0", "dnr-uniform pgd3"),
        ("dnr-uniform fgsm_rs step 1.5 x2 epochs", "dnr-uniform pgd3"),
    ]
    for first, second in pairs:
        cells = []
        for metric in ("clean", "pgd20"):
            figures = [
                {
                    r["seed"]: r["test_final"][metric]["acc"]
                    for r in rs
                    if r["name"] == name and r["test_final"]["clean"]["n"] == main_n
                }
                for name in (first, second)
            ]
            seeds, diff = paired_by_key(*figures)
            cells += _delta_cells(diff, first, second)
        if seeds:
            lines.append(
                f"| {first} − {second} | {', '.join(map(str, seeds))} | {main_n} | "
                + " | ".join(cells)
                + " |"
            )
    lines += ["", "## Where the budget ends up (final per-layer density, seed 0)", ""]
    shown = [
        n
        for n in (
            "static-erk",
            "dnr-uniform",
            "dnr-erk",
            "dnr-uniform x4 epochs",
            "dnr-erk x4 epochs",
            "dnr-uniform-before",
        )
        if f"{n}|0|{main_n}" in runs
    ]
    if shown:
        layers = list(runs[f"{shown[0]}|0|{main_n}"]["layer_density_final"])
        lines += ["| layer | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
        for layer in layers:
            lines.append(
                f"| {layer} | "
                + " | ".join(
                    f"{runs[f'{n}|0|{main_n}']['layer_density_final'][layer]:.3f}" for n in shown
                )
                + " |"
            )
    lines += ["", "## Per-epoch curves (seed 0): train loss / val PGD-3 % / weights regrown", ""]
    curves = [
        r
        for r in rs
        if r["seed"] == 0
        and r["group"] in ("main", "before", "long", "channel")
        and r["test_final"]["clean"]["n"] == main_n
    ]
    for r in curves:
        cells = [
            f"{h['train_loss']:.3f}/{pct(h['val_pgd_acc'])}/{h['moved']}" for h in r["history"]
        ]
        lines.append(f"- {r['name']}: " + ", ".join(cells))
    atomic_write_text(RESULTS / "dnr_vs_controls.md", "\n".join(lines) + "\n")
    plot(curves)
    print("\n".join(lines))


def plot(curves: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in curves:
        ep = [h["epoch"] for h in r["history"]]
        style = "--" if r["group"] == "before" else "-"
        axes[0].plot(ep, [h["train_loss"] for h in r["history"]], style, label=r["name"])
        axes[1].plot(ep, [100 * (h["val_pgd_acc"] or 0) for h in r["history"]], style)
    axes[0].set(xlabel="epoch", ylabel="train loss (hybrid)")
    axes[1].set(xlabel="epoch", ylabel="val PGD-3 accuracy (%)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "dnr_vs_controls_curves.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--packed", help="splits written by --pack (instead of --data-dir)")
    ap.add_argument("--pack", help="write the benchmark's splits to this .npz and exit")
    ap.add_argument("--groups", default="main,before")
    ap.add_argument("--only", help="comma-separated run names")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--train-size", type=int, default=10_000)
    ap.add_argument("--test-size", type=int, default=1_000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--work-dir", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--results", default=None, help="results JSON (default WORK_DIR/results.json)")
    ap.add_argument("--report", nargs="*", help="merge these results files into benchmarks/results")
    args = ap.parse_args()
    if args.report is not None:
        report([Path(p) for p in args.report] or [Path(args.work_dir) / "results.json"])
        return
    if args.pack:
        pack(full_splits(args), Path(args.pack))
        print(f"wrote {args.pack} ({os.path.getsize(args.pack) / 2**20:.1f} MiB)")
        return
    args.results = args.results or str(Path(args.work_dir) / "results.json")
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    run_plan(args)


if __name__ == "__main__":
    main()
