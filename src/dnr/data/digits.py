"""``digits``: the embedded default dataset, 1,797 8x8 handwritten digits upsampled to 32x32 RGB.

No download, tiny, and learnable in seconds on a CPU. The raw 8x8 images (integers 0-16) and
their labels ship with the package as ``digits.npz`` (``images``: uint8 (1797, 8, 8),
``labels``: int64 (1797,)).

Data origin: "Optical Recognition of Handwritten Digits" by E. Alpaydin and C. Kaynak (1998),
UCI Machine Learning Repository
(https://archive.ics.uci.edu/ml/datasets/Optical+Recognition+of+Handwritten+Digits),
licensed under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/). ``digits.npz`` is
the copy of its test set that scikit-learn bundles (its ``datasets.load_digits``),
stored as uint8; the values are bit-identical to what ``load_digits`` returns.
"""

from __future__ import annotations

import zipfile
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from dnr.config import DataConfig
from dnr.constants import CIFAR_MEAN, CIFAR_STD
from dnr.data.source import DataError, DatasetMeta, SourceData
from dnr.registry import DATASETS

DIGITS_FILE = "digits.npz"
DIGITS_TEST_SIZE = 360
_DIGITS_SPLIT_SEED = 0
_NUM_DIGITS = 1797


def load_raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """The shipped 8x8 digits: (uint8 (1797, 8, 8) in 0..16, int64 (1797,) in 0..9)."""
    resource = resources.files(__package__).joinpath(DIGITS_FILE)
    try:
        with resource.open("rb") as handle, np.load(handle, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(
            f"{resource}: cannot read the bundled digits ({err}); reinstall torch-dnr"
        ) from None
    if (
        images.dtype != np.uint8
        or images.shape != (_NUM_DIGITS, 8, 8)
        or labels.dtype != np.int64
        or labels.shape != (_NUM_DIGITS,)
    ):
        raise DataError(
            f"{resource}: unexpected contents {images.dtype} {images.shape}, "
            f"{labels.dtype} {labels.shape}; reinstall torch-dnr"
        )
    return images, labels


@DATASETS.register(name="digits")
def read_digits(cfg: DataConfig) -> SourceData:
    """The 1,797 8x8 digits (0-16 gray), bilinearly upsampled to 32x32 RGB uint8.

    It has no official test set, so a fixed random 360 images (seed 0, independent of
    ``data.seed`` so runs with different seeds share one test set) are the test split and the
    other 1,437 the train set. With the default ``data.val_size`` of 1000 the validation
    hold-out is capped at 10% of the train rows (143 images); see
    :func:`dnr.data.loader.validation_size`. ``cfg`` is not consulted: nothing to locate.
    """
    images, labels = load_raw_digits()
    gray = torch.from_numpy(images).float().div(16).unsqueeze(1)  # (N, 1, 8, 8)
    big = F.interpolate(gray, size=(32, 32), mode="bilinear", align_corners=False)
    x = big.mul(255).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(labels)
    perm = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(y))
    test = torch.from_numpy(np.sort(perm[:DIGITS_TEST_SIZE]))
    train = torch.from_numpy(np.sort(perm[DIGITS_TEST_SIZE:]))
    meta = DatasetMeta(
        name="digits",
        classes=[str(i) for i in range(10)],
        num_classes=10,
        image_size=32,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )
    return SourceData(x[train], y[train], x[test], y[test], meta)
