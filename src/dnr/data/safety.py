"""Reading files we did not write: a restricted unpickler, md5-checked downloads, safe extraction.

Nothing here trusts the file: a pickle may only rebuild numpy arrays, an archive may not
write outside its destination, and a download is kept only when its md5 matches.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import pickle
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from dnr.data.source import DataError, decode_str

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- safe pickle


def _numpy_attr(*candidates: str) -> Any:
    """The first importable ``module:attr``; numpy 2 moved ``numpy.core`` to ``numpy._core``."""
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


def pickle_dict(path: Path) -> dict[str, Any]:
    """A pickled dict via :func:`restricted_load`, its keys decoded to ``str``."""
    obj = restricted_load(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {decode_str(key): value for key, value in obj.items()}


# --------------------------------------------------------------------------- download


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_member_name(name: str, archive: Path) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"{archive}: refusing to extract unsafe path {name!r}")


def safe_extract(archive: Path, dest: Path) -> None:
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


def download_file(url: str, md5: str, root: Path) -> Path:
    """Fetch ``url`` into ``root`` unless a file with that md5 is there; verify its md5."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / url.rsplit("/", 1)[1]
    if target.is_file() and md5sum(target) == md5:
        return target
    part = target.with_name(target.name + ".part")
    log.warning("downloading %s to %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except OSError as err:  # URLError and timeouts are OSErrors
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: download failed ({err})") from None
    digest = md5sum(part)
    if digest != md5:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: md5 {digest} does not match the expected {md5}; retry")
    os.replace(part, target)
    return target


def download_and_extract(url: str, md5: str, root: Path) -> None:
    """Fetch ``url`` into ``root``, verify its md5, extract it there, delete the archive."""
    archive = download_file(url, md5, root)
    safe_extract(archive, root)
    archive.unlink(missing_ok=True)
