"""``svhn``: the official Street View House Numbers files ``train_32x32.mat`` and
``test_32x32.mat`` (MATLAB v5), read with ``scipy.io.loadmat`` (the ``svhn`` extra).

``X`` is uint8 32 x 32 x 3 x N and ``y`` N x 1 with labels 1..10, where 10 stands for the
digit 0: it becomes label 0, so that label k is digit k. The ``extra_32x32.mat`` set is not
read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dnr.config import DataConfig
from dnr.data.safety import download_file
from dnr.data.source import (
    UNKNOWN_STATS,
    DataError,
    DatasetMeta,
    SourceData,
    check_images_nhwc,
    check_labels,
)
from dnr.registry import DATASETS

__all__ = ["SVHN_FILES", "read_svhn", "svhn_arrays"]

_URL = "http://ufldl.stanford.edu/housenumbers/"
#: file name -> md5 of the official file (as torchvision checks them)
SVHN_FILES = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
}


def svhn_arrays(x: Any, y: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The arrays of one ``.mat`` file -> (uint8 N x 3 x 32 x 32, int64 labels 0..9)."""
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[2] != 3:
        shape = getattr(x, "shape", None)
        raise DataError(f"{where}: 'X' must be uint8 H x W x 3 x N, got {shape}")
    nhwc = check_images_nhwc(np.ascontiguousarray(x.transpose(3, 0, 1, 2)), where)
    labels = np.asarray(y).reshape(-1) if y is not None else None
    labels = check_labels(labels, len(nhwc), 11, where)
    if len(labels) and labels.min() < 1:
        raise DataError(f"{where}: SVHN labels are 1..10, got {labels.min()}")
    labels = np.where(labels == 10, 0, labels)
    return np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)), labels


def _loadmat(path: Path) -> tuple[Any, Any]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(
            "svhn: reading its .mat files needs scipy: pip install torch-dnr[svhn]"
        ) from None
    if not path.is_file():
        raise DataError(f"{path}: not found")
    try:
        contents = loadmat(str(path), variable_names=("X", "y"))
    except Exception as err:  # a corrupt file fails in scipy in many ways; all mean the same
        raise DataError(
            f"{path}: cannot read as a MATLAB file ({type(err).__name__}: {err})"
        ) from None
    if "X" not in contents or "y" not in contents:
        raise DataError(f"{path}: expected variables X and y")
    return contents["X"], contents["y"]


def _svhn_split(root: Path, name: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    path = root / name
    if not path.is_file() and download:
        download_file(_URL + name, SVHN_FILES[name], root)
    if not path.is_file():
        hint = "" if download else "; pass data.download=true to fetch it, or set data.root"
        raise DataError(f"svhn: {path} not found{hint}")
    return svhn_arrays(*_loadmat(path), str(path))


@DATASETS.register(name="svhn")
def read_svhn(cfg: DataConfig, *, test_only: bool = False) -> SourceData:
    """SVHN digits: 73,257 train and 26,032 test 32x32 images, 10 classes (label k = digit k)."""
    root = Path(cfg.root).expanduser()
    x_test, y_test = _svhn_split(root, "test_32x32.mat", cfg.download)
    if test_only:
        x_train, y_train = np.zeros((0, *x_test.shape[1:]), np.uint8), np.zeros(0, np.int64)
    else:
        x_train, y_train = _svhn_split(root, "train_32x32.mat", cfg.download)
    meta = DatasetMeta(
        name="svhn",
        classes=[str(i) for i in range(10)],
        num_classes=10,
        image_size=32,
        mean=UNKNOWN_STATS,
        std=UNKNOWN_STATS,
    )
    return SourceData.from_numpy(x_train, y_train, x_test, y_test, meta)
