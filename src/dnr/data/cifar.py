"""``cifar10`` / ``cifar100``: torchvision's on-disk pickles, read with a restricted unpickler."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnr.config import DataConfig
from dnr.constants import CIFAR_MEAN, CIFAR_STD
from dnr.data.safety import download_and_extract, pickle_dict
from dnr.data.source import DataError, DatasetMeta, SourceData, check_labels, decode_str
from dnr.registry import DATASETS


@dataclass(frozen=True)
class _CifarSpec:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    url: str
    md5: str


# Looked up when a dataset is read (not when it is registered), so tests may patch an entry.
_CIFAR_SPECS: dict[str, _CifarSpec] = {
    "cifar10": _CifarSpec(
        name="cifar10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": _CifarSpec(
        name="cifar100",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
    ),
}


@DATASETS.register(name="cifar10")
def read_cifar10(cfg: DataConfig) -> SourceData:
    """CIFAR-10: 50,000 train and 10,000 test 32x32 images, 10 classes."""
    return _read_cifar(_CIFAR_SPECS["cifar10"], Path(cfg.root), download=cfg.download)


@DATASETS.register(name="cifar100")
def read_cifar100(cfg: DataConfig) -> SourceData:
    """CIFAR-100 with its 100 fine labels."""
    return _read_cifar(_CIFAR_SPECS["cifar100"], Path(cfg.root), download=cfg.download)


def _cifar_missing(folder: Path, spec: _CifarSpec) -> list[str]:
    names = (*spec.train_files, *spec.test_files, spec.meta_file)
    return [name for name in names if not (folder / name).is_file()]


def _read_cifar_batch(path: Path, spec: _CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 N x 3 x 32 x 32, int64 labels)."""
    d = pickle_dict(path)
    data = d.get("data")
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: no 'data' array")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be uint8 N x 3072, got {data.dtype} {data.shape}")
    if len(data) == 0:
        raise DataError(f"{path}: no images")
    if spec.label_key not in d:
        raise DataError(f"{path}: no '{spec.label_key}' list")
    y = check_labels(d[spec.label_key], len(data), spec.num_classes, str(path))
    return data.reshape(-1, 3, 32, 32), y  # rows are stored as R, G, B planes: already CHW


def _read_cifar(spec: _CifarSpec, root: Path, *, download: bool) -> SourceData:
    """torchvision's layout: ``root/<folder>/...`` (``root`` may also be the folder itself)."""
    folder = root if not _cifar_missing(root, spec) else root / spec.folder
    missing = _cifar_missing(folder, spec)
    if missing and download:
        download_and_extract(spec.url, spec.md5, root)
        folder = root / spec.folder
        missing = _cifar_missing(folder, spec)
    if missing:
        hint = "" if download else "; pass data.download=true to fetch it, or set data.root"
        if not root.is_dir():
            raise DataError(
                f"{spec.name}: data.root {root} is not a directory (the files go in "
                f"{root / spec.folder}){hint}"
            )
        raise DataError(f"{spec.name}: {folder / missing[0]} not found (looked in {root}){hint}")

    parts = [_read_cifar_batch(folder / name, spec) for name in spec.train_files]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_cifar_batch(folder / spec.test_files[0], spec)

    meta_path = folder / spec.meta_file
    names = pickle_dict(meta_path).get(spec.names_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DataError(f"{meta_path}: '{spec.names_key}' must list {spec.num_classes} names")
    meta = DatasetMeta(
        name=spec.name,
        classes=[decode_str(n) for n in names],
        num_classes=spec.num_classes,
        image_size=32,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )
    return SourceData.from_numpy(x_train, y_train, x_test, y_test, meta)
