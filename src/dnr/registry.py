"""Name -> object registries: the one place each user-facing name is defined.

Models, sparsity methods, datasets, evaluation protocols, export formats, training
objectives and optimizers each live in a :class:`Registry`. Config validation, CLI help,
``dnr list`` and error messages read the names from here, so a new entry is a new decorated
function or class, nothing else.

The built-in entries register themselves when their package is imported; a registry
imports those packages (by name, on first lookup) the way entry points are loaded, so this
module stays at the bottom of the dependency graph and imports nothing heavy itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar, overload

from dnr.errors import ConfigError

if TYPE_CHECKING:  # for the type checker only: the registry imports nothing above it
    from dnr.sparsity.mask import MaskSet

T = TypeVar("T")


class UnknownNameError(ConfigError):
    """A name that is not in its registry (the message lists the registered ones)."""


class UnresolvableNameError(UnknownNameError):
    """A name of a form a resolver handles (``package.module:callable``) that it cannot
    resolve; the message says why (the module does not import, no such attribute, ...)."""


class Registry(Generic[T]):
    """A case-insensitive mapping from names to objects of one kind.

    Args:
        kind: what the entries are, for messages (``"model"``, ``"sparsity method"``).
        builtins: modules whose import registers the built-in entries.
    """

    def __init__(self, kind: str, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._builtins = builtins
        self._loaded = False
        self._entries: dict[str, T] = {}
        self._resolvers: list[Callable[[str], T | None]] = []
        self._forms: list[str] = []

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True  # set first: the imports below register into this registry
            for module in self._builtins:
                importlib.import_module(module)

    @overload
    def register(self, obj: T, *, name: str | None = None) -> T: ...
    @overload
    def register(self, obj: None = None, *, name: str | None = None) -> Callable[[T], T]: ...

    def register(self, obj: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name`` (default: its ``name`` attribute or ``__name__``).

        Usable bare (``@REG.register``) or with a name (``@REG.register(name="x")``).
        Registering a taken name with a different object is an error, not an override.
        """

        def decorator(o: T) -> T:
            key = str(name or getattr(o, "name", None) or getattr(o, "__name__", "")).lower()
            if not key:
                raise ValueError(f"cannot tell the {self.kind} name of {o!r}; pass name=")
            if key in self._entries and self._entries[key] is not o:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = o
            return o

        return decorator(obj) if obj is not None else decorator

    def add_resolver(self, resolver: Callable[[str], T | None], forms: tuple[str, ...]) -> None:
        """Let names outside the table resolve, e.g. ``package.module:callable`` factories.

        ``resolver(name)`` returns the entry for a name of its form, None for a name it does
        not handle, and raises :class:`UnresolvableNameError` (saying why) for a name of its
        form that does not resolve. Resolved names are case-sensitive and kept as written.
        ``forms`` describe those names in messages (``"timm:<name>"``).
        """
        if resolver not in self._resolvers:
            self._resolvers.append(resolver)
            self._forms.extend(forms)

    def choices(self) -> str:
        """The registered names, then the forms resolvers accept: for messages."""
        return ", ".join([*self.names(), *self._forms])

    def canonical(self, name: str) -> str:
        """How a known name is written in configs and artifacts: a table name lower-cased,
        a resolved one as written."""
        self._load_builtins()
        key = str(name).lower()
        return key if key in self._entries else str(name)

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a toy entry clean up after themselves)."""
        self._entries.pop(name.lower(), None)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load_builtins()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The entry for ``name``; :class:`UnknownNameError` listing the choices otherwise."""
        self._load_builtins()
        key = str(name).lower()
        if key in self._entries:
            return self._entries[key]
        for resolve in self._resolvers:
            entry = resolve(str(name))
            if entry is not None:
                return entry
        raise UnknownNameError(f"unknown {self.kind} {name!r}; choose one of {self.choices()}")

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.get(name)
        except UnknownNameError:
            return False
        return True

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


MODELS: Registry = Registry("model", builtins=("dnr.models",))
SPARSITY_METHODS: Registry = Registry("sparsity method", builtins=("dnr.sparsity",))
DATASETS: Registry = Registry("dataset", builtins=("dnr.data",))
PROTOCOLS: Registry = Registry("evaluation protocol", builtins=("dnr.robustness",))
EXPORT_FORMATS: Registry = Registry("export format", builtins=("dnr.export",))
#: Where a training run's records go besides the console (``train.loggers``).
LOGGERS: Registry = Registry("logger", builtins=("dnr.training.loggers",))
#: Training losses with the attack that makes their examples (``train.loss``).
OBJECTIVES: Registry = Registry("training objective", builtins=("dnr.training.objectives",))
#: Optimizers by name (``train.optimizer``), each with the first moment DNR grows by.
OPTIMIZERS: Registry = Registry("optimizer", builtins=("dnr.training.optim",))
#: What a masked method removes: single weights or whole output channels (mask classes,
#: each satisfying :class:`dnr.sparsity.mask.MaskSet`).
GRANULARITIES: Registry[type[MaskSet]] = Registry(
    "sparsity granularity", builtins=("dnr.sparsity",)
)
