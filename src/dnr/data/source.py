"""What every dataset reader returns, the checks they share, and ``read_source``.

A reader is a function ``(cfg: DataConfig) -> SourceData`` registered in
:data:`dnr.registry.DATASETS` under its ``data.name`` (one module per format in this
package). Everything read from disk is checked by the reader, so that bad data stops the run
with a one-line :class:`DataError` naming the file and the problem, before any training
starts. Splitting (validation hold-out, subsets) happens in :mod:`dnr.data.loader`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dnr.config import DataConfig
from dnr.constants import CIFAR_MEAN, CIFAR_STD
from dnr.registry import DATASETS

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DataError",
    "DatasetMeta",
    "SourceData",
    "UNKNOWN_STATS",
    "check_images_nhwc",
    "check_labels",
    "decode_str",
    "nchw",
    "read_source",
]


class DataError(ValueError):
    """Bad or missing data: a one-line message naming the file and the problem."""

    def __init__(self, message: str) -> None:
        # Messages embed paths and library errors; keep them on one line for the CLI.
        super().__init__(" ".join(str(message).split()))


#: ``mean``/``std`` of a reader that does not know its data's statistics: ``load_dataset``
#: computes them from the training split (NaN, so that they can never pass unnoticed).
UNKNOWN_STATS: tuple[float, float, float] = (math.nan, math.nan, math.nan)


@dataclass
class DatasetMeta:
    """What a model and a report need to know about a dataset."""

    name: str
    classes: list[str]
    num_classes: int
    image_size: int  # the side of the square images
    mean: tuple[float, float, float]  # in [0, 1] units; UNKNOWN_STATS: computed on loading
    std: tuple[float, float, float]
    # the classes were inferred as max label + 1 (no names given): a test set alone may then
    # lack the top classes, so a model with more outputs still fits it
    classes_inferred: bool = False

    @property
    def has_stats(self) -> bool:
        """Whether ``mean``/``std`` are known (else the training split supplies them)."""
        return not any(math.isnan(v) for v in (*self.mean, *self.std))


@dataclass
class SourceData:
    """A dataset as stored: its full train and test sets, before any split or subset."""

    x_train: torch.Tensor  # uint8 (N, 3, H, W)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    meta: DatasetMeta

    @classmethod
    def from_numpy(
        cls,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        meta: DatasetMeta,
    ) -> SourceData:
        """Wrap decoded arrays without copying them."""
        t = torch.from_numpy
        return cls(t(x_train), t(y_train), t(x_test), t(y_test), meta)


def read_source(cfg: DataConfig, *, test_only: bool = False) -> SourceData:
    """Read the dataset named by ``cfg.name`` (downloading only if ``cfg.download``).

    ``test_only`` (``dnr eval``): a reader that takes a ``test_only`` keyword then skips the
    training files (its train set comes back empty); other readers read everything.
    An unknown name raises :class:`dnr.registry.UnknownNameError` listing the known ones.
    """
    reader = DATASETS.get(cfg.name)
    if test_only and _takes_test_only(reader):
        return reader(cfg, test_only=True)
    return reader(cfg)


def _takes_test_only(reader: Any) -> bool:
    try:
        return "test_only" in inspect.signature(reader).parameters
    except (TypeError, ValueError):  # a callable without a signature: read everything
        return False


def check_labels(raw: Any, n: int, num_classes: int | None, where: str) -> np.ndarray:
    """Labels as int64, or a DataError: 1-D, integer, one per image, in [0, num_classes)."""
    if raw is None:
        raise DataError(f"{where}: no labels")
    y = np.asarray(raw)
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be 1-D, got shape {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if len(y) != n:
        raise DataError(f"{where}: {len(y)} labels for {n} images")
    if n and y.min() < 0:
        raise DataError(f"{where}: negative label {y.min()}")
    if n and num_classes is not None and y.max() >= num_classes:
        raise DataError(f"{where}: label {y.max()} out of range for {num_classes} classes")
    return y.astype(np.int64)


def check_images_nhwc(x: Any, where: str) -> np.ndarray:
    """Images must be non-empty uint8 N x H x W x 3 with H == W.

    The message says how to fix the common near-misses: float pixels (and NaN in them),
    channels first.
    """
    if not isinstance(x, np.ndarray):
        raise DataError(f"{where}: x must be an array, got {type(x).__name__}")
    if x.dtype.kind == "f":
        if x.size and not np.isfinite(x).all():
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise DataError(
                f"{where}: x holds {bad} NaN or infinite values (dtype {x.dtype}); "
                "fix or drop those images, then store uint8 pixels 0..255"
            )
        raise DataError(
            f"{where}: x must be uint8 pixels 0..255, got {x.dtype}; convert it, e.g. "
            "np.round(x * 255).clip(0, 255).astype(np.uint8) for values in [0, 1]"
        )
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        hint = ""
        if x.ndim == 4 and x.shape[1] == 3 and x.shape[-1] != 3:
            hint = " (channels first? use x.transpose(0, 2, 3, 1))"
        elif x.ndim == 3:
            hint = " (grayscale? repeat it: np.repeat(x[..., None], 3, axis=-1))"
        raise DataError(f"{where}: x must be uint8 N x H x W x 3, got {x.dtype} {x.shape}{hint}")
    if x.shape[1] != x.shape[2]:
        raise DataError(f"{where}: images must be square, got {x.shape[1]}x{x.shape[2]}")
    if len(x) == 0:
        raise DataError(f"{where}: no images")
    return x


def nchw(x_nhwc: np.ndarray) -> torch.Tensor:
    """N x H x W x C array -> contiguous (N, C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))


def decode_str(value: Any) -> str:
    """A name stored as ``bytes`` (Python 2 pickles, numpy ``S`` arrays) or ``str``."""
    return value.decode("latin1") if isinstance(value, bytes) else str(value)
