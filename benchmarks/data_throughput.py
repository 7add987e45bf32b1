"""Data throughput: our device-resident ``BatchLoader`` vs. the DataLoader + PIL path.

Images/s of one full, shuffled, augmented pass (random crop with 4-pixel zero padding +
horizontal flip) over the same images, batch by batch onto the training device:

* ours: ``dnr.data.BatchLoader(augment=True)``: the uint8 images live on the device, each
  batch is one gather (``random_crop_flip``) and a float conversion there;
* reference: ``benchlib.reference_loop.make_loader``: a ``torch.utils.data.DataLoader`` (workers
  started every epoch, as the released code does) over per-image PIL transforms
  (``RandomCrop(32, 4)``, ``RandomHorizontalFlip``, ``ToTensor``), collated, then
  ``.to(device)``; for each ``--workers`` count.

Each timed pass includes starting the epoch (our shuffle and augmentation draws; their
worker processes); our one-time copy of the dataset to the device is reported separately.
Before timing, the two augmentations are checked to produce identical pixels for the same
crop offsets and flips. Usage::

    python benchmarks/data_throughput.py            # 10,000 CIFAR-10 images, ~1-2 min
    python benchmarks/data_throughput.py --quick    # 2,000 images, under a minute
    python benchmarks/data_throughput.py --device cuda --workers 0,2,8

Writes ``results/data_throughput_<device>.{json,md}`` (``--out`` for another folder).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from benchlib.images import load_images
from benchlib.machine import machine_info, machine_lines, now, sync
from benchlib.reference_loop import ToTensor, crop_flip_pil, make_loader
from benchlib.results import RESULTS, spread, write_results
from dnr.data.loader import BatchLoader, Split, random_crop_flip
from dnr.devices import resolve_device
from dnr.markdown import markdown_table


def check_same_augmentation(x: np.ndarray, count: int = 64, seed: int = 0) -> int:
    """Assert that the PIL path and ``random_crop_flip`` give identical pixels for the same
    (top, left, flip); returns the number of images checked."""
    gen = torch.Generator().manual_seed(seed)
    n = min(count, len(x))
    shifts = torch.randint(0, 9, (n, 2), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    ours = random_crop_flip(torch.from_numpy(x[:n]).permute(0, 3, 1, 2), shifts, flips, 4)
    ours = ours.float().div_(255)
    to_tensor = ToTensor()
    for i in range(n):
        top, left = (int(v) for v in shifts[i])
        img = crop_flip_pil(Image.fromarray(x[i]), top, left, bool(flips[i]), 4)
        theirs = to_tensor(img)
        if not torch.equal(theirs, ours[i]):
            raise AssertionError(f"image {i}: PIL path and random_crop_flip differ")
    return n


def time_ours(loader: BatchLoader, epoch: int) -> float:
    """Seconds of one full augmented pass of our loader (the epoch's start included)."""
    device = loader.device
    start = now(device)
    count = 0
    for _x, y in loader.epoch(epoch):
        count += len(y)
    sync(device)
    assert count == loader.num_samples
    return time.perf_counter() - start


def time_reference(loader: torch.utils.data.DataLoader, device: torch.device) -> float:
    """Seconds of one full pass of the DataLoader, each batch copied to ``device``."""
    start = now(device)
    count = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        count += len(y)
    sync(device)
    assert count == len(cast(Sized, loader.dataset))
    return time.perf_counter() - start


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, ``--quick`` applied."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", default="0,2", help="DataLoader num_workers, comma list")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default="auto", help="auto | cifar | random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--quick", action="store_true", help="2,000 images, 2 repeats")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--name", default=None, help="results file name (default by device)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = min(args.images, 2000), min(args.repeats, 2)
    return args


def time_passes(
    ours: BatchLoader,
    refs: dict[int, DataLoader[Any]],
    workers: list[int],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, list[float]]:
    """Seconds per full pass of each pipeline, ``args.repeats`` times, interleaved."""
    # warm-up: one short pass of each (allocator, imports in fresh workers)
    time_ours(ours, 10_000)
    times: dict[str, list[float]] = {k: [] for k in ["ours", *(f"ref{w}" for w in workers)]}
    for r in range(args.repeats):  # interleaved, so drift hits every pipeline alike
        times["ours"].append(time_ours(ours, r))
        for w in workers:
            times[f"ref{w}"].append(time_reference(refs[w], device))
        print(
            f"repeat {r + 1}/{args.repeats}: "
            + ", ".join(f"{k} {args.images / v[-1]:.0f} img/s" for k, v in times.items())
        )
    return times


def rate_rows(times: dict[str, list[float]], workers: list[int], n: int) -> list[dict[str, Any]]:
    """One row per pipeline: images/s, seconds per pass, spread, our speed-up over it."""
    ours_rate = n / statistics.median(times["ours"])
    rows: list[dict[str, Any]] = [
        {
            "pipeline": "ours: BatchLoader (device-resident, batched gather)",
            "num_workers": None,
            "images_per_sec": ours_rate,
            "seconds_per_pass": statistics.median(times["ours"]),
            "spread": spread(times["ours"]),
            "ours_speedup": 1.0,
        }
    ]
    for w in workers:
        t = times[f"ref{w}"]
        rate = n / statistics.median(t)
        rows.append(
            {
                "pipeline": "reference: DataLoader + per-image PIL transforms",
                "num_workers": w,
                "images_per_sec": rate,
                "seconds_per_pass": statistics.median(t),
                "spread": spread(t),
                "ours_speedup": ours_rate / rate,
            }
        )
    return rows


def results_table(rows: list[dict[str, Any]]) -> str:
    """The rows as the report's Markdown table."""
    return markdown_table(
        ["pipeline", "num_workers", "images/s", "s / pass", "± (half range)", "ours ×"],
        [
            [
                r["pipeline"],
                "-" if r["num_workers"] is None else r["num_workers"],
                f"{r['images_per_sec']:,.0f}",
                f"{r['seconds_per_pass']:.3f}",
                f"{100 * r['spread']:.1f} %",
                f"{r['ours_speedup']:.1f}",
            ]
            for r in rows
        ],
    )


def render(info: dict[str, Any], table: str) -> str:
    """The Markdown report: machine, what a pass is, the augmentation check, the table."""
    n, origin, checked = info["images"], info["data"], info["augmentation_checked_images"]
    return "\n".join(
        [
            "# Data throughput: device-resident BatchLoader vs. DataLoader + PIL",
            "",
            *machine_lines(info),
            f"- {n:,} images ({origin}), batch {info['batch_size']}, shuffled, augmented "
            f"(random crop 32 with 4-px zero padding + horizontal flip); median of "
            f"{info['repeats']} full passes, each including the epoch start (worker processes "
            "for the DataLoader); batches end on the training device",
            f"- the two augmentations gave identical pixels on {checked} images for the same "
            "offsets and flips; our one-time copy of the dataset to the device took "
            f"{info['ours_setup_seconds']:.3f} s (not in the passes)",
            "",
            table,
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Check the augmentations agree, time both pipelines, write the results."""
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]

    x, y, origin = load_images(args.images, args.data)
    checked = check_same_augmentation(x)
    print(f"augmentation check: {checked} images identical (PIL path vs random_crop_flip)")

    setup_start = now(device)
    split = Split(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y))
    ours = BatchLoader(split, args.batch_size, device, shuffle=True, augment=True, seed=0)
    sync(device)
    setup_seconds = time.perf_counter() - setup_start
    refs = {
        w: make_loader(x, y, args.batch_size, w, pin_memory=device.type == "cuda") for w in workers
    }
    times = time_passes(ours, refs, workers, args, device)
    rows = rate_rows(times, workers, args.images)
    info = machine_info(device) | {
        "images": args.images,
        "data": origin,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "augmentation": "random crop 32, 4-px zero padding + horizontal flip p=0.5",
        "augmentation_checked_images": checked,
        "ours_setup_seconds": setup_seconds,
        "seconds": times,
        "results": rows,
    }
    table = results_table(rows)
    md = render(info, table)
    print(table)
    write_results(args.out, args.name or f"data_throughput_{device.type}", info, md)


if __name__ == "__main__":
    main()
