"""Atomic file writes: a run interrupted at any point never leaves a half-written file."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(
    path: str | Path, write: Callable[[Path], object], *, keep_previous: str | Path | None = None
) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file over ``path`` (same directory).

    With ``keep_previous``, the file ``path`` held moves there first, so two versions exist
    (a damaged newest one has a fallback). It is hard-linked, then the link renamed, so at
    every instant ``path`` exists; only where hard links are unsupported is there a moment
    between two renames when just ``keep_previous`` does.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; use normal permissions
        with open(tmp_path, "rb+") as handle:  # data on disk before the rename publishes it
            os.fsync(handle.fileno())
        if keep_previous is not None and path.is_file():
            _rotate(path, Path(keep_previous))
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _rotate(path: Path, previous: Path) -> None:
    """Make ``previous`` the file ``path`` holds now, keeping ``path`` in place if possible."""
    link = previous.with_name(f".{previous.name}.link.tmp")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:  # no hard links here (some network or FUSE file systems)
        os.replace(path, previous)
        return
    os.replace(link, previous)


def temp_files(path: str | Path) -> list[Path]:
    """Leftovers of interrupted :func:`atomic_write` calls for ``path``."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*tmp"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync, so a crash loses at most the line being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a last line cut short by an interruption is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
