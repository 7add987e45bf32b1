"""argparse ``type=`` converters: a bad option value is a usage error naming the option."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from dnr.devices import is_device_name

__all__ = ["device", "positive_float", "positive_int", "registered"]


def registered(registry_name: str) -> Callable[[str], str]:
    """An argparse ``type`` that accepts the names of a registry (read when it is used)."""

    def parse(text: str) -> str:
        from dnr import registry

        reg = getattr(registry, registry_name)
        if text not in reg:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {reg.choices()})"
            )
        return str(reg.canonical(text))  # a factory name (package.module:callable) keeps its case

    return parse


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    if not is_device_name(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def positive_int(text: str) -> int:
    """A whole number > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value
