"""Datasets as uint8 tensors with metadata, seeded splits, and device-resident batches.

Each dataset format is one module that registers its reader in ``dnr.registry.DATASETS``;
importing it here is what makes the name available.
"""

from dnr.data import (  # noqa: F401  (register the readers)
    cifar,
    digits,
    folder,
    npz,
    svhn,
    tiny_imagenet,
)
from dnr.data.datasets import from_datasets
from dnr.data.loader import (
    BatchLoader,
    DatasetSplits,
    HostBatchLoader,
    Split,
    as_splits,
    load_dataset,
    make_loader,
    split_dataset,
)
from dnr.data.source import CIFAR_MEAN, CIFAR_STD, DataError, DatasetMeta, SourceData

__all__ = [
    "BatchLoader",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DataError",
    "DatasetMeta",
    "DatasetSplits",
    "HostBatchLoader",
    "SourceData",
    "Split",
    "as_splits",
    "from_datasets",
    "load_dataset",
    "make_loader",
    "split_dataset",
]
