"""The ``dnr`` command. Parses arguments, calls the library, maps user errors to exit codes.

Exit codes: 0 success, 2 a user mistake (bad config, missing data, bad artifact; printed as
one line, no traceback), 130 interrupted (resume with ``dnr train --resume``).
"""

from __future__ import annotations

import sys

from dnr.cli.commands import COMMANDS
from dnr.cli.parser import build_parser
from dnr.config import ConfigError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # imported after parsing: these import torch, which `dnr --help` does not need
    from dnr.artifacts import ArtifactError
    from dnr.data import DataError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, ArtifactError) as err:
        print(f"dnr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
