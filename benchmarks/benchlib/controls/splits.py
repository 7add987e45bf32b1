"""The controls benchmark's data: CIFAR-10 splits, and packing them to one file.

Packed splits let several workers (or machines) train on exactly the same images without
each re-reading and re-splitting CIFAR-10.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dnr.config import load_config
from dnr.data import DatasetMeta, DatasetSplits, load_dataset
from dnr.data.loader import Split
from dnr.robustness import select_subset


def full_splits(args: argparse.Namespace) -> DatasetSplits:
    """Train / val (1,000 held out) / a seeded test subset, from ``args.data_dir``."""
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
    """The splits, their metadata and source indices in one compressed ``.npz``."""
    arrays = {
        f"{k}_{n}": getattr(getattr(data, k), n).numpy()
        for k in ("train", "val", "test")
        for n in ("x", "y")
    }
    meta = json.dumps({**data.meta.__dict__, "indices": data.indices})
    np.savez_compressed(path, meta=np.array(meta), **arrays)


def unpack(path: Path) -> DatasetSplits:
    """The splits ``pack`` wrote."""
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        indices = meta.pop("indices")
        splits = {
            k: Split(torch.from_numpy(z[f"{k}_x"]), torch.from_numpy(z[f"{k}_y"]))
            for k in ("train", "val", "test")
        }
    meta["mean"], meta["std"] = tuple(meta["mean"]), tuple(meta["std"])
    return DatasetSplits(**splits, meta=DatasetMeta(**meta), indices=indices)
