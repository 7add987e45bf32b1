"""torch-dnr: Dynamic Network Rewiring — compressed and adversarially robust in one run.

Public API::

    from dnr import load_config, train, evaluate_model, create_model, load_model
    from dnr import DNR, evaluate        # DNR in your own training loop (dnr.api)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "DNR",
    "Config",
    "evaluate",
    "load_config",
    "create_model",
    "load_model",
    "train",
    "evaluate_model",
    "__version__",
]

_LAZY = {
    "DNR": "dnr.api",
    "evaluate": "dnr.api",
    "Config": "dnr.config",
    "load_config": "dnr.config",
    "create_model": "dnr.models",
    "load_model": "dnr.modelfile",
    "train": "dnr.training",
    "evaluate_model": "dnr.robustness",
}


def __getattr__(name: str) -> Any:
    """Import on first use so ``dnr --help`` stays fast (torch loads only when needed)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # cache: later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'dnr' has no attribute {name!r}")
