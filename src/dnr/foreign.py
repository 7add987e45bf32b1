"""Models trained elsewhere, for ``dnr eval``: ``torch.export`` programs, TorchScript
archives and ONNX files.

Both carry their own architecture, so no model name is needed; what they lack is the
project's description (``arch_config``: classes, input size), which :class:`LoadedModel`
learns from one forward pass on the test data. Both are taken to map [0,1] images to
logits, as this project's models and exports do: a model that expects normalized inputs
must have its normalization inside.

ONNX files hold a graph and tensors only; they are replayed by :mod:`dnr.onnxgraph` so that
attacks get gradients. ``torch.export`` programs (``.pt2``, ``torch.export.save``; export
them with a dynamic batch axis) and TorchScript archives (``torch.jit.save``) are read by
torch's own loaders, which may unpickle Python objects: they load only from files the user
trusts (``DNR_TRUST_MODEL_CODE=1``, :mod:`dnr.trust`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dnr.onnxgraph import OnnxImportError, load_onnx
from dnr.rundir import ArtifactError
from dnr.trust import TRUST_ENV, code_trusted

__all__ = ["LoadedModel", "foreign_kind", "load_foreign"]


def foreign_kind(path: str | Path) -> str | None:
    """``"onnx"``, ``"export"``, ``"torchscript"``, or ``None`` for anything else (a run
    directory, this project's model files, a state dict)."""
    path = Path(path)
    if not path.is_file():
        return None
    if path.suffix.lower() in (".onnx", ".pt2"):
        return {".onnx": "onnx", ".pt2": "export"}[path.suffix.lower()]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:  # TorchScript archives hold their code
            if any("/code/" in name for name in archive.namelist()):
                return "torchscript"
    return None


class LoadedModel(nn.Module):
    """A foreign model behind the project's contract: [0,1] images in, logits out, and an
    ``arch_config`` filled in by :meth:`describe`."""

    def __init__(self, inner: nn.Module, kind: str, source: Path) -> None:
        super().__init__()
        self.inner = inner
        self.arch_config: dict[str, Any] = {"name": kind, "source": str(source)}

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)

    def train(self, mode: bool = True) -> LoadedModel:
        """Keep the inner model as loaded (eval): it is only evaluated, and an exported
        program fixed its mode at export time (it refuses ``train()``)."""
        self.training = mode
        return self

    @torch.no_grad()
    def describe(self, images: Tensor) -> None:
        """Run one batch of uint8 test images (N, 3, H, W) to learn classes and input size.

        A model that cannot take them, or does not return (N, classes) logits, is a
        one-line :class:`ArtifactError`.
        """
        source = self.arch_config["source"]
        x = images.float().div(255)
        try:
            logits = self.inner(x)
        except Exception as err:  # noqa: BLE001 - any failure of a foreign model: one line
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ArtifactError(
                f"{source}: the model fails on a batch of the test images, shape "
                f"{tuple(x.shape)}: {type(err).__name__}: {reason}"
            ) from None
        if not isinstance(logits, Tensor) or logits.dim() != 2 or len(logits) != len(x):
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ArtifactError(
                f"{source}: expected logits of shape ({len(x)}, classes), got {shape}"
            )
        self.arch_config.update(num_classes=int(logits.shape[1]), input_size=int(x.shape[-1]))


def load_foreign(path: str | Path) -> LoadedModel:
    """Load a TorchScript archive or an ONNX file on the CPU, in eval mode."""
    path = Path(path)
    kind = foreign_kind(path)
    if kind in ("export", "torchscript") and not code_trusted():
        raise ArtifactError(
            f"{path}: loading a {kind} file may unpickle Python objects, that is run code; "
            f"load it only if you trust it, with {TRUST_ENV}=1 (ONNX files need no trust)"
        )
    if kind == "onnx":
        try:
            inner: nn.Module = load_onnx(path)
        except OnnxImportError as err:
            raise ArtifactError(str(err)) from None
    elif kind == "export":
        try:
            inner = torch.export.load(str(path)).module()
        except Exception as err:  # noqa: BLE001 - a corrupt archive: say which and why
            raise ArtifactError(f"{path}: not a loadable torch.export program ({err})") from None
    elif kind == "torchscript":
        try:
            inner = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as err:  # noqa: BLE001 - a corrupt archive: say which and why
            raise ArtifactError(f"{path}: not a loadable TorchScript archive ({err})") from None
    else:
        raise ArtifactError(
            f"{path}: not a torch.export program (.pt2), TorchScript archive or .onnx file"
        )
    return LoadedModel(inner, kind, path).eval()
