"""What ``dnr list`` and the help epilogs show: registry entries and presets as rows.

Nothing here names a model, method, dataset or protocol: they come from :mod:`dnr.registry`,
which imports torch, so every function reads it only when called (``dnr --help`` stays fast).
"""

from __future__ import annotations

from collections.abc import Callable

from dnr.config import list_presets, resolve_config_path

__all__ = ["LIST_KINDS", "entries", "format_entries", "list_kind", "names", "preset_entries"]


def entries(registry_name: str) -> list[tuple[str, str]]:
    """``(name, description)`` of each entry of a registry in :mod:`dnr.registry`."""
    from dnr import registry

    reg = getattr(registry, registry_name)
    rows = []
    for name in reg.names():
        entry = reg.get(name)
        description = getattr(entry, "description", "") or getattr(entry, "__doc__", "") or ""
        lines = str(description).strip().splitlines()
        rows.append((name, lines[0].strip() if lines else ""))
    return rows


def preset_entries() -> list[tuple[str, str]]:
    """``(name, first comment line)`` of each bundled preset."""
    rows = []
    for name in list_presets():
        description = ""
        for line in resolve_config_path(name).read_text().splitlines():
            if line.startswith("#"):
                description = line.lstrip("#").strip()
                break
        rows.append((name, description))
    return rows


def _method_entries() -> list[tuple[str, str]]:
    """Sparsity methods with their options and defaults (``sparsity.options.<name>``)."""
    from dnr import registry

    rows = []
    for name, description in entries("SPARSITY_METHODS"):
        keys = registry.SPARSITY_METHODS.get(name).option_keys()
        shown = ", ".join(f"{k}={v}" for k, v in keys.items())
        rows.append((name, f"{description}" + (f" [options: {shown}]" if shown else "")))
    return rows


#: ``dnr list`` kinds -> their (name, description) rows.
LIST_KINDS: dict[str, Callable[[], list[tuple[str, str]]]] = {
    "models": lambda: entries("MODELS"),
    "presets": preset_entries,
    "sparsity-methods": _method_entries,
    "protocols": lambda: entries("PROTOCOLS"),
    "datasets": lambda: entries("DATASETS"),
    "granularities": lambda: entries("GRANULARITIES"),
    "export-formats": lambda: entries("EXPORT_FORMATS"),
    "loggers": lambda: entries("LOGGERS"),
    "objectives": lambda: entries("OBJECTIVES"),
    "optimizers": lambda: entries("OPTIMIZERS"),
}
_KIND_ALIASES = {
    "sparsity": "sparsity-methods",
    "method": "sparsity-methods",
    "methods": "sparsity-methods",
    "data": "datasets",
    "granularity": "granularities",
    "export": "export-formats",
    "formats": "export-formats",
    "loss": "objectives",
    "losses": "objectives",
}


def list_kind(text: str) -> str:
    """``models``, or a singular / alias of a kind (``model``, ``sparsity``)."""
    key = text.lower().replace("_", "-")
    if key not in LIST_KINDS and f"{key}s" in LIST_KINDS:
        return f"{key}s"
    return _KIND_ALIASES.get(key, key)  # anything else: argparse reports an invalid choice


def format_entries(rows: list[tuple[str, str]], indent: str = "  ") -> str:
    """Rows as aligned ``name  description`` lines."""
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join(f"{indent}{name:<{width}}  {text}".rstrip() for name, text in rows)


def names(registry_name: str) -> str:
    """A registry's names, comma-separated."""
    return ", ".join(name for name, _ in entries(registry_name))
