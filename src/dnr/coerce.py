"""Checking a YAML/override value against a dataclass field's annotation.

Converts only where the intent is unambiguous (``2`` for a float, one path for a list);
everything else is a :class:`ConfigError` that names the key and the expected type.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal, get_args, get_origin

from dnr.errors import ConfigError

__all__ = ["coerce"]


def _type_name(tp: Any) -> str:
    """An annotation as a config author writes it (``null`` for None)."""
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp``; convert where the intent is unambiguous."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(key, value, tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, allowed))}"
            )
        return value
    if tp is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping such as {{name: value}}, got {value!r}")
        return {str(k): v for k, v in value.items()}
    if origin is list:
        return _coerce_list(key, value, tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        return _coerce_int(key, value)
    if tp is float:
        return _coerce_float(key, value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _coerce_union(key: str, value: Any, tp: Any) -> Any:
    """The first option that accepts ``value`` (None only where the union allows it); else
    the first option's error, the one a reader of the annotation expects."""
    options = get_args(tp)
    if value is None and type(None) in options:
        return None
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return coerce(key, value, option)
        except ConfigError as err:
            errors.append(str(err))
    raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")


def _coerce_list(key: str, value: Any, tp: Any) -> list[Any]:
    """Each item checked against the item type; a single path/number becomes a list of one."""
    (item_type,) = get_args(tp)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]  # a single path/number where a list is expected
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    return [coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]


def _coerce_int(key: str, value: Any) -> int:
    """An integer (or an integral float such as ``1e3``) that torch and numpy can hold."""
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, float) and value.is_integer()):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        value = int(value)
    if not -(2**63) <= value < 2**63:  # what torch and numpy can hold
        raise ConfigError(f"{key}: {value} is out of range for a 64-bit integer")
    return value


def _coerce_float(key: str, value: Any) -> float:
    """A finite number; a numeric string too, since YAML 1.1 reads ``5e-4`` as a string."""
    if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return number
