"""When a file may make this package run code: never by default.

A model.json naming a factory (``package.module:callable``, ``timm:``) imports and calls
it; a TorchScript archive or a ``torch.export`` program may unpickle Python objects on load.
Both are code execution from a file, allowed only when the command itself named the code
(:func:`trusted_model_code`: ``dnr train model.name=...``) or the user says the files are
trusted with ``DNR_TRUST_MODEL_CODE=1``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["TRUST_ENV", "code_trusted", "trusted_model_code"]

#: Set to 1 to load files that run code (factory-named models, TorchScript, .pt2).
TRUST_ENV = "DNR_TRUST_MODEL_CODE"
_trusted: ContextVar[bool] = ContextVar("dnr_trusted_model_code", default=False)


@contextmanager
def trusted_model_code() -> Iterator[None]:
    """Trust inside this block: the command named the model, so the run it writes is its own."""
    token = _trusted.set(True)
    try:
        yield
    finally:
        _trusted.reset(token)


def code_trusted() -> bool:
    """Whether loading a file that runs code is allowed here."""
    return _trusted.get() or os.environ.get(TRUST_ENV) == "1"
