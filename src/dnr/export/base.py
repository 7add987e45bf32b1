"""The export-format interface and the one entry point, :func:`export_run`.

A format is a :class:`ExportFormat` subclass registered in ``dnr.registry.EXPORT_FORMATS``
(decorate it with :func:`register_format`). :func:`export_run` does what every format needs:
it checks the source run and the output path, hands the format a path to write to, and only
then puts the result in place, so a failed export never leaves half an output behind and
never replaces a directory that ``dnr export`` did not write.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from dnr.modelfile import read_model_meta
from dnr.registry import EXPORT_FORMATS
from dnr.rundir import ArtifactError, RunDir

__all__ = [
    "ExportError",
    "ExportFormat",
    "ExportResult",
    "export_meta",
    "export_run",
    "kept_channels",
    "register_format",
]

#: Suffixes that name a file, not a directory (an --out mistake for a directory format).
_FILE_SUFFIXES = (".onnx", ".json", ".safetensors", ".pt", ".pth", ".bin")


class ExportError(ArtifactError):
    """An export request that cannot be carried out (one line, no traceback)."""


@dataclass
class ExportResult:
    """What an export wrote: the output path, its files, and lines worth telling the user."""

    format: str
    out: Path
    files: list[Path]
    notes: list[str] = field(default_factory=list)

    @property
    def num_bytes(self) -> int:
        """Total size of the files written."""
        return sum(path.stat().st_size for path in self.files)


class ExportFormat(ABC):
    """One way to write a run's model. Subclass, set the class variables, register.

    ``writes`` says whether ``--out`` names a directory (``model.safetensors`` +
    ``model.json``, loadable by :func:`dnr.load_model`) or a single file with ``suffix``.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    writes: ClassVar[Literal["directory", "file"]] = "directory"
    suffix: ClassVar[str] = ""

    @abstractmethod
    def write(self, source: Path, meta: dict[str, Any], out: Path) -> list[str]:
        """Write the export of run ``source`` (its ``model.json`` is ``meta``) to ``out``.

        ``out`` is a fresh empty directory for directory formats, the file to create for
        file formats. Returns notes for the user (sizes, ratios, checks).
        """


def register_format(cls: type[ExportFormat]) -> type[ExportFormat]:
    """Class decorator: make ``cls`` a ``dnr export --format`` choice."""
    if cls.writes == "file" and not cls.suffix:
        raise ValueError(f"{cls.__name__}: a file format needs a suffix")
    return EXPORT_FORMATS.register(cls)


def export_run(source: str | Path, format: str, out: str | Path) -> ExportResult:
    """Export the model of run directory ``source`` in ``format`` to ``out``.

    ``source`` is a finished run (``model.json`` + ``model.safetensors``) or a directory a
    previous export wrote. A directory ``out`` may be new, empty, or an earlier export
    (replaced); anything else is refused.
    """
    fmt = EXPORT_FORMATS.get(format)()
    source, out = Path(source), Path(out)
    meta = _check_source(source)
    if fmt.writes == "file":
        _check_file_out(fmt, out)
        notes = fmt.write(source, meta, out)
        return ExportResult(fmt.name, out, [out], notes)
    _check_dir_out(fmt, source, out)
    notes = _write_directory(fmt, source, meta, out)
    run = RunDir(out)
    return ExportResult(fmt.name, out, [run.model_weights, run.model_meta], notes)


def _check_source(source: Path) -> dict[str, Any]:
    if not source.exists():
        raise ExportError(f"run directory not found: {source}")
    if not source.is_dir():
        raise ExportError(f"{source} is not a run directory")
    run = RunDir(source)
    for path in (run.model_meta, run.model_weights):
        if not path.is_file():
            raise ExportError(f"{source} holds no finished model: {path.name} is missing")
    return read_model_meta(source)


def _check_file_out(fmt: ExportFormat, out: Path) -> None:
    if out.suffix.lower() != fmt.suffix:
        raise ExportError(f"--out for {fmt.name} is the {fmt.suffix} file to write, got {out}")
    if out.is_dir():
        raise ExportError(f"--out {out} is a directory; {fmt.name} writes one {fmt.suffix} file")


def _is_export_dir(path: Path) -> bool:
    try:
        return "export" in read_model_meta(path)
    except ArtifactError:
        return False


def _check_dir_out(fmt: ExportFormat, source: Path, out: Path) -> None:
    what = f"{fmt.name} writes a directory (model.safetensors + model.json)"
    if out.suffix.lower() in _FILE_SUFFIXES:
        raise ExportError(f"--out {out} names a file; {what}")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; {what}")
    src, dst = source.resolve(), out.resolve()
    if src == dst or dst in src.parents:
        raise ExportError(f"--out {out} would replace the run being exported; choose another")
    if out.is_dir() and any(out.iterdir()) and not _is_export_dir(out):
        raise ExportError(
            f"--out {out} exists and was not written by dnr export; choose another --out"
        )


def _write_directory(fmt: ExportFormat, source: Path, meta: dict[str, Any], out: Path) -> list[str]:
    """Write into a sibling temp directory, then swap it in for ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export", dir=out.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it private; the export is an ordinary dir
    old: Path | None = None
    try:
        notes = fmt.write(source, meta, tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old / out.name, out)  # put the previous export back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return notes


def _remove_leftovers(out: Path) -> None:
    """The temp directories of an export to ``out`` that was killed (SIGKILL, power cut)
    before it could remove them: a repeated command cleans up after the one it replaces.
    Killed between its two renames, that export left the previous one only in its ``.old``
    directory: it goes back to ``out`` first, so a failure now still leaves an export."""
    pattern = re.compile(re.escape(f".{out.name}.") + r"[A-Za-z0-9_]{8}\.(export|old)")
    for leftover in sorted(out.parent.iterdir()):
        if not (pattern.fullmatch(leftover.name) and leftover.is_dir()):
            continue
        if leftover.suffix == ".old" and (leftover / out.name).is_dir() and not out.exists():
            os.replace(leftover / out.name, out)
        shutil.rmtree(leftover, ignore_errors=True)


def export_meta(
    meta: Mapping[str, Any], format: str, source: Path, **sections: Any
) -> dict[str, Any]:
    """``model.json`` content for an export: the source's (classes, dataset, training, ...),
    an ``export`` section naming the format and source, and ``sections`` replaced."""
    document = {
        key: value
        for key, value in meta.items()
        if key not in ("format_version", "architecture", "storage", "export")
    }
    document.update(sections)
    document["export"] = {"format": format, "source": str(source)}
    return document


def kept_channels(meta: Mapping[str, Any]) -> dict[str, list[int]] | None:
    """The kept output channels of a channel-mode run's ``model.json``; None otherwise."""
    sparsity = meta.get("sparsity") or {}
    kept = sparsity.get("kept_channels")
    if sparsity.get("mode") != "channel" or not isinstance(kept, Mapping):
        return None
    return {str(name): [int(i) for i in indices] for name, indices in kept.items()}
