"""How a config field declares what it accepts: a registry of names, or a numeric range.

The declaration sits on the field itself (``dataclasses.field`` metadata), so a reader sees a
key's default, meaning and allowed values on one line, and :func:`dnr.config.validate` reads
them from there instead of keeping its own list far from the fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dnr.errors import ConfigError
from dnr.registry import Registry

__all__ = ["Range", "checked", "named", "named_list"]


def named(default: str, registry: Registry) -> Any:
    """A name field whose allowed values are the registry's (checked by ``validate``)."""
    return field(default=default, metadata={"registry": registry})


def named_list(registry: Registry) -> Any:
    """A list field (empty by default) each of whose items the registry must know."""
    return field(default_factory=list, metadata={"registry": registry})


def _bound(text: str) -> int | float:
    """``"4"`` -> 4, ``"0.5"`` -> 0.5, ``"2**63"`` -> 2**63 (exactly, as an int)."""
    base, _, exponent = text.partition("**")
    if exponent:
        return int(base) ** int(exponent)
    try:
        return int(text)
    except ValueError:
        return float(text)


@dataclass(frozen=True)
class Range:
    """Where a number must lie, written as the error message shows it.

    ``spec`` is ``">= N"``, ``"> N"`` or an interval such as ``"(0, 4]"`` or ``"[0, 2**63)"``;
    ``note`` follows it in the message (a unit, a hint); ``null`` also accepts None.
    """

    spec: str
    note: str = ""
    null: bool = False

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in the range (None only where ``null``)."""
        if value is None:
            return self.null
        spec = self.spec
        if spec.startswith(">="):
            return bool(value >= _bound(spec[2:].strip()))
        if spec.startswith(">"):
            return bool(value > _bound(spec[1:].strip()))
        low_text, high_text = spec[1:-1].split(",")
        low, high = _bound(low_text.strip()), _bound(high_text.strip())
        above = value > low if spec[0] == "(" else value >= low
        below = value < high if spec[-1] == ")" else value <= high
        return bool(above and below)

    def check(self, key: str, value: Any) -> None:
        """:class:`ConfigError` naming ``key`` when ``value`` is outside the range."""
        if not self.contains(value):
            where = self.spec if self.spec.startswith(">") else f"in {self.spec}"
            null = " or null" if self.null else ""
            raise ConfigError(f"{key}: must be {where}{self.note}{null}, got {value}")


def checked(default: Any, spec: str, *, note: str = "", null: bool = False) -> Any:
    """A numeric field with its allowed :class:`Range` (checked by ``validate``)."""
    return field(default=default, metadata={"range": Range(spec, note, null)})
