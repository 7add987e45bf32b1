"""Datasets as uint8 tensors with metadata, seeded splits, and device-resident batches.

Each dataset format is one module that registers its reader in ``dnr.registry.DATASETS``;
importing it here is what makes the name available.
"""

from dnr.data import cifar, digits, npz, tiny_imagenet  # noqa: F401  (register the readers)
from dnr.data.loader import BatchLoader, DatasetSplits, Split, load_dataset
from dnr.data.source import CIFAR_MEAN, CIFAR_STD, DataError, DatasetMeta

__all__ = [
    "BatchLoader",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DataError",
    "DatasetMeta",
    "DatasetSplits",
    "Split",
    "load_dataset",
]
