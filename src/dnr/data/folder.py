"""``folder``: images in the ImageFolder layout, ``data.root/{train,test}/<class>/<image>``.

Class indices are the sorted names of ``train/``'s sub-folders, so train and test share one
mapping; a class may have no test images, but a test class unknown to ``train/`` is an
error. ``val/`` stands in for a missing ``test/``. Images are decoded with Pillow, converted
to RGB and, with ``data.image_size``, resized (shorter side) and center-cropped to that
square; without it they must all be one square size already. Each split's decoded pixels
are cached as ``.npz`` next to the data (or in the user's cache dir), keyed by its file
list, sizes, modification times, labels and ``data.image_size``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from dnr.config import DataConfig
from dnr.data.source import UNKNOWN_STATS, DataError, DatasetMeta, SourceData
from dnr.data.tiny_imagenet import cache_dir_for, user_cache_dir
from dnr.fileio import atomic_write
from dnr.registry import DATASETS

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "read_folder"]

#: Files with another suffix (``.DS_Store``, ``Thumbs.db``, notes) are not images: skipped.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
)
_LAYOUT = "root/train/<class>/<image> and root/test/<class>/<image>"
_CACHE_VERSION = 1


def _class_dirs(split_dir: Path) -> list[str]:
    names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not names:
        raise DataError(f"{split_dir}: no class folders (expected {_LAYOUT})")
    return names


def _listing(split_dir: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image files of every class folder present, sorted; labels index ``classes``."""
    index = {name: i for i, name in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for name in _class_dirs(split_dir):
        if name not in index:
            raise DataError(
                f"{split_dir / name}: class {name!r} has no folder in train/ (classes: "
                f"{', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})"
            )
        class_dir = split_dir / name
        found = sorted(
            p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        files += found
        labels += [index[name]] * len(found)
    if not files:
        raise DataError(f"{split_dir}: no images (suffixes {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files, np.asarray(labels, np.int64)


def decode_image(path: Path, size: int | None) -> np.ndarray:
    """One image -> uint8 3 x H x W, RGB; resized + center-cropped to ``size`` if given."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    # UnidentifiedImageError is an OSError; a decompression bomb is neither
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot decode image ({err})") from None
    if size is not None and rgb.size != (size, size):
        w, h = rgb.size
        scale = size / min(w, h)
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        rgb = rgb.resize(new, Image.Resampling.BILINEAR)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        rgb = rgb.crop((left, top, left + size, top + size))
    return np.asarray(rgb).transpose(2, 0, 1)


def _decode_all(files: list[Path], size: int | None) -> list[np.ndarray]:
    # Pillow releases the GIL while decoding, so threads give a real speed-up.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: decode_image(p, size), files))


def _stack(images: list[np.ndarray], files: list[Path]) -> np.ndarray:
    """One uint8 N x 3 x S x S array; any image of another (or a non-square) size is named."""
    ref = images[0].shape
    for path, image in zip(files, images):
        if image.shape != ref or ref[1] != ref[2]:
            what = f"{image.shape[2]}x{image.shape[1]}"
            other = f", but {files[0]} is {ref[2]}x{ref[1]}" if image.shape != ref else ""
            raise DataError(
                f"{path}: image is {what}{other}; set data.image_size=N to resize and "
                "center-crop every image to N x N"
            )
    return np.stack(images)


def _cache_name(
    root: Path, split: str, files: list[Path], labels: np.ndarray, size: int | None
) -> str:
    """Changes whenever a file is added, removed, rewritten or relabelled, or the size."""
    digest = hashlib.sha256(f"v{_CACHE_VERSION}\t{size}\n".encode())
    for path, label in zip(files, labels.tolist()):
        stat = path.stat()
        name = path.relative_to(root).as_posix()
        digest.update(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}\n".encode())
    return f"dnr-folder-{split}-{digest.hexdigest()[:20]}.npz"


def _load_cached(path: Path, n: int) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            x = z["x"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        log.warning("ignoring unreadable cache %s (%s)", path, err)
        return None
    if x.dtype != np.uint8 or x.ndim != 4 or len(x) != n:
        log.warning("ignoring cache %s: it does not match the image list", path)
        return None
    return x


def _save_cached(path: Path, x: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.savez would append '.npz' to a name
            np.savez(handle, x=x)

    try:
        atomic_write(path, write)
    except OSError as err:
        log.warning("could not write the cache %s (%s)", path, err)


def _split_pixels(
    root: Path, split: str, files: list[Path], labels: np.ndarray, size: int | None
) -> np.ndarray:
    """A split's images, from the cache when it matches the file list, else decoded."""
    name = _cache_name(root, split, files, labels, size)
    for directory in (root, user_cache_dir()):
        if (directory / name).is_file():
            cached = _load_cached(directory / name, len(files))
            if cached is not None:
                return cached
    log.warning("decoding %d images in %s once; they are cached as %s", len(files), root, name)
    x = _stack(_decode_all(files, size), files)
    _save_cached(cache_dir_for(root) / name, x)
    return x


@DATASETS.register(name="folder")
def read_folder(cfg: DataConfig, *, test_only: bool = False) -> SourceData:
    """Your own images in class folders: data.root/train/<class>/, data.root/test/<class>/.

    ``test_only``: only ``test/`` is decoded (``train/``, when present, still names the
    classes, so that indices match those the model was trained with).
    """
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"folder: data.root {root} is not a directory (expected {_LAYOUT})")
    train_dir = root / "train"
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not test_dir.is_dir():
        raise DataError(f"folder: {root} has no test/ (or val/) folder (expected {_LAYOUT})")
    if not train_dir.is_dir() and not test_only:
        raise DataError(f"folder: {train_dir} not found (expected {_LAYOUT})")
    classes = _class_dirs(train_dir if train_dir.is_dir() else test_dir)
    test_files, y_test = _listing(test_dir, classes)
    train_files, y_train = (
        ([], np.zeros(0, np.int64)) if test_only else _listing(train_dir, classes)
    )
    x_test = _split_pixels(root, "test", test_files, y_test, cfg.image_size)
    if test_only:
        x_train = np.zeros((0, *x_test.shape[1:]), np.uint8)
    else:
        x_train = _split_pixels(root, "train", train_files, y_train, cfg.image_size)
        if x_train.shape[1:] != x_test.shape[1:]:
            raise DataError(
                f"{test_files[0]}: test images are {x_test.shape[3]}x{x_test.shape[2]}, "
                f"train images {x_train.shape[3]}x{x_train.shape[2]}; set data.image_size=N "
                "to resize and center-crop every image to N x N"
            )
    meta = DatasetMeta(
        name="folder",
        classes=classes,
        num_classes=len(classes),
        image_size=int(x_test.shape[-1]),
        mean=UNKNOWN_STATS,
        std=UNKNOWN_STATS,
    )
    return SourceData.from_numpy(x_train, y_train, x_test, y_test, meta)
