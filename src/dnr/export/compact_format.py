"""``compact``: a channel-mode run as the narrower dense model it amounts to.

The pruned output channels are removed (``dnr.export.compact.compact_model``); the result
is an ordinary dense run directory whose ``architecture`` carries the channel counts, so
``dnr.load_model`` and ``dnr eval`` read it, and it runs at the cost of its kept channels.
The transformation lives in ``compact.py``; this module is the format's registration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dnr.export.base import (
    ExportError,
    ExportFormat,
    export_meta,
    kept_channels,
    register_format,
)
from dnr.export.compact import compact_model
from dnr.modelfile import load_model, save_model

NOT_CHANNEL_MODE = (
    "compact export needs a channel-mode run (sparsity.granularity=channel); use --format sparse"
)


@register_format
class CompactFormat(ExportFormat):
    """A narrower dense model without the pruned channels (channel-mode runs)."""

    name = "compact"
    description = "the narrower dense model without the pruned channels (channel-mode runs)"
    writes = "directory"

    def write(self, source: Path, meta: dict[str, Any], out: Path) -> list[str]:
        kept = kept_channels(meta)
        if kept is None:
            raise ExportError(NOT_CHANNEL_MODE)
        full = load_model(source)
        model = compact_model(full, kept)
        source_sparsity = meta.get("sparsity", {})
        sparsity = {
            "method": source_sparsity.get("method", "dense"),
            "mode": "none",  # every remaining weight is kept: the model is dense
            "compacted_from": {
                key: source_sparsity[key]
                for key in ("mode", "target_density", "achieved_density")
                if key in source_sparsity
            },
        }
        save_model(out, model, export_meta(meta, self.name, source, sparsity=sparsity))
        before = sum(p.numel() for p in full.parameters())
        after = sum(p.numel() for p in model.parameters())
        return [f"parameters: {after:,} of {before:,} ({before / max(after, 1):.1f}x fewer)"]
