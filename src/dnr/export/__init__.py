"""Export formats: a run's model written for deployment (``dnr export``).

One module per format, each registering an :class:`ExportFormat` in
``dnr.registry.EXPORT_FORMATS``; :func:`export_run` is the entry point::

    from dnr.export import export_run
    export_run("runs/x", "sparse", "runs/x-sparse")   # model.safetensors + model.json
    export_run("runs/x", "onnx", "runs/x.onnx")

Built in: ``sparse`` (compressed rows, irregular mode), ``compact`` (the narrower model of a
channel-mode run), ``onnx``. A new format is a new module here, imported below.
"""

from __future__ import annotations

from dnr.export import compact_format as _compact_format  # noqa: F401  (registers "compact")
from dnr.export import onnx as _onnx  # noqa: F401  (registers "onnx")
from dnr.export import sparse as _sparse  # noqa: F401  (registers "sparse")
from dnr.export.base import (
    ExportError,
    ExportFormat,
    ExportResult,
    export_run,
    register_format,
)

__all__ = ["ExportError", "ExportFormat", "ExportResult", "export_run", "register_format"]
