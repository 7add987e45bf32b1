"""``npz``: ``.npz`` files with ``x`` (uint8 N x H x W x 3), ``y`` (integer labels), and
optionally ``classes`` (names); ``data.train`` and ``data.test`` list the files of each split."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from dnr.config import DataConfig
from dnr.data.source import (
    UNKNOWN_STATS,
    DataError,
    DatasetMeta,
    SourceData,
    check_images_nhwc,
    check_labels,
    decode_str,
    nchw,
)
from dnr.registry import DATASETS


@DATASETS.register(name="npz")
def read_npz(cfg: DataConfig, *, test_only: bool = False) -> SourceData:
    """Your own .npz files (data.train, data.test): x uint8 NxHxWx3, y labels.

    The files of each split are concatenated; classes come from a ``classes`` array or are
    max label + 1. Mean and std are computed from the training split (unless data.mean /
    data.std give them). ``test_only``: data.train is not read (and may be empty).
    """
    if not cfg.test or not (cfg.train or test_only):
        raise DataError("npz: data.train and data.test must each name at least one .npz file")
    return _read_npz([] if test_only else cfg.train, cfg.test, root=Path(cfg.root))


def _resolve(path: str, root: Path) -> Path:
    """A path as given (absolute, or relative to the working directory), else under root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not (root / p).exists():
        return p
    return root / p


def _read_npz_file(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    if path.is_dir():
        raise DataError(f"{path}: is a directory; data.train and data.test list .npz files")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy gives one array
            raise DataError(f"{path}: expected an .npz archive with arrays x and y, not .npy")
        with archive as z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                raise DataError(f"{path}: no array {missing[0]!r} (has {', '.join(z.files)})")
            x, y = z["x"], z["y"]
            classes = z["classes"] if "classes" in z.files else None
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path}: cannot read as .npz ({err})") from None
    x = check_images_nhwc(x, str(path))
    y = check_labels(y, len(x), None, str(path))
    names = None
    if classes is not None:
        if classes.ndim != 1 or classes.dtype.kind not in "US" or len(classes) == 0:
            raise DataError(f"{path}: 'classes' must be a 1-D array of names")
        names = [decode_str(c) for c in classes.tolist()]
    return x, y, names


def _read_npz(train: list[str], test: list[str], *, root: Path) -> SourceData:
    """Concatenate the files of each split; classes from a ``classes`` array or max label + 1."""
    splits: dict[str, list[tuple[Path, np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    classes: list[str] | None = None
    classes_from: Path | None = None
    size: tuple[int, ...] | None = None
    for split, paths in (("train", train), ("test", test)):
        for given in paths:
            path = _resolve(given, root)
            x, y, names = _read_npz_file(path)
            if size is None:
                size = x.shape[1:]
            elif x.shape[1:] != size:
                raise DataError(f"{path}: images are {x.shape[1:]}, earlier files {size}")
            if names is not None:
                if classes is None:
                    classes, classes_from = names, path
                elif names != classes:
                    raise DataError(f"{path}: 'classes' differ from those in {classes_from}")
            splits[split].append((path, x, y))

    if classes is not None:
        for path, _, y in splits["train"] + splits["test"]:
            check_labels(y, len(y), len(classes), str(path))
        num_classes = len(classes)
    else:
        parts = splits["train"] + splits["test"]
        top_path, top = max(((p, int(y.max())) for p, _, y in parts), key=lambda t: t[1])
        num_classes = top + 1
        images = sum(len(y) for _, _, y in parts)
        if num_classes > images:  # a stray label would size the model's output layer
            raise DataError(
                f"{top_path}: label {top} implies {num_classes} classes for {images} images; "
                "use labels 0..K-1, or add a 'classes' array naming the K classes"
            )
        classes = [str(i) for i in range(num_classes)]

    assert size is not None
    hw = (int(size[0]), int(size[1]))

    def stack(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        parts = splits[split]
        if not parts:  # the test set alone (dnr eval)
            return torch.zeros(0, 3, *hw, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
        x = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
        y = parts[0][2] if len(parts) == 1 else np.concatenate([p[2] for p in parts])
        return nchw(x), torch.from_numpy(y)

    meta = DatasetMeta(
        name="npz",
        classes=classes,
        num_classes=num_classes,
        image_size=hw[0],
        mean=UNKNOWN_STATS,
        std=UNKNOWN_STATS,
        classes_inferred=classes_from is None,
    )
    return SourceData(*stack("train"), *stack("test"), meta)
