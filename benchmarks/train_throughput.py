"""Training throughput of our DNR adversarial-training pipeline, next to dense AT and a
reference-style loop; achieved FLOP/s; where a step's time goes.

Measures our public step, ``dnr.training.train_step`` (attack, hybrid loss, SGD, the sparsity
method's after-step hook), fed by our device-resident ``dnr.data.BatchLoader`` (augmented,
shuffled), with the loop's on-device metric sums -- i.e. the training loop without its
progress bar and checkpoints -- for

* methods: dense AT, DNR irregular (``sparsity.method=dnr``, density 0.05) and DNR channel
  (``sparsity.granularity=channel``, density 0.1);
* models: VGG16 and ResNet-18 (``--width 0.25`` on a CPU, ``--width 1.0`` on a GPU);
* training modes (``attack.train_mode``): ``pgd`` (PGD-7), ``fgsm_rs`` and ``free``
  (``attack.replays`` optimizer steps per batch);
* with ``--reference``: ``benchlib/reference_loop.py``, the way the released DNR/HYDRA code trains
  (DataLoader + per-image PIL transforms, ``loss.backward()`` inside PGD with
  eval/train toggles, fp32, masks multiplied into the weights with host-side bookkeeping,
  ``.item()`` every step) on the same model, data, batch and attack: our speed-up over it.

Per-image cost: each repeat times a short and a long slice of an epoch (``--short`` and
``--long`` batches, each from the start of a fresh epoch, after ``--warmup`` untimed
steps) and takes the difference, so fixed costs (epoch start, DataLoader workers, the final
sync) cancel; the median over ``--repeats`` is reported. All cases of a model are built
first and measured interleaved, so drift of the machine hits every row alike; every ratio
compares figures from this one process.

Achieved FLOP/s: MACs of one forward (``dnr.costs.model_costs``; Conv2d/Linear only, dense
counts since masked weights are still multiplied) x 2 x passes (rule in the output) per
image, divided by the measured per-image time, as a fraction of the same process's best
large square ``torch.mm``. The profile times each phase of a few steps (forward/backward
of the attack and of the update, optimizer, masking hook, data) and groups the
``torch.profiler`` operator self-times.

    python benchmarks/train_throughput.py --reference            # full CPU table, ~10 min
    python benchmarks/train_throughput.py --reference --quick    # VGG16, dense + DNR, ~1 min
    python benchmarks/train_throughput.py --device cuda --width 1.0 --batch-size 128,512 \\
        --reference --workers 8                                  # on a GPU
    python benchmarks/train_throughput.py --bf16 --channels-last # optimisations (if present)

Writes ``results/train_throughput_<device>.{json,md}`` (``--name``/``--out`` to change).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from benchlib.images import load_images
from benchlib.machine import machine_info
from benchlib.results import RESULTS, write_results
from benchlib.throughput.cases import METHODS, optional_overrides
from benchlib.throughput.measure import Setup, bench_model
from benchlib.throughput.peaks import compute_precision, matmul_peaks
from benchlib.throughput.render import render_markdown
from dnr.data.loader import Split
from dnr.devices import resolve_device

SETTINGS = (
    "models",
    "width",
    "methods",
    "steps",
    "replays",
    "batch_size",
    "warmup",
    "short",
    "long",
    "repeats",
    "reference",
    "workers",
    "bf16",
    "channels_last",
    "compile",
)


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--quick`` and the grid's defaults are settled in ``parse``)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default=None, help="default vgg16,resnet18 (quick: vgg16)")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument(
        "--methods", default=None, help=f"{', '.join(METHODS)} (default all; quick: dense,dnr)"
    )
    parser.add_argument("--modes", default="pgd,fgsm_rs,free", help="attack.train_mode values")
    parser.add_argument("--steps", type=int, default=7, help="PGD steps (attack.steps)")
    parser.add_argument("--replays", type=int, default=4, help="free mode: attack.replays")
    parser.add_argument("--batch-size", default="128", help="comma list, e.g. 128,512")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per case")
    parser.add_argument("--short", type=int, default=2, help="batches of the short slice")
    parser.add_argument("--long", type=int, default=6, help="batches of the long slice")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="also the reference loop")
    parser.add_argument("--reference-methods", default="dnr", help="dense and/or dnr")
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--data", default="auto", help="auto | cifar | random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--bf16", action="store_true", help="train.bf16=true")
    parser.add_argument("--channels-last", action="store_true", help="train.channels_last=true")
    parser.add_argument("--compile", action="store_true", help="train.compile=true")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="VGG16, dense + DNR, one short repeat (~1 min)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--name", default=None, help="results file name (default by device)")
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments with ``--quick`` applied and the grid's defaults filled in, checked."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.models = args.models or "vgg16"
        args.methods = args.methods or "dense,dnr"
        args.warmup, args.short, args.long, args.repeats = 1, 1, 3, 1
        args.profile_steps = 1
    args.models = args.models or "vgg16,resnet18"
    args.methods = args.methods or ",".join(METHODS)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.long <= args.short:
        parser.error("--long must be larger than --short")
    unknown = [m for m in args.methods.split(",") if m and m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Measure the grid, print the report, write ``train_throughput_<device>.{json,md}``."""
    args = parse(argv)
    device = resolve_device(args.device)
    models = [m for m in args.models.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]
    batches = [int(b) for b in args.batch_size.split(",")]
    extra = optional_overrides(args)
    notes: list[str] = []  # for the report; none yet
    modes = [mode for mode in args.modes.split(",") if mode]

    info = machine_info(device)
    print(f"{info['cpu']}; torch {info['torch']}, {info['threads']} threads; {device}")
    peaks = matmul_peaks(device, args.quick, args.bf16)
    print(
        "matmul peak: " + ", ".join(f"{k} {v['flops'] / 1e9:.1f} GFLOP/s" for k, v in peaks.items())
    )
    n_images = max(args.long, args.warmup) * max(batches)  # one epoch holds every slice
    x_np, y_np, origin = load_images(n_images, args.data, args.seed)
    split = Split(torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y_np))
    precision = compute_precision(device, args.bf16)
    setup = Setup(methods, modes, extra, split, x_np, y_np, device, peaks, precision)
    out: dict[str, list[dict[str, Any]]] = {
        "results": [],
        "reference": [],
        "flops": [],
        "profiles": [],
    }
    for batch in batches:
        for name in models:
            bench_model(name, batch, args, setup, out)

    result = info | {
        "data": origin,
        "images": n_images,
        "settings": {k: getattr(args, k) for k in SETTINGS} | {"modes": modes},
        "notes": notes,
        "matmul_peak": peaks,
        **out,
    }
    md = render_markdown(result)
    print(md)
    write_results(args.out, args.name or f"train_throughput_{device.type}", result, md)


if __name__ == "__main__":
    main()
