"""Sealed checkpoints: ``torch.save`` archives that carry a SHA-256 of their content.

Checkpoints hold tensors and plain Python values only, so they load with
``torch.load(weights_only=True)``; every write is atomic (temp file + rename). The checksum
sits in the zip comment of the archive ``torch.save`` writes (so plain ``torch.load`` still
reads it) and is verified before the file is deserialized. A damaged file is a one-line
:class:`~dnr.rundir.ArtifactError` naming it; files written before checksums (or elsewhere)
load unverified.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
from pathlib import Path
from typing import Any

import torch

from dnr.fileio import atomic_write
from dnr.rundir import ArtifactError

#: A checkpoint's checksum: the comment of the zip archive torch.save writes, so the file
#: stays a valid archive for any zip reader and for plain ``torch.load``.
_SEAL_PREFIX = b"dnr-sha256:"
_SEAL_LEN = len(_SEAL_PREFIX) + 64
_EOCD = b"PK\x05\x06"  # end-of-central-directory record: 22 bytes + the comment
_EOCD_SIZE = 22
_CHUNK = 1 << 22


def _sha256_prefix(handle: Any, size: int) -> str:
    """SHA-256 of the first ``size`` bytes of an open binary file."""
    digest = hashlib.sha256()
    handle.seek(0)
    left = size
    while left > 0:
        block = handle.read(min(_CHUNK, left))
        if not block:
            break
        digest.update(block)
        left -= len(block)
    return digest.hexdigest()


def _seal(path: Path) -> None:
    """Append the checksum of everything before the comment-length field as the comment."""
    size = path.stat().st_size
    with open(path, "rb+") as handle:
        handle.seek(size - _EOCD_SIZE)
        tail = handle.read(_EOCD_SIZE)
        if size < _EOCD_SIZE or tail[:4] != _EOCD or tail[-2:] != b"\0\0":
            raise ArtifactError(f"{path}: torch.save did not write a zip archive; cannot seal")
        digest = _sha256_prefix(handle, size - 2)
        handle.seek(size - 2)
        handle.write(struct.pack("<H", _SEAL_LEN) + _SEAL_PREFIX + digest.encode())


def verify_checkpoint(path: str | Path) -> bool:
    """True if ``path`` carries a checksum and it matches; False if it carries none (written
    before checksums, or by another program); :class:`ArtifactError` if it does not match
    or the end of the archive is cut or extended."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            tail_len = min(size, _EOCD_SIZE + _SEAL_LEN + 64)
            handle.seek(size - tail_len)
            tail = handle.read(tail_len)
            at = tail.rfind(_EOCD)
            if at < 0 or at + _EOCD_SIZE > len(tail):
                return False  # not a zip archive's end: torch.load decides what it is
            (declared,) = struct.unpack("<H", tail[at + _EOCD_SIZE - 2 : at + _EOCD_SIZE])
            comment = tail[at + _EOCD_SIZE :]
            sealed = _SEAL_PREFIX[:4] in comment or declared == _SEAL_LEN
            if declared != len(comment) and sealed:
                raise ArtifactError(
                    f"{path}: the checkpoint's end is cut off or damaged (truncated file?)"
                )
            if declared != _SEAL_LEN or not comment.startswith(_SEAL_PREFIX):
                return False
            expected = comment[len(_SEAL_PREFIX) :].decode("ascii", "replace")
            actual = _sha256_prefix(handle, size - _SEAL_LEN - 2)
    except OSError as err:
        raise ArtifactError(f"{path}: cannot read checkpoint ({err.strerror or err})") from None
    if actual != expected:
        raise ArtifactError(
            f"{path}: checksum mismatch, the checkpoint is damaged (expected sha256 "
            f"{expected[:12]}..., file has {actual[:12]}...)"
        )
    return True


def save_checkpoint(
    path: str | Path, state: dict[str, Any], *, previous: str | Path | None = None
) -> None:
    """torch.save + checksum to a temp file, then rename: an interrupted write never
    corrupts ``path``. With ``previous``, the file ``path`` held is kept there (rotated)."""

    def write(tmp: Path) -> None:
        torch.save(state, tmp)
        _seal(tmp)

    replacing = Path(path).exists()
    try:
        atomic_write(path, write, keep_previous=previous)
    except OSError as err:
        raise ArtifactError(_write_error(Path(path), err, replacing)) from err
    except RuntimeError as err:  # torch.save reports a full disk as a RuntimeError
        if not _is_write_failure(err):
            raise
        raise ArtifactError(_write_error(Path(path), err, replacing)) from err


def _is_write_failure(err: RuntimeError) -> bool:
    """Whether torch.save's RuntimeError is its archive writer failing to write (a full disk,
    a quota), not another error (a CUDA one) that must surface as itself."""
    text = str(err)
    return any(s in text for s in ("unexpected pos", "PytorchStreamWriter", "file write failed"))


def _write_error(path: Path, err: BaseException, replacing: bool) -> str:
    """One line for a checkpoint that could not be written: which file, why, what is left
    (the write went to a temp file: a checkpoint it was replacing is untouched)."""
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    reason = getattr(err, "strerror", None) or first[:200] or type(err).__name__
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free there"
    except OSError:
        free = ""
    left = "the previous checkpoint is untouched" if replacing else "nothing was written"
    return (
        f"{path}: cannot write the checkpoint ({reason}{free}); {left}: free space (or fix "
        "the file system) and continue with --resume"
    )


def _load_error(path: Path, err: BaseException) -> ArtifactError:
    """One line for a file torch.load refused: what it means, not torch's advice."""
    text = str(err)
    if type(err).__name__ == "UnpicklingError":  # weights_only refused a global
        detail = next(
            (
                line.strip()
                for line in text.splitlines()
                if "GLOBAL" in line or "Unsupported" in line
            ),
            "",
        )
        return ArtifactError(
            f"{path}: refused to load: it would rebuild Python objects other than tensors and "
            f"plain values, as crafted or foreign files do; nothing in it was run"
            + (f" ({detail.rstrip('.')})" if detail else "")
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if isinstance(err, EOFError) or not first:
        first = type(err).__name__ + (f": {first}" if first else " (empty or cut-off file)")
    first = first.split(". ")[0]
    return ArtifactError(
        f"{path}: cannot load checkpoint (truncated, damaged or not a torch-dnr checkpoint): "
        f"{first[:200]}"
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify the checksum, then load without unpickling arbitrary objects
    (``weights_only=True``: only tensors and plain Python values can come back)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint not found: {path}")
    verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a corrupt or foreign file: say which and why
        raise _load_error(path, err) from None
    if not isinstance(state, dict):
        raise ArtifactError(f"{path}: expected a checkpoint dict, got {type(state).__name__}")
    return state
