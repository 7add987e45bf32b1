"""Turn the official CIFAR-10/100 python tarballs into the ``.npz`` files ``data.name=npz``
reads: ``python -m dnr.data.convert cifar10 --from cifar-10-python.tar.gz --out data/``.

The pickles are read with the restricted unpickler (:mod:`dnr.data.safety`) through the
``cifar10``/``cifar100`` readers, so the same checks apply; the archive is extracted into a
temporary folder with the safe extractor. Writes ``OUT/<name>_train.npz`` and
``OUT/<name>_test.npz`` (``x`` uint8 N x 32 x 32 x 3, ``y`` int64, ``classes``), atomically.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from dnr.data.cifar import _CIFAR_SPECS, _read_cifar
from dnr.data.safety import md5sum, safe_extract
from dnr.data.source import DataError, SourceData
from dnr.fileio import atomic_write

__all__ = ["convert_cifar", "main"]


def _read(name: str, source: Path) -> SourceData:
    """The dataset from its tarball (extracted into a temporary folder) or its folder."""
    spec = _CIFAR_SPECS[name]
    if source.is_dir():
        return _read_cifar(spec, source, download=False)
    if not source.is_file():
        raise DataError(f"{source}: not found (expected {spec.url.rsplit('/', 1)[1]})")
    with tempfile.TemporaryDirectory(prefix="dnr-convert-") as tmp:
        safe_extract(source, Path(tmp))
        return _read_cifar(spec, Path(tmp), download=False)


def _save(path: Path, x: np.ndarray, y: np.ndarray, classes: list[str]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.savez would append '.npz' to a name
            np.savez_compressed(handle, x=x, y=y, classes=np.array(classes))

    atomic_write(path, write)


def convert_cifar(name: str, source: str | Path, out: str | Path) -> list[Path]:
    """Write ``out/<name>_train.npz`` and ``out/<name>_test.npz``; return their paths.

    ``source``: the official ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, or
    the folder it extracts to.
    """
    if name not in _CIFAR_SPECS:
        raise DataError(f"convert: unknown dataset {name!r}; choose {', '.join(_CIFAR_SPECS)}")
    data = _read(name, Path(source).expanduser())
    out_dir = Path(out).expanduser()
    written = []
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        path = out_dir / f"{name}_{split}.npz"
        _save(path, x.numpy().transpose(0, 2, 3, 1), y.numpy(), data.meta.classes)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """The command line; a mistake is one line on stderr and exit status 2."""
    parser = argparse.ArgumentParser(
        prog="python -m dnr.data.convert",
        description="Convert the official CIFAR python tarball into .npz files for "
        "data.name=npz (x uint8 N x 32 x 32 x 3, y, classes).",
    )
    parser.add_argument("dataset", choices=sorted(_CIFAR_SPECS))
    parser.add_argument(
        "--from", dest="source", required=True, help="cifar-10-python.tar.gz (or its folder)"
    )
    parser.add_argument("--out", required=True, help="folder for <dataset>_{train,test}.npz")
    args = parser.parse_args(argv)
    source = Path(args.source)
    try:
        if source.is_file() and md5sum(source) != _CIFAR_SPECS[args.dataset].md5:
            print(f"note: {source} is not the official archive (md5 differs)", file=sys.stderr)
        paths = convert_cifar(args.dataset, source, args.out)
    except (DataError, OSError) as err:
        print(f"convert: error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
