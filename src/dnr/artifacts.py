"""The run directory and everything written into it.

Layout (one directory per run, nothing written elsewhere)::

    RUN_DIR/config.yaml            resolved configuration
    RUN_DIR/metrics.jsonl          one JSON line per epoch
    RUN_DIR/checkpoints/last.pt    resume state (model, optimizer, masks, epoch, RNG)
    RUN_DIR/checkpoints/previous.pt  the resume state before it (the fallback if last.pt
                                   is damaged)
    RUN_DIR/checkpoints/best.pt    best epoch by validation PGD accuracy
    RUN_DIR/model.safetensors      the final model's weights (no pickle)
    RUN_DIR/model.json             how to rebuild it: architecture, classes, width, ...
                                   (+ a ``storage`` section when the weights are stored
                                   as sparse rows: ``dnr export --format sparse``)
    RUN_DIR/eval.json, eval.md     evaluation results with exact attack settings
    RUN_DIR/layer_density.png      per-layer density over epochs (sparse runs)

Checkpoints hold tensors and plain Python values only, so they load with
``torch.load(weights_only=True)``; every write is atomic (temp file + rename). Each file
carries a SHA-256 of its content, verified before it is deserialized: a checkpoint in the
zip comment of the archive ``torch.save`` writes (so plain ``torch.load`` still reads it), a
``model.safetensors`` in its header metadata. A damaged file is a one-line
:class:`ArtifactError` naming it; files written before checksums (or elsewhere) load
unverified.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dnr.fileio import atomic_write, atomic_write_json
from dnr.models import create_model
from dnr.statedict import canonical_name
from dnr.storage import StorageError, decode_state, encode_state

MODEL_FORMAT_VERSION = 1


class ArtifactError(ValueError):
    """A missing or malformed artifact (shown to the user without a traceback)."""


@dataclass(frozen=True)
class RunDir:
    """Names of every artifact in a run directory."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def previous_checkpoint(self) -> Path:
        return self.checkpoints / "previous.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def model_weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def model_meta(self) -> Path:
        return self.path / "model.json"

    @property
    def eval_json(self) -> Path:
        return self.path / "eval.json"

    @property
    def eval_md(self) -> Path:
        return self.path / "eval.md"

    @property
    def layer_density_plot(self) -> Path:
        return self.path / "layer_density.png"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    def artifacts(self) -> list[Path]:
        """Every file a run writes, the results first and the run's markers (checkpoints,
        weights) last: what ``dnr train --overwrite`` may delete, and nothing else."""
        return [
            self.report_md,
            self.layer_density_plot,
            self.eval_md,
            self.eval_json,
            self.metrics,
            self.config,
            self.model_meta,
            self.best_checkpoint,
            self.previous_checkpoint,
            self.last_checkpoint,
            self.model_weights,
        ]


# --------------------------------------------------------------------------- checkpoints


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

    atomic_write(path, write, keep_previous=previous)


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


# --------------------------------------------------------------------------- final model

#: The header metadata key of a ``model.safetensors`` that holds :func:`tensors_sha256`.
WEIGHTS_CHECKSUM_KEY = "dnr_sha256"


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes in name order (not the file layout, so
    it can go into the header of the file it describes)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _one_line(err: BaseException) -> str:
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (CPU), checked against the checksum in its header
    when it has one (:func:`save_model` writes it)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as err:  # a truncated or foreign file: say which and why
        raise ArtifactError(
            f"{path}: cannot read safetensors (truncated or damaged?): {_one_line(err)}"
        ) from None
    expected = metadata.get(WEIGHTS_CHECKSUM_KEY)
    if expected is not None and tensors_sha256(state) != expected:
        raise ArtifactError(
            f"{path}: checksum mismatch, the weights file is damaged (its header records "
            f"sha256 {expected[:12]}...)"
        )
    return state


def save_model(
    run_dir: str | Path,
    model: nn.Module,
    meta: dict[str, Any],
    *,
    sparse_tensors: Iterable[str] | None = None,
) -> None:
    """Write ``model.safetensors`` and ``model.json`` (architecture + ``meta``).

    With ``sparse_tensors`` (even empty) the file uses the sparse storage layout: the named
    tensors as compressed rows (:mod:`dnr.storage`), the rest dense, and ``model.json``
    gets the ``storage`` section that :func:`load_model` decodes. A ``storage`` entry in
    ``meta`` is dropped either way: it describes another file.
    """
    run = RunDir(Path(run_dir))
    arch = getattr(model, "arch_config", None)
    if arch is None:
        raise ArtifactError("model has no arch_config; build it with dnr.create_model")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    document = {"format_version": MODEL_FORMAT_VERSION, "architecture": dict(arch), **meta}
    document.pop("storage", None)
    if sparse_tensors is not None:
        try:
            tensors, document["storage"] = encode_state(tensors, sparse_tensors)
        except StorageError as err:
            raise ArtifactError(str(err)) from None
    checksum = {WEIGHTS_CHECKSUM_KEY: tensors_sha256(tensors)}
    atomic_write(run.model_weights, lambda tmp: save_file(tensors, str(tmp), metadata=checksum))
    atomic_write_json(run.model_meta, document)


def _resolve_model_paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir():
        run = RunDir(path)
        return run.model_meta, run.model_weights
    if path.suffix == ".json":
        return path, path.with_suffix(".safetensors")
    if path.suffix == ".safetensors":
        return path.with_suffix(".json"), path
    raise ArtifactError(
        f"{path}: expected a run directory, a model.json or a model.safetensors file"
    )


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """The ``model.json`` document of a run directory or model file."""
    meta_path, _ = _resolve_model_paths(path)
    if not meta_path.is_file():
        raise ArtifactError(f"model description not found: {meta_path}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{meta_path}: not valid JSON: {err}") from None
    if "architecture" not in meta:
        raise ArtifactError(f"{meta_path}: missing the 'architecture' section")
    return meta


def model_from_architecture(arch: dict[str, Any]) -> nn.Module:
    """Construct an (untrained) model from an ``architecture`` description."""
    stats = {key: tuple(arch[key]) for key in ("mean", "std") if key in arch}
    known = {"name", "num_classes", "input_size", "width", "mean", "std"}
    extra = {key: value for key, value in arch.items() if key not in known}  # model.kwargs
    try:
        return create_model(
            arch["name"],
            num_classes=int(arch["num_classes"]),
            input_size=int(arch.get("input_size", 32)),
            width=float(arch.get("width", 1.0)),
            **stats,
            **extra,
        )
    except KeyError as err:
        raise ArtifactError(f"architecture description lacks {err}") from None
    except ValueError as err:
        raise ArtifactError(str(err)) from None


def read_model_state(
    path: str | Path, meta: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """The dense state dict in ``model.safetensors`` (CPU), whatever its storage layout.

    ``model.json``'s ``storage`` section, when present, says how the tensors are laid out
    (:mod:`dnr.storage`, written by ``dnr export --format sparse``); without one the file
    holds the state dict as it is.
    """
    meta = read_model_meta(path) if meta is None else meta
    _, weights_path = _resolve_model_paths(path)
    if not weights_path.is_file():
        raise ArtifactError(f"model weights not found: {weights_path}")
    state = read_safetensors(weights_path)
    storage = meta.get("storage")
    if storage is None:
        return state
    if not isinstance(storage, dict):
        raise ArtifactError(f"{weights_path}: the 'storage' section of model.json is malformed")
    try:
        return decode_state(state, storage)
    except StorageError as err:
        raise ArtifactError(f"{weights_path}: {err}") from None


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from ``model.json`` + ``model.safetensors`` alone (eval mode).

    Reads dense and sparse-stored weights alike (see :func:`read_model_state`).
    """
    meta = read_model_meta(path)
    state = read_model_state(path, meta)
    model = model_from_architecture(meta["architecture"])
    _load_state(model, state, _resolve_model_paths(path)[1])
    return model.to(map_location).eval()


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ArtifactError(
            f"{source}: weights do not match the architecture "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )


def _unwrap_state_dict(obj: Any, source: Path) -> dict[str, torch.Tensor]:
    """Find the tensor mapping inside common checkpoint layouts and strip wrapper prefixes."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            if key in obj and isinstance(obj[key], dict):
                return _unwrap_state_dict(obj[key], source)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return {canonical_name(key, ("model.",)): value for key, value in tensors.items()}
    raise ArtifactError(f"{source}: no state dict of tensors found")


def load_plain_weights(
    arch: str,
    weights: str | Path,
    *,
    num_classes: int,
    input_size: int = 32,
    width: float = 1.0,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """A registry architecture with weights from a plain state dict (.pt/.pth/.safetensors).

    For models trained elsewhere. A checkpoint without the ``normalize.*`` buffers is
    assumed to expect [0,1] inputs normalized with the registry default (CIFAR statistics).
    """
    weights = Path(weights)
    if not weights.is_file():
        raise ArtifactError(f"weights file not found: {weights}")
    if weights.suffix == ".safetensors":
        state = read_safetensors(weights)
    else:
        state = _unwrap_state_dict(load_checkpoint(weights), weights)
    model = model_from_architecture(
        {"name": arch, "num_classes": num_classes, "input_size": input_size, "width": width}
    )
    expected = model.state_dict()
    for key in ("normalize.mean", "normalize.std"):
        state.setdefault(key, expected[key])
    _load_state(model, state, weights)
    return model.to(map_location).eval()


def write_eval(run_dir: str | Path, document: dict[str, Any], markdown: str) -> None:
    run = RunDir(Path(run_dir))
    atomic_write_json(run.eval_json, document)
    atomic_write(run.eval_md, lambda tmp: tmp.write_text(markdown))
