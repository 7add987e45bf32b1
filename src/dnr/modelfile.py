"""Model files: ``model.safetensors`` (weights, no pickle) + ``model.json`` (how to rebuild).

``model.json`` holds the architecture and the run's metadata, plus a ``storage`` section
when the weights are stored as sparse rows (``dnr export --format sparse``). The weights
file carries a SHA-256 of its tensors in its header metadata, checked on read; a damaged
file is a one-line :class:`~dnr.rundir.ArtifactError` naming it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dnr.checkpoints import load_checkpoint
from dnr.fileio import atomic_write, atomic_write_json
from dnr.foreign import foreign_kind
from dnr.models import create_model
from dnr.registry import MODELS
from dnr.rundir import ArtifactError, RunDir
from dnr.statedict import canonical_name
from dnr.storage import StorageError, decode_state, encode_state
from dnr.trust import TRUST_ENV, code_trusted

MODEL_FORMAT_VERSION = 1


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
    """The error's type and first line: a library's multi-line message fits one CLI line."""
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
    """(model.json, model.safetensors) for a run directory or either file of the pair."""
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


def check_model_name_trusted(name: str) -> None:
    """Refuse to import code a model.json names, unless it is trusted.

    A registered architecture is built by this package's own code; any other name
    (``package.module:callable``, ``timm:``) imports a module and calls it with the file's
    arguments, which is code execution from a file: allowed inside :func:`trusted_model_code`
    or with ``DNR_TRUST_MODEL_CODE=1``, never by default.
    """
    if str(name).lower() in MODELS.names() or code_trusted():
        return
    raise ArtifactError(
        f"model.json names the model {name!r}, which imports and runs that code; rebuild it "
        f"only from a file you trust, with {TRUST_ENV}=1 (e.g. `{TRUST_ENV}=1 dnr eval RUN`)"
    )


def model_from_architecture(arch: dict[str, Any]) -> nn.Module:
    """Construct an (untrained) model from an ``architecture`` description (a name that
    imports code must be trusted: :func:`check_model_name_trusted`)."""
    check_model_name_trusted(str(arch.get("name", "")))
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


def state_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """The first difference between a model's state dict and a checkpoint's, in words:
    a key one lacks, or a tensor whose shapes differ (``None`` when they match)."""
    for key, want in expected.items():
        if key not in state:
            return f"{key} {tuple(want.shape)} is missing from the checkpoint"
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            return (
                f"{key} has shape {tuple(got.shape)} in the checkpoint, "
                f"{tuple(want.shape)} in the model"
            )
    extra = [key for key in state if key not in expected]
    if extra:
        return (
            f"the checkpoint has {extra[0]} {tuple(state[extra[0]].shape)}, which the model lacks"
        )
    return None


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load the weights, or refuse a mismatch with one line naming ``source``, the first
    differing key and its shapes (the check runs first: torch's own error is pages long)."""
    difference = state_mismatch(model.state_dict(), state)
    if difference is not None:
        name = getattr(model, "arch_config", {}).get("name", type(model).__name__)
        raise ArtifactError(f"{source}: weights do not match model {name!r}: {difference}")
    model.load_state_dict(state)


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
    if foreign_kind(weights) == "torchscript":
        raise ArtifactError(
            f"{weights} is a TorchScript archive, which holds its own architecture: "
            f"evaluate it as `dnr eval {weights} data.name=...` (no --weights or --model)"
        )
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
