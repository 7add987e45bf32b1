"""Each dataset format -> full train and test sets as uint8 NCHW tensors, plus metadata.

Everything read from disk is checked here, so that bad data stops the run with a one-line
:class:`DataError` naming the file and the problem, before any training starts. Splitting
(validation hold-out, subsets) happens in :mod:`dnr.data.loader`.

Formats:

- ``cifar10`` / ``cifar100``: torchvision's on-disk pickles, read with a restricted unpickler.
- ``tiny-imagenet``: the original ``tiny-imagenet-200/`` folder; the labelled ``val/`` set is
  the test split. JPEGs are decoded once and cached as ``.npz``.
- ``npz``: ``.npz`` files with ``x`` (uint8 N x H x W x 3) and ``y`` (integer labels).
- ``digits``: scikit-learn's bundled 8x8 digits, upsampled to 32x32 RGB; needs no download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import tarfile
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dnr.config import DataConfig
from dnr.constants import CIFAR_MEAN, CIFAR_STD, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD
from dnr.fileio import atomic_write

log = logging.getLogger(__name__)



class DataError(ValueError):
    """Bad or missing data: a one-line message naming the file and the problem."""

    def __init__(self, message: str) -> None:
        # Messages embed paths and library errors; keep them on one line for the CLI.
        super().__init__(" ".join(str(message).split()))


@dataclass
class DatasetMeta:
    """What a model and a report need to know about a dataset."""

    name: str
    classes: list[str]
    num_classes: int
    image_size: int  # 32 or 64
    mean: tuple[float, float, float]  # in [0, 1] units
    std: tuple[float, float, float]


@dataclass
class SourceData:
    """A dataset as stored: its full train and test sets, before any split or subset."""

    x_train: torch.Tensor  # uint8 (N, 3, H, W)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    meta: DatasetMeta

    @classmethod
    def from_numpy(cls, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                   y_test: np.ndarray, meta: DatasetMeta) -> SourceData:
        """Wrap decoded arrays without copying them."""
        arrays = (x_train, y_train, x_test, y_test)
        return cls(*(torch.from_numpy(a) for a in arrays), meta)


def read_source(cfg: DataConfig) -> SourceData:
    """Read the dataset named by ``cfg.name`` (downloading only if ``cfg.download``)."""
    if cfg.name in _CIFAR_SPECS:
        return _read_cifar(_CIFAR_SPECS[cfg.name], Path(cfg.root), download=cfg.download)
    if cfg.name == "tiny-imagenet":
        return _read_tiny_imagenet(Path(cfg.root), download=cfg.download)
    if cfg.name == "npz":
        return _read_npz(cfg.train, cfg.test, root=Path(cfg.root))
    if cfg.name == "digits":
        return _read_digits()
    raise DataError(f"data.name: unknown dataset {cfg.name!r}")


# --------------------------------------------------------------------------- checks


def _check_labels(raw: Any, n: int, num_classes: int | None, where: str) -> np.ndarray:
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


def _check_images_nhwc(x: Any, where: str) -> np.ndarray:
    """Images must be non-empty uint8 N x H x W x 3 with H == W."""
    if not isinstance(x, np.ndarray):
        raise DataError(f"{where}: x must be an array, got {type(x).__name__}")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"{where}: x must be uint8 N x H x W x 3, got {x.dtype} {x.shape}")
    if x.shape[1] != x.shape[2]:
        raise DataError(f"{where}: images must be square, got {x.shape[1]}x{x.shape[2]}")
    if len(x) == 0:
        raise DataError(f"{where}: no images")
    return x


def _nchw(x_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))


# --------------------------------------------------------------------------- safe pickle


def _numpy_attr(*candidates: str) -> Any:
    """The first importable ``module:attr``; numpy 2 moved ``numpy.core`` to ``numpy._core``."""
    import importlib

    for dotted in candidates:
        module, _, attr = dotted.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {candidates} is available")


_RECONSTRUCT = ("numpy._core.multiarray:_reconstruct", "numpy.core.multiarray:_reconstruct")
_FROMBUFFER = ("numpy._core.numeric:_frombuffer", "numpy.core.numeric:_frombuffer")

# The only globals a CIFAR pickle may name: what numpy needs to rebuild an array. Resolved to
# the objects directly, so no other module is ever imported on a pickle's say-so.
_ALLOWED_GLOBALS: dict[tuple[str, str], tuple[str, ...]] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    # Protocol 5 (Python >= 3.14's default) stores arrays via _frombuffer(buffer, dtype, ...).
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): ("numpy:ndarray",),
    ("numpy", "dtype"): ("numpy:dtype",),
    ("numpy.core.multiarray", "ndarray"): ("numpy:ndarray",),
    ("numpy._core.multiarray", "ndarray"): ("numpy:ndarray",),
    ("numpy.core.multiarray", "dtype"): ("numpy:dtype",),
    ("numpy._core.multiarray", "dtype"): ("numpy:dtype",),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for data-only files: refuses every global except numpy array rebuilding.

    The default unpickler runs whatever callable the file names (``os.system``, ...); the
    CIFAR files only hold dicts, lists, bytes, str, ints and numpy arrays.
    """

    def find_class(self, module: str, name: str) -> Any:
        candidates = _ALLOWED_GLOBALS.get((module, name))
        if candidates is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return _numpy_attr(*candidates)


def restricted_load(path: Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; any failure is a DataError.

    ``encoding="latin1"`` is what numpy needs for arrays pickled by Python 2 (the original
    CIFAR files); their ``str`` keys then arrive as ``str``, Python 3 ``bytes`` keys as bytes.
    """
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, encoding="latin1").load()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    except Exception as err:  # a corrupt pickle can fail in many ways; all mean the same
        raise DataError(f"{path}: not a valid data pickle ({type(err).__name__}: {err})") from None


def _str(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _pickle_dict(path: Path) -> dict[str, Any]:
    obj = restricted_load(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {_str(key): value for key, value in obj.items()}


# --------------------------------------------------------------------------- download


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_member_name(name: str, archive: Path) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"{archive}: refusing to extract unsafe path {name!r}")


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract a .tar.gz or .zip, refusing absolute paths, '..', links and device files."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member_name(info.filename, archive)
            zf.extractall(dest)
        return
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member_name(member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise DataError(
                        f"{archive}: refusing to extract link or special file {member.name!r}"
                    )
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: a second line of defence
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=members)
    except tarfile.TarError as err:
        raise DataError(f"{archive}: not a valid archive ({err})") from None


def _download_and_extract(url: str, md5: str, root: Path) -> None:
    """Fetch ``url`` into ``root``, verify its md5, extract it there, delete the archive."""
    root.mkdir(parents=True, exist_ok=True)
    archive = root / url.rsplit("/", 1)[1]
    if not (archive.is_file() and _md5(archive) == md5):
        part = archive.with_name(archive.name + ".part")
        log.warning("downloading %s to %s", url, archive)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
        except OSError as err:  # URLError and timeouts are OSErrors
            part.unlink(missing_ok=True)
            raise DataError(f"{url}: download failed ({err})") from None
        digest = _md5(part)
        if digest != md5:
            part.unlink(missing_ok=True)
            raise DataError(f"{url}: md5 {digest} does not match the expected {md5}; retry")
        os.replace(part, archive)
    _safe_extract(archive, root)
    archive.unlink(missing_ok=True)


# --------------------------------------------------------------------------- CIFAR


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


def _cifar_missing(folder: Path, spec: _CifarSpec) -> list[str]:
    names = (*spec.train_files, *spec.test_files, spec.meta_file)
    return [name for name in names if not (folder / name).is_file()]


def _read_cifar_batch(path: Path, spec: _CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 N x 3 x 32 x 32, int64 labels)."""
    d = _pickle_dict(path)
    data = d.get("data")
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: no 'data' array")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be uint8 N x 3072, got {data.dtype} {data.shape}")
    if len(data) == 0:
        raise DataError(f"{path}: no images")
    if spec.label_key not in d:
        raise DataError(f"{path}: no '{spec.label_key}' list")
    y = _check_labels(d[spec.label_key], len(data), spec.num_classes, str(path))
    return data.reshape(-1, 3, 32, 32), y  # rows are stored as R, G, B planes: already CHW


def _read_cifar(spec: _CifarSpec, root: Path, *, download: bool) -> SourceData:
    """torchvision's layout: ``root/<folder>/...`` (``root`` may also be the folder itself)."""
    folder = root if not _cifar_missing(root, spec) else root / spec.folder
    missing = _cifar_missing(folder, spec)
    if missing and download:
        _download_and_extract(spec.url, spec.md5, root)
        folder = root / spec.folder
        missing = _cifar_missing(folder, spec)
    if missing:
        hint = "" if download else "; pass data.download=true to fetch it, or set data.root"
        raise DataError(f"{spec.name}: {folder / missing[0]} not found (looked in {root}){hint}")

    parts = [_read_cifar_batch(folder / name, spec) for name in spec.train_files]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_cifar_batch(folder / spec.test_files[0], spec)

    meta_path = folder / spec.meta_file
    names = _pickle_dict(meta_path).get(spec.names_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DataError(f"{meta_path}: '{spec.names_key}' must list {spec.num_classes} names")
    meta = DatasetMeta(
        name=spec.name,
        classes=[_str(n) for n in names],
        num_classes=spec.num_classes,
        image_size=32,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )
    return SourceData.from_numpy(x_train, y_train, x_test, y_test, meta)


# --------------------------------------------------------------------------- Tiny-ImageNet

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


def _tiny_pixels(folder: Path, train_files: list[Path], y_train: np.ndarray,
                 test_files: list[Path], y_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images from the cache when it matches the file list, else decode and cache."""
    key = _cache_key(folder, train_files + test_files, np.concatenate([y_train, y_test]))
    name = f"tiny-imagenet-{key}.npz"
    for directory in (folder, user_cache_dir()):
        if (directory / name).is_file():
            cached = _load_cache(directory / name, len(train_files), len(test_files))
            if cached is not None:
                return cached

    log.warning("decoding %d JPEGs in %s once; they are cached as %s",
                len(train_files) + len(test_files), folder, name)
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


def _read_tiny_imagenet(root: Path, *, download: bool) -> SourceData:
    """The original layout; ``root`` is the dataset folder or its parent.

    ``wnids.txt`` order defines the class indices; ``val/`` (labelled) is the test split
    because the official test set has no labels.
    """
    folder = _find_tiny_folder(root)
    if folder is None and download:
        _download_and_extract(TINY_IMAGENET_URL, TINY_IMAGENET_MD5, root)
        folder = _find_tiny_folder(root)
    if folder is None:
        hint = "" if download else "; pass data.download=true to fetch it, or set data.root"
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


# --------------------------------------------------------------------------- npz


def _resolve(path: str, root: Path) -> Path:
    """A path as given (absolute, or relative to the working directory), else under root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not (root / p).exists():
        return p
    return root / p


def _read_npz_file(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
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
    x = _check_images_nhwc(x, str(path))
    y = _check_labels(y, len(x), None, str(path))
    names = None
    if classes is not None:
        if classes.ndim != 1 or classes.dtype.kind not in "US" or len(classes) == 0:
            raise DataError(f"{path}: 'classes' must be a 1-D array of names")
        names = [_str(c) for c in classes.tolist()]
    return x, y, names


def _read_npz(train: list[str], test: list[str], *, root: Path) -> SourceData:
    """Concatenate the files of each split; classes from a ``classes`` array or max label + 1."""
    if not train or not test:
        raise DataError("npz: data.train and data.test must each name at least one .npz file")
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
            _check_labels(y, len(y), len(classes), str(path))
        num_classes = len(classes)
    else:
        num_classes = 1 + max(int(y.max()) for _, _, y in splits["train"] + splits["test"])
        classes = [str(i) for i in range(num_classes)]

    def stack(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        parts = splits[split]
        x = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
        y = parts[0][2] if len(parts) == 1 else np.concatenate([p[2] for p in parts])
        return _nchw(x), torch.from_numpy(y)

    assert size is not None
    meta = DatasetMeta(
        name="npz",
        classes=classes,
        num_classes=num_classes,
        image_size=int(size[0]),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )
    return SourceData(*stack("train"), *stack("test"), meta)


# --------------------------------------------------------------------------- digits

DIGITS_TEST_SIZE = 360
_DIGITS_SPLIT_SEED = 0


def _read_digits() -> SourceData:
    """scikit-learn's 1,797 8x8 digits (0-16 gray), bilinearly upsampled to 32x32 RGB uint8.

    The embedded default: no download, tiny, and learnable in seconds on a CPU. It has no
    official test set, so a fixed random 360 images (seed 0, independent of ``data.seed`` so
    runs with different seeds share one test set) are the test split and the other 1,437 the
    train set. With the default ``data.val_size`` of 1000 the validation hold-out is capped at
    10% of the train rows (143 images); see :func:`dnr.data.loader.validation_size`.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # (N, 1, 8, 8)
    big = F.interpolate(gray, size=(32, 32), mode="bilinear", align_corners=False)
    x = big.mul(255).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(np.asarray(digits.target, np.int64))
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


# Interim: the dataset registry (to be replaced by per-format modules registering themselves).
from dnr.registry import DATASETS as _DATASETS  # noqa: E402

for _name in ("cifar10", "cifar100", "tiny-imagenet", "npz", "digits"):
    _DATASETS.register(read_source, name=_name)
