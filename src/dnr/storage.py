"""How tensors are laid out in ``model.safetensors``: dense (the default) or sparse rows.

A sparse-stored weight ``W`` of shape ``(out, *rest)`` is kept as compressed rows over its
output-channel dimension, three tensors in the safetensors file:

    <name>/row_counts   int32 (out,)        nonzeros per output channel
    <name>/col_indices  int16 | int32 (nnz,) position inside the row (row-major, ascending);
                                            int16 while a row holds <= 32767 entries
    <name>/values       W's dtype (nnz,)    the nonzero values, in the same order

Every other tensor is stored dense under its own name. ``model.json`` describes the layout
in its ``storage`` section (:func:`encode_state` builds it, :func:`decode_state` reads it),
so :func:`dnr.load_model` rebuilds the dense state dict without knowing who wrote it.

Exactness: every stored value comes back bit for bit; a weight stored as zero comes back as
``+0.0``. The sign of a zero is not kept (a masked weight zeroed by a multiply is ``-0.0``
when it was negative; keeping that bit would cost one bit per weight, more than the values).

This module sits at the bottom of the dependency graph (torch only), so ``modelfile`` can
decode what ``dnr.export.sparse`` encodes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "INT16_MAX_ROW",
    "SPARSE_FORMAT",
    "StorageError",
    "decode_rows",
    "decode_state",
    "encode_rows",
    "encode_state",
]

SPARSE_FORMAT = "sparse"
STORAGE_VERSION = 1
#: Longest row whose column indices are stored as int16 (else int32).
INT16_MAX_ROW = 32767
_PARTS = ("row_counts", "col_indices", "values")


class StorageError(ValueError):
    """Stored tensors that do not match their ``storage`` description."""


def _key(name: str, part: str) -> str:
    return f"{name}/{part}"


def encode_rows(weight: Tensor) -> dict[str, Tensor]:
    """``weight`` as ``row_counts`` / ``col_indices`` / ``values`` over its first dim."""
    if weight.ndim < 1:
        raise StorageError("a scalar has no rows to compress")
    rows = weight.shape[0]
    flat = weight.detach().to("cpu").reshape(rows, -1)
    row_length = flat.shape[1]
    nonzero = flat != 0  # NaN != 0: kept; -0.0 == 0: dropped (restored as +0.0)
    index_dtype = torch.int16 if row_length <= INT16_MAX_ROW else torch.int32
    positions = nonzero.nonzero()  # (nnz, 2) in row-major order, the order flat[nonzero] takes
    return {
        "row_counts": nonzero.sum(dim=1, dtype=torch.int32),
        "col_indices": positions[:, 1].to(index_dtype).contiguous(),
        "values": flat[nonzero].contiguous(),
    }


def decode_rows(
    row_counts: Tensor, col_indices: Tensor, values: Tensor, shape: Iterable[int]
) -> Tensor:
    """The dense tensor of ``shape`` that :func:`encode_rows` compressed."""
    shape = tuple(int(d) for d in shape)
    if not shape:
        raise StorageError("a sparse tensor needs at least one dimension")
    rows = shape[0]
    row_length = math.prod(shape[1:])
    if row_counts.shape != (rows,):
        raise StorageError(f"row_counts has shape {tuple(row_counts.shape)}, expected ({rows},)")
    nnz = int(row_counts.sum())
    if bool((row_counts < 0).any()) or col_indices.shape != (nnz,) or values.shape != (nnz,):
        raise StorageError(
            f"row counts add up to {nnz} but there are {col_indices.numel()} indices "
            f"and {values.numel()} values"
        )
    columns = col_indices.long()
    if nnz and (int(columns.min()) < 0 or int(columns.max()) >= row_length):
        raise StorageError(f"a column index lies outside a row of length {row_length}")
    row_ids = torch.repeat_interleave(torch.arange(rows), row_counts.long())
    dense = torch.zeros(rows * row_length, dtype=values.dtype)
    dense[row_ids * row_length + columns] = values
    return dense.reshape(shape)


def encode_state(
    state: Mapping[str, Tensor], sparse_names: Iterable[str]
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors to save and the ``storage`` section that describes them.

    Tensors named in ``sparse_names`` are stored as sparse rows, the rest dense.
    """
    sparse = set(sparse_names)
    missing = sparse - set(state)
    if missing:
        raise StorageError(f"no tensor named {sorted(missing)[0]!r} in the state dict")
    tensors: dict[str, Tensor] = {}
    described: dict[str, dict[str, Any]] = {}
    dense: list[str] = []
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if name not in sparse:
            tensors[name] = tensor
            dense.append(name)
            continue
        parts = encode_rows(tensor)
        for part, value in parts.items():
            key = _key(name, part)
            if key in state:
                raise StorageError(f"stored name {key!r} collides with a tensor name")
            tensors[key] = value
        described[name] = {
            "shape": list(tensor.shape),
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "nnz": int(parts["values"].numel()),
            "index_dtype": str(parts["col_indices"].dtype).removeprefix("torch."),
        }
    section = {
        "format": SPARSE_FORMAT,
        "version": STORAGE_VERSION,
        "layout": "rows over dim 0: <name>/row_counts (int32), <name>/col_indices "
        "(int16 if a row holds <= 32767 entries, else int32), <name>/values",
        "tensors": described,
        "dense": dense,
    }
    return tensors, section


def decode_state(tensors: Mapping[str, Tensor], storage: Mapping[str, Any]) -> dict[str, Tensor]:
    """The dense state dict described by a ``storage`` section (see :func:`encode_state`)."""
    if storage.get("format") != SPARSE_FORMAT:
        raise StorageError(f"unknown storage format {storage.get('format')!r}")
    if int(storage.get("version", STORAGE_VERSION)) > STORAGE_VERSION:
        raise StorageError(
            f"storage version {storage['version']} is newer than this torch-dnr reads "
            f"({STORAGE_VERSION})"
        )
    described = storage.get("tensors")
    if not isinstance(described, Mapping):
        raise StorageError("the storage section lacks its 'tensors' table")
    state: dict[str, Tensor] = {}
    used: set[str] = set()
    for name, info in described.items():
        keys = [_key(name, part) for part in _PARTS]
        absent = [key for key in keys if key not in tensors]
        if absent:
            raise StorageError(f"tensor {absent[0]!r} is missing")
        counts, indices, values = (tensors[key] for key in keys)
        try:
            dense = decode_rows(counts, indices, values, info["shape"])
        except StorageError as err:
            raise StorageError(f"{name}: {err}") from None
        except KeyError as err:
            raise StorageError(f"{name}: the storage entry lacks {err}") from None
        dtype = info.get("dtype")
        if dtype is not None and str(dense.dtype).removeprefix("torch.") != dtype:
            raise StorageError(f"{name}: values are {dense.dtype}, the description says {dtype}")
        state[name] = dense
        used.update(keys)
    for key, tensor in tensors.items():
        if key not in used:
            state[key] = tensor
    return state
