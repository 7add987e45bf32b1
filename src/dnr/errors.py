"""User-facing error types shared by every layer (the CLI prints them as one line)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user mistake in a configuration file or override (shown without a traceback)."""
