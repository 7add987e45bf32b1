"""``onnx``: the model as one ONNX file with a dynamic batch axis.

Input ``input``: float32 ``[N, 3, S, S]`` in [0,1] (the normalization is inside the graph,
as in the PyTorch model); output ``logits``: ``[N, num_classes]``. A channel-mode run is
exported as its compact model (pruned channels removed).

Exporter: ``torch.onnx.export(..., dynamo=True)``, torch's default since 2.9 and the one it
maintains (the TorchScript exporter, ``dynamo=False``, is deprecated and warns on every
call). It traces with ``torch.export`` and needs the ``onnx`` and ``onnxscript`` packages:
``pip install 'torch-dnr[export]'``. Weights are kept inside the ``.onnx`` file
(``external_data=False``), so the file is the whole model. When ``onnxruntime`` is
installed the file is run once against PyTorch on a seeded batch and a mismatch is an
error, not a silent bad export.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dnr.export.base import (
    ExportError,
    ExportFormat,
    kept_channels,
    register_format,
)
from dnr.export.compact import compact_model
from dnr.fileio import atomic_write
from dnr.modelfile import load_model

INSTALL_HINT = "pip install 'torch-dnr[export]'"
#: Largest |ONNX Runtime - PyTorch| logit difference accepted, relative to max(1, |logits|).
TOLERANCE = 1e-4
_CHECK_BATCH = 2


def _require_exporter() -> None:
    """One-line errors for what ``torch.onnx.export(dynamo=True)`` needs and may lack."""
    missing = [name for name in ("onnx", "onnxscript") if not _importable(name)]
    if missing:
        raise ExportError(
            f"onnx export needs the {' and '.join(missing)} package"
            f"{'s' if len(missing) > 1 else ''}: {INSTALL_HINT}"
        )
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise ExportError(f"onnx export needs torch>=2.5 (this is {torch.__version__})")


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs and prints progress and deprecation chatter; keep the CLI clean."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``model`` (CPU, eval mode) to ``path`` with a dynamic batch axis, atomically."""
    _require_exporter()
    arch: dict[str, Any] = dict(getattr(model, "arch_config", {}))
    size = int(arch.get("input_size", 32))
    example = torch.rand(_CHECK_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    model = model.to("cpu").eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                (example,),
                None,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as err:  # the exporter's errors are long; keep the first line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"torch.onnx.export failed: {first}") from None
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.model.metadata_props.update(metadata or {})
    atomic_write(path, lambda tmp: program.save(str(tmp), external_data=False))


def check_onnx(model: nn.Module, path: str | Path) -> float | None:
    """Max |logit difference| of ONNX Runtime against PyTorch; None without onnxruntime.

    Batches of 1 and 3 (other sizes than the traced one, so the batch axis is exercised).
    """
    try:
        import onnxruntime
    except ImportError:
        return None
    size = int(getattr(model, "arch_config", {}).get("input_size", 32))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        x = torch.rand(batch, 3, size, size, generator=generator)
        with torch.inference_mode():
            expected = model(x)
        (got,) = session.run(["logits"], {"input": x.numpy()})
        diff = float((torch.from_numpy(got) - expected).abs().max())
        scale = max(1.0, float(expected.abs().max()))
        if not diff <= TOLERANCE * scale:  # also catches NaN
            raise ExportError(
                f"{path}: ONNX Runtime logits differ from PyTorch by {diff:.3g} "
                f"(batch {batch}); the export is not faithful"
            )
        worst = max(worst, diff)
    return worst


@register_format
class OnnxFormat(ExportFormat):
    """One .onnx file, dynamic batch, [0,1] input, logits out (compact model if channel mode)."""

    name = "onnx"
    description = "one .onnx file: [N,3,S,S] in [0,1] -> logits, dynamic batch axis"
    writes = "file"
    suffix = ".onnx"

    def write(self, source: Path, meta: dict[str, Any], out: Path) -> list[str]:
        _require_exporter()  # before loading anything
        model = load_model(source)
        notes = []
        kept = kept_channels(meta)
        if kept is not None:
            model = compact_model(model, kept).eval()
            notes.append("channel-mode run: exported the compact model")
        arch: dict[str, Any] = dict(getattr(model, "arch_config", {}))
        metadata = {
            "dnr.source": str(source),
            "dnr.architecture": json.dumps(arch),
            "dnr.classes": json.dumps(meta.get("classes", [])),
            "dnr.input": f"float32 [N,3,{arch.get('input_size', 32)},"
            f"{arch.get('input_size', 32)}] in [0,1], normalized inside the graph",
        }
        export_onnx(model, out, metadata)
        worst = check_onnx(model, out)
        if worst is None:
            notes.append("onnxruntime not installed: the export was not run once to check it")
        else:
            notes.append(f"ONNX Runtime matches PyTorch: max |logit diff| {worst:.2g}")
        size = arch.get("input_size", 32)
        notes.append(
            f"input 'input': float32 [N,3,{size},{size}] in [0,1]; "
            f"output 'logits': [N,{arch['num_classes']}]"
        )
        return notes
