"""``tiny-imagenet``: the original ``tiny-imagenet-200/`` folder, JPEGs decoded once and cached.

The labelled ``val/`` set is the test split (the official test set has no labels). Decoded
pixels are cached as ``.npz`` next to the data (or in the user's cache dir when that is not
writable), keyed by the file list, sizes and labels, so a changed folder is decoded again.
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
from dnr.constants import TINY_IMAGENET_MEAN, TINY_IMAGENET_STD
from dnr.data.safety import download_and_extract
from dnr.data.source import DataError, DatasetMeta, SourceData
from dnr.fileio import atomic_write
from dnr.registry import DATASETS

log = logging.getLogger(__name__)

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
_TINY_SIZE = 64
_TINY_CACHE_VERSION = 1
_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/torch-dnr``, else ``~/.cache/torch-dnr``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "torch-dnr"


def _is_writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def cache_dir_for(data_dir: Path) -> Path:
    """Where to write a decode cache: next to the data if we may write there, else the user's."""
    return data_dir if _is_writable(data_dir) else user_cache_dir()


def _find_tiny_folder(root: Path) -> Path | None:
    for candidate in (root, root / "tiny-imagenet-200"):
        if (candidate / "wnids.txt").is_file():
            return candidate
    return None


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    return [line.rstrip("\r") for line in text.split("\n")]


def _tiny_listing(folder: Path) -> tuple[list[str], list[Path], np.ndarray, list[Path], np.ndarray]:
    """wnids, train files + labels, test (= official val) files + labels; all checked."""
    wnids_path = folder / "wnids.txt"
    wnids = [line.strip() for line in _read_lines(wnids_path) if line.strip()]
    if not wnids:
        raise DataError(f"{wnids_path}: no class ids")
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{wnids_path}: duplicate class ids")
    index = {wnid: i for i, wnid in enumerate(wnids)}

    train_files: list[Path] = []
    train_labels: list[int] = []
    for i, wnid in enumerate(wnids):
        image_dir = folder / "train" / wnid / "images"
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: missing (class {wnid} is listed in {wnids_path})")
        names = sorted(
            e.name for e in os.scandir(image_dir) if Path(e.name).suffix.lower() in _IMAGE_SUFFIXES
        )
        if not names:
            raise DataError(f"{image_dir}: no images")
        train_files += [image_dir / name for name in names]
        train_labels += [i] * len(names)

    ann_path = folder / "val" / "val_annotations.txt"
    if not ann_path.is_file():
        raise DataError(f"{ann_path}: not found (it labels the test split)")
    test_files: list[Path] = []
    test_labels: list[int] = []
    for lineno, line in enumerate(_read_lines(ann_path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"{ann_path}:{lineno}: expected TAB-separated filename and wnid")
        name, wnid = fields[0], fields[1]
        if wnid not in index:
            raise DataError(f"{ann_path}:{lineno}: class {wnid!r} is not in wnids.txt")
        path = folder / "val" / "images" / name
        if not path.is_file():
            raise DataError(f"{path}: not found (listed in {ann_path}:{lineno})")
        test_files.append(path)
        test_labels.append(index[wnid])
    if not test_files:
        raise DataError(f"{ann_path}: no images listed")
    return (
        wnids,
        train_files,
        np.asarray(train_labels, np.int64),
        test_files,
        np.asarray(test_labels, np.int64),
    )


def _tiny_class_names(folder: Path, wnids: list[str]) -> list[str]:
    """First name of each wnid in words.txt (``wnid<TAB>names``); the wnid if none is found."""
    words_path = folder / "words.txt"
    if not words_path.is_file():
        return list(wnids)
    wanted = set(wnids)
    names: dict[str, str] = {}
    for line in _read_lines(words_path):  # the last line has no newline: split() copes
        wnid, _, words = line.partition("\t")
        if wnid in wanted:
            names[wnid] = words.split(",")[0].strip() or wnid
    return [names.get(wnid, wnid) for wnid in wnids]


def _cache_key(folder: Path, files: list[Path], labels: np.ndarray) -> str:
    """Changes whenever the file list, a file's size, or a label changes."""
    digest = hashlib.sha256(f"v{_TINY_CACHE_VERSION}\n".encode())
    for path, label in zip(files, labels.tolist()):
        name = path.relative_to(folder).as_posix()
        digest.update(f"{name}\t{path.stat().st_size}\t{label}\n".encode())
    return digest.hexdigest()[:20]


def _decode_image(path: Path) -> np.ndarray:
    """One image -> uint8 3 x 64 x 64; grayscale (mode L) and others become RGB."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
        raise DataError(f"{path}: cannot decode image ({err})") from None
    if rgb.size != (_TINY_SIZE, _TINY_SIZE):
        raise DataError(f"{path}: expected 64x64, got {rgb.size[0]}x{rgb.size[1]}")
    return np.asarray(rgb).transpose(2, 0, 1)


def _decode_all(files: list[Path]) -> np.ndarray:
    out = np.empty((len(files), 3, _TINY_SIZE, _TINY_SIZE), np.uint8)

    def decode(i: int) -> None:
        out[i] = _decode_image(files[i])

    # Pillow releases the GIL while decoding, so threads give a real speed-up.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for _ in pool.map(decode, range(len(files))):
            pass
    return out


def _load_cache(path: Path, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            x_train, x_test = z["x_train"], z["x_test"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        log.warning("ignoring unreadable cache %s (%s)", path, err)
        return None
    shape = (3, _TINY_SIZE, _TINY_SIZE)
    if x_train.shape != (n_train, *shape) or x_test.shape != (n_test, *shape):
        log.warning("ignoring cache %s: shapes do not match the image list", path)
        return None
    return x_train, x_test


def _save_cache(path: Path, x_train: np.ndarray, x_test: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file handle: np.savez would append '.npz' to a name
            np.savez(handle, x_train=x_train, x_test=x_test)

    atomic_write(path, write)


def _tiny_pixels(
    folder: Path,
    train_files: list[Path],
    y_train: np.ndarray,
    test_files: list[Path],
    y_test: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images from the cache when it matches the file list, else decode and cache."""
    key = _cache_key(folder, train_files + test_files, np.concatenate([y_train, y_test]))
    name = f"tiny-imagenet-{key}.npz"
    for directory in (folder, user_cache_dir()):
        if (directory / name).is_file():
            cached = _load_cache(directory / name, len(train_files), len(test_files))
            if cached is not None:
                return cached

    log.warning(
        "decoding %d JPEGs in %s once; they are cached as %s",
        len(train_files) + len(test_files),
        folder,
        name,
    )
    x_train, x_test = _decode_all(train_files), _decode_all(test_files)
    target = cache_dir_for(folder) / name
    try:
        _save_cache(target, x_train, x_test)
    except OSError as err:
        fallback = user_cache_dir() / name
        if target == fallback:
            log.warning("could not write the cache %s (%s)", target, err)
        else:
            log.warning("could not write %s (%s); caching in %s", target, err, fallback)
            try:
                _save_cache(fallback, x_train, x_test)
            except OSError as err2:
                log.warning("could not write the cache %s (%s)", fallback, err2)
    return x_train, x_test


@DATASETS.register(name="tiny-imagenet")
def read_tiny_imagenet(cfg: DataConfig) -> SourceData:
    """Tiny-ImageNet: 200 classes of 64x64 images, read from its original layout.

    ``data.root`` is the dataset folder or its parent.
    ``wnids.txt`` order defines the class indices; ``val/`` (labelled) is the test split
    because the official test set has no labels.
    """
    root, download = Path(cfg.root), cfg.download
    folder = _find_tiny_folder(root)
    if folder is None and download:
        download_and_extract(TINY_IMAGENET_URL, TINY_IMAGENET_MD5, root)
        folder = _find_tiny_folder(root)
    if folder is None:
        hint = "" if download else "; pass data.download=true to fetch it, or set data.root"
        if not root.is_dir():
            raise DataError(
                f"tiny-imagenet: data.root {root} is not a directory (expected "
                f"{root / 'tiny-imagenet-200'}/wnids.txt){hint}"
            )
        raise DataError(
            f"tiny-imagenet: no wnids.txt in {root} or {root / 'tiny-imagenet-200'}{hint}"
        )
    wnids, train_files, y_train, test_files, y_test = _tiny_listing(folder)
    x_train, x_test = _tiny_pixels(folder, train_files, y_train, test_files, y_test)
    meta = DatasetMeta(
        name="tiny-imagenet",
        classes=_tiny_class_names(folder, wnids),
        num_classes=len(wnids),
        image_size=_TINY_SIZE,
        mean=TINY_IMAGENET_MEAN,
        std=TINY_IMAGENET_STD,
    )
    return SourceData.from_numpy(x_train, y_train, x_test, y_test, meta)
