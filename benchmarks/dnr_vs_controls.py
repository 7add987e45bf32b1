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

Results: ``benchmarks/results/dnr_vs_controls.{json,md}``, ``..._curves.png`` (DNR − its
control, per pair) and ``..._before.png`` (each method now − before).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from benchlib.controls.report import report
from benchlib.controls.runs import run_plan
from benchlib.controls.splits import full_splits, pack
from benchlib.results import ROOT


def build_parser() -> argparse.ArgumentParser:
    """The command line: training (the default), ``--pack`` or ``--report``."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
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
    return ap


def main(argv: list[str] | None = None) -> None:
    """Report, pack the splits, or train this worker's share of the plan."""
    args = build_parser().parse_args(argv)
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
