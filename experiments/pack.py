"""``study pack``: a scale's data in chunks small enough to travel to a lent device.

A device call carries at most 64 MiB with the working tree, and a warm device keeps what
earlier calls left, so the data goes over in chunks, one call each, then training runs on
the machine. The chunks keep the images' order, and ``data.train`` concatenates its files
in order, so a packed run sees exactly the arrays — and draws exactly the splits — of the
unpacked one. ``manifest.json`` names the files; a ``--data-dir`` holding one is read
through it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from dnr.fileio import atomic_write_json

__all__ = ["MANIFEST", "pack", "read_manifest"]

MANIFEST = "manifest.json"


def _write_chunks(source: Path, out: Path, stem: str, max_bytes: int) -> list[str]:
    """Split one npz file into chunks of at most about ``max_bytes`` (compressed)."""
    with np.load(source) as z:
        arrays = {k: z[k] for k in z.files}
    n = len(arrays["y"])
    per_image = source.stat().st_size / max(n, 1)
    parts = max(1, math.ceil(source.stat().st_size / max_bytes))
    step = math.ceil(n / parts) if per_image else n
    names = []
    for i, start in enumerate(range(0, n, step)):
        chunk = {
            k: (v[start : start + step] if len(v) == n and k != "classes" else v)
            for k, v in arrays.items()
        }
        name = f"{stem}_{i}.npz"
        np.savez_compressed(out / name, **chunk)
        names.append(name)
    return names


def pack(train: list[Path], test: Path, out: Path, chunk_mib: float = 60.0) -> Path:
    """Write ``train`` (in order) and ``test`` as chunks of at most ``chunk_mib`` MiB into
    ``out``, with the manifest that names them; returns the manifest's path."""
    out.mkdir(parents=True, exist_ok=True)
    max_bytes = int(chunk_mib * 2**20)
    names = [
        name
        for i, file in enumerate(train)
        for name in _write_chunks(file, out, f"train{i}", max_bytes)
    ]
    tests = _write_chunks(test, out, "test", max_bytes)
    return atomic_write_json(out / MANIFEST, {"train": names, "test": tests})


def read_manifest(data_dir: Path) -> tuple[list[str], list[str]] | None:
    """The packed (train, test) file names under ``data_dir``, or None if it holds no pack."""
    path = data_dir / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return list(manifest["train"]), list(manifest["test"])
