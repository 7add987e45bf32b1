"""Seeded splits and subsets, and device-resident batches with augmentation as tensor ops.

The whole dataset lives on the device as uint8 and is indexed there, so an epoch costs no
host-to-device copies and no per-image Python work. Every random choice of an epoch comes
from a generator seeded with ``(seed, epoch)``: a resumed run replays exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dnr.config import DataConfig
from dnr.data.source import DatasetMeta, SourceData, read_source
from dnr.data.statistics import resolve_stats
from dnr.seeding import derive_seed


@dataclass
class Split:
    """Images and labels of one split, on the CPU."""

    x: torch.Tensor  # uint8, (N, 3, H, W)
    y: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DatasetSplits:
    train: Split
    val: Split
    test: Split
    meta: DatasetMeta
    # Source rows each split took ("train"/"val" index the source train set, "test" its
    # test set), sorted; recorded in eval.json so a result names exactly the images it used.
    indices: dict[str, list[int]] = field(default_factory=dict)


def validation_size(n_train: int, val_size: int) -> int:
    """Rows to hold out for validation: ``val_size``, unless that leaves under half the set.

    Then the hold-out is capped at 10% of the train rows (``min(val_size, n_train // 10)``),
    so the defaults (val_size 1000) still work on small sets such as ``digits`` (1,437 train
    rows -> 143 validation rows) instead of starving training.
    """
    if 2 * val_size > n_train:
        return min(val_size, n_train // 10)
    return val_size


def split_indices(
    n_train: int, n_test: int, *, val_size: int, subset: int | None, seed: int
) -> dict[str, np.ndarray]:
    """Seeded random validation hold-out, then optional subsets of train and test.

    Always drawn through seeded permutations, never the first N rows: test sets are often
    sorted by class. The validation rows do not depend on ``subset``, and the test subset
    uses its own stream, so changing one cap never reshuffles another split.
    """
    perm = np.random.default_rng([seed, 0]).permutation(n_train)
    n_val = validation_size(n_train, val_size)
    val, train = perm[:n_val], perm[n_val:]
    if subset is not None:
        train = train[:subset]  # a prefix of a random permutation: a random subset
    test = np.arange(n_test)
    if subset is not None and subset < n_test:
        test = np.random.default_rng([seed, 1]).permutation(n_test)[:subset]
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def load_dataset(cfg: DataConfig, *, test_only: bool = False) -> DatasetSplits:
    """Read the dataset named by ``cfg`` and split it (see :func:`split_dataset`).

    ``test_only`` (``dnr eval``): readers that can skip the training files do (see
    :func:`dnr.data.source.read_source`), so a test set alone is enough.
    """
    return split_dataset(read_source(cfg, test_only=test_only), cfg)


def split_dataset(source: SourceData, cfg: DataConfig) -> DatasetSplits:
    """Hold out validation rows and take subsets (:func:`split_indices`); then settle the
    mean/std the model normalises with (:func:`dnr.data.statistics.resolve_stats`)."""
    idx = split_indices(
        len(source.y_train),
        len(source.y_test),
        val_size=cfg.val_size,
        subset=cfg.subset,
        seed=cfg.seed,
    )

    def take(x: torch.Tensor, y: torch.Tensor, rows: np.ndarray) -> Split:
        t = torch.from_numpy(rows)
        return Split(x[t].contiguous(), y[t].contiguous())

    train = take(source.x_train, source.y_train, idx["train"])
    return DatasetSplits(
        train=train,
        val=take(source.x_train, source.y_train, idx["val"]),
        test=take(source.x_test, source.y_test, idx["test"]),
        meta=resolve_stats(source.meta, train.x, cfg),
        indices={name: rows.tolist() for name, rows in idx.items()},
    )


def as_splits(data: DatasetSplits | SourceData | None, cfg: DataConfig) -> DatasetSplits:
    """What ``dnr.training.train(data=...)`` accepts: nothing (read ``cfg``), a whole dataset
    (e.g. :func:`dnr.data.from_datasets`; split per ``cfg``), or ready splits (as they are)."""
    if data is None:
        return load_dataset(cfg)
    if isinstance(data, SourceData):
        return split_dataset(data, cfg)
    return data


def random_crop_flip(
    x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, padding: int = 4
) -> torch.Tensor:
    """Batched ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip`` with given randomness.

    ``x``: (B, C, H, W); ``shifts``: (B, 2) integer (top, left) of each crop in the
    zero-padded image, in ``[0, 2 * padding]``; ``flips``: (B,) bool. Before the flip, output
    pixel ``(i, j)`` is input pixel ``(i + top - padding, j + left - padding)``, or 0 outside.

    Pads the batch once, then one ``gather`` with a per-sample flat index (the flip is folded
    into the column order): about 10x faster than 4-way advanced indexing on a CPU.
    """
    b, c, h, w = x.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = F.pad(x, (padding, padding, padding, padding)).reshape(b, c, hp * wp)
    dev = x.device
    rows = shifts[:, 0:1] + torch.arange(h, device=dev)  # (B, H) rows in the padded image
    cols = torch.arange(w, device=dev).expand(b, w)
    cols = shifts[:, 1:2] + torch.where(flips.view(b, 1), w - 1 - cols, cols)  # (B, W)
    flat = (rows.view(b, h, 1) * wp + cols.view(b, 1, w)).view(b, 1, h * w)
    return padded.gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)


class BatchLoader:
    """Iterates float [0, 1] batches of a split on ``device``.

    The uint8 images move to the device once; each epoch gathers batches there. With
    ``augment`` every image gets a random crop (4-pixel zero padding) and a horizontal flip
    with p = 0.5. Shuffle order and augmentation depend only on ``(seed, epoch)``: the random
    numbers come from a CPU ``torch.Generator`` (identical on every device) and the indices
    are then moved to the device.

    Under torchrun (``world`` > 1) ``batch_size`` is the global batch: every rank draws the
    same order and augmentation and takes its contiguous ``batch_size / world`` slice of each
    batch, so the ranks together see exactly the batches of a single process. A last batch
    not divisible by ``world`` is cut to a multiple of it (at most ``world - 1`` images of an
    epoch are left out), so every rank's slice has the same size and the averaged gradient
    is that of the global batch.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        device: torch.device | str,
        *,
        shuffle: bool,
        augment: bool,
        drop_last: bool = False,
        seed: int = 0,
        padding: int = 4,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size % world or not 0 <= rank < world:
            raise ValueError(
                f"batch_size {batch_size} (the global batch) must be a multiple of the "
                f"{world} ranks (rank {rank})"
            )
        self.device = torch.device(device)
        self.x, self.y = self._store(split)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.seed = seed
        self.padding = padding
        self.rank = rank
        self.world = world

    def _store(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the whole set lives: on the device."""
        return split.x.to(self.device), split.y.to(self.device)

    def _gather(self, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch's uint8 images and labels, on the device."""
        return self.x[rows], self.y[rows]

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def __len__(self) -> int:
        n, bs = self.num_samples, self.batch_size
        if self.drop_last or n % bs < self.world:  # a last batch smaller than the world
            return n // bs
        return -(-n // bs)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)``: x float32 (B, 3, H, W) in [0, 1], y int64 (B,), on the device.

        ``start`` skips the epoch's first batches (a run resumed mid-epoch): the rest are
        exactly those of an uninterrupted epoch.
        """
        n = self.num_samples
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        # the order indexes the stored set where it lives (the device, or host memory)
        order = torch.randperm(n, generator=gen).to(self.x.device) if self.shuffle else None
        if self.augment:
            shifts = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=gen)
            flips = torch.rand(n, generator=gen) < 0.5
            shifts, flips = shifts.to(self.device), flips.to(self.device)
        for batch in range(start, len(self)):
            lo, hi = batch * self.batch_size, min((batch + 1) * self.batch_size, n)
            if self.world > 1:
                per = (hi - lo) // self.world
                lo += self.rank * per
                hi = lo + per
            xb, yb = self._gather(slice(lo, hi) if order is None else order[lo:hi])
            if self.augment:
                xb = random_crop_flip(xb, shifts[lo:hi], flips[lo:hi], self.padding)
            yield xb.float().div_(255), yb


class HostBatchLoader(BatchLoader):
    """:class:`BatchLoader`'s batches for a set too large for the device.

    The uint8 set stays in host memory, where it is (no copy); each batch is gathered there,
    pinned when the device is CUDA (so its copy can overlap the GPU's work), moved, then
    cropped and flipped on the device. Order and augmentation come from the same seeded
    generator, so on one device both loaders yield the same batches, bit for bit.
    """

    def _store(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        return split.x, split.y

    def _gather(self, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        xb, yb = self.x[rows], self.y[rows]
        if self.device.type == "cuda":
            xb, yb = xb.pin_memory(), yb.pin_memory()
        return xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)


#: ``data.resident=auto`` keeps a set on a CUDA device when it takes at most this fraction of
#: the device's free memory: the rest is for the model, its activations and the attack.
RESIDENT_FRACTION = 0.5


def fits_on_device(split: Split, device: torch.device | str, resident: bool | str) -> bool:
    """``data.resident``: true / false as given; auto: always off CUDA (host memory is the
    device's), on CUDA when the set takes at most :data:`RESIDENT_FRACTION` of free memory."""
    if isinstance(resident, bool):
        return resident
    device = torch.device(device)
    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    return split.x.nbytes + split.y.nbytes <= RESIDENT_FRACTION * free


def make_loader(
    split: Split,
    batch_size: int,
    device: torch.device | str,
    *,
    resident: bool | str = True,
    **options: Any,
) -> BatchLoader:
    """A :class:`BatchLoader`, or a :class:`HostBatchLoader` when the set stays in host
    memory (:func:`fits_on_device`); ``options`` are the loaders' keywords."""
    cls = BatchLoader if fits_on_device(split, device, resident) else HostBatchLoader
    return cls(split, batch_size, device, **options)
