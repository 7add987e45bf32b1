"""Datasets as uint8 tensors with metadata, seeded splits, and device-resident batches."""

from dnr.data.loader import BatchLoader, DatasetSplits, Split, load_dataset
from dnr.data.sources import CIFAR_MEAN, CIFAR_STD, DataError, DatasetMeta

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
