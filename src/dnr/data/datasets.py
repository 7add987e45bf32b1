"""Any torch ``Dataset`` (or sequence of ``(image, label)`` pairs) as a :class:`SourceData`.

Items are converted once into the uint8 tensors the loaders keep: a PIL image, a float
tensor C x H x W in [0, 1] (what ``torchvision.transforms.ToTensor`` makes), a uint8 tensor
C x H x W, or a uint8 array H x W x C (or H x W, grayscale). Random transforms inside the
dataset run once here, not per epoch: training augments with its own seeded crop and flip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dnr.data.source import UNKNOWN_STATS, DataError, DatasetMeta, SourceData

__all__ = ["from_datasets", "image_to_chw"]


def image_to_chw(image: Any, where: str) -> np.ndarray:
    """One item's image as uint8 3 x H x W (grayscale repeated to RGB), or a DataError."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dtype.is_floating_point:
            if t.numel() and not bool(torch.isfinite(t).all()):
                raise DataError(f"{where}: the image holds NaN or infinite values")
            if t.numel() and (t.min() < 0 or t.max() > 1):
                raise DataError(
                    f"{where}: float images must be in [0, 1] (ToTensor, before Normalize: "
                    f"the model normalises itself), got [{float(t.min()):g}, {float(t.max()):g}]"
                )
            t = t.mul(255).round().to(torch.uint8)
        if t.dtype != torch.uint8 or t.ndim not in (2, 3):
            raise DataError(f"{where}: expected a C x H x W image, got {t.dtype} {tuple(t.shape)}")
        chw = t.unsqueeze(0) if t.ndim == 2 else t
        return _rgb(chw.numpy(), where)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise DataError(
                f"{where}: arrays must be uint8 H x W x C, got {image.dtype} {image.shape}"
            )
        hwc = image[..., None] if image.ndim == 2 else image
        return _rgb(hwc.transpose(2, 0, 1), where)
    raise DataError(
        f"{where}: an image must be a PIL image, a tensor or a uint8 array, "
        f"got {type(image).__name__}"
    )


def _rgb(chw: np.ndarray, where: str) -> np.ndarray:
    if chw.shape[0] == 1:
        return np.repeat(chw, 3, axis=0)
    if chw.shape[0] != 3:
        raise DataError(f"{where}: expected 1 or 3 channels, got shape {chw.shape}")
    return chw


def _label(value: Any, where: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: the label must be an integer, got {value!r}")
    if value < 0:
        raise DataError(f"{where}: negative label {value}")
    return value


def _convert(dataset: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item of ``dataset`` as (uint8 N x 3 x H x W, int64 N); one size for all."""
    if dataset is None:
        return torch.zeros(0, 3, 0, 0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    n = len(dataset)
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for i in range(n):
        item = dataset[i]
        where = f"{split} item {i}"
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DataError(f"{where}: expected an (image, label) pair, got {type(item).__name__}")
        x = image_to_chw(item[0], where)
        if x.shape[1] != x.shape[2]:
            raise DataError(
                f"{where}: images must be square, got {x.shape[1]}x{x.shape[2]}; "
                "resize and crop them in the dataset's transform"
            )
        if xs and x.shape != xs[0].shape:
            raise DataError(
                f"{where}: image is {x.shape[1]}x{x.shape[2]}, item 0 {xs[0].shape[1]}x"
                f"{xs[0].shape[2]}; give every image one size (e.g. Resize + CenterCrop)"
            )
        xs.append(x)
        ys.append(_label(item[1], where))
    if not xs:
        return torch.zeros(0, 3, 0, 0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64)


def from_datasets(
    train: Any,
    test: Any,
    *,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    name: str = "datasets",
) -> SourceData:
    """``train`` and ``test`` (torch Datasets or sequences of ``(image, label)``) as a
    :class:`SourceData` for ``dnr.training.train(cfg, out, data=...)``.

    Classes: ``classes`` (names), else ``num_classes``, else max label + 1. Mean and std are
    computed from the training split unless ``data.mean``/``data.std`` give them. ``train``
    may be None to evaluate on ``test`` alone.
    """
    x_train, y_train = _convert(train, "train")
    x_test, y_test = _convert(test, "test")
    if len(y_test) == 0:
        raise DataError(f"{name}: the test dataset is empty")
    if len(y_train) and x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{name}: train images are {x_train.shape[2]}x{x_train.shape[3]}, test images "
            f"{x_test.shape[2]}x{x_test.shape[3]}; give both one size"
        )
    top = int(max(y_train.max() if len(y_train) else 0, y_test.max()))
    inferred = classes is None and num_classes is None
    names = list(classes) if classes is not None else None
    count = len(names) if names is not None else (num_classes or top + 1)
    if num_classes is not None and names is not None and num_classes != len(names):
        raise DataError(f"{name}: num_classes={num_classes} but {len(names)} class names")
    if top >= count:
        raise DataError(f"{name}: label {top} out of range for {count} classes")
    if len(y_train) == 0:
        x_train = torch.zeros(0, *x_test.shape[1:], dtype=torch.uint8)
    meta = DatasetMeta(
        name=name,
        classes=names or [str(i) for i in range(count)],
        num_classes=count,
        image_size=int(x_test.shape[-1]),
        mean=UNKNOWN_STATS,
        std=UNKNOWN_STATS,
        classes_inferred=inferred,
    )
    return SourceData(x_train, y_train, x_test, y_test, meta)
