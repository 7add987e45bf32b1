"""``sparse``: an irregular-mode model stored as compressed rows (what 20x sparsity saves).

Each Conv2d/Linear weight is stored as rows over its output channels (nonzero counts,
column indices, values; :mod:`dnr.storage`), everything else dense. The output directory
is a run directory like any other: ``dnr.load_model(OUT)`` and ``dnr eval OUT`` read it
and get the dense weights back (every value exact; a zero comes back as ``+0.0``).

A weight that is denser than the break-even point (about 2/3 with int16 indices: 6 bytes
per kept weight against 4 per dense weight) is stored dense instead: a layer kept dense by
``sparsity.exclude``, or a dense run, never grows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from dnr.export.base import ExportFormat, export_meta, register_format
from dnr.modelfile import load_model, save_model
from dnr.rundir import RunDir
from dnr.sparsity.layers import prunable_parameters
from dnr.storage import INT16_MAX_ROW


def _sparse_pays(weight: torch.Tensor) -> bool:
    """Whether rows + indices + values take fewer bytes than the dense tensor."""
    rows = weight.shape[0]
    row_length = weight.numel() // max(rows, 1)
    index_bytes = 2 if row_length <= INT16_MAX_ROW else 4
    nnz = int(torch.count_nonzero(weight))
    return 4 * rows + nnz * (index_bytes + weight.element_size()) < weight.nbytes


@register_format
class SparseFormat(ExportFormat):
    """Conv/Linear weights as compressed rows (irregular sparsity); loads with dnr.load_model."""

    name = "sparse"
    description = "Conv/Linear weights as compressed rows (dnr.load_model, dnr eval read it)"
    writes = "directory"

    def write(self, source: Path, meta: dict[str, Any], out: Path) -> list[str]:
        model = load_model(source)
        weights = prunable_parameters(model)
        sparse = [name for name, weight in weights.items() if _sparse_pays(weight.detach())]
        save_model(out, model, export_meta(meta, self.name, source), sparse_tensors=sparse)
        dense_state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        dense_bytes = len(safetensors_bytes(dense_state))
        sparse_bytes = RunDir(out).model_weights.stat().st_size
        return [
            f"{len(sparse)} of {len(weights)} Conv2d/Linear weights stored as sparse rows",
            f"model.safetensors: {sparse_bytes:,} bytes against {dense_bytes:,} stored dense "
            f"({dense_bytes / sparse_bytes:.1f}x smaller)",
        ]
