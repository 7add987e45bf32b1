"""The ``dnr`` command. Parses arguments, calls the library, maps user errors to exit codes.

Exit codes: 0 success, 2 a user mistake (bad config, missing data, bad artifact, a file the
system refuses; printed as one line, no traceback: ``--debug`` adds it), 130 interrupted
(resume with ``dnr train --resume``).
"""

from __future__ import annotations

import sys
import traceback

from dnr.cli.commands import COMMANDS
from dnr.cli.parser import build_parser
from dnr.config import ConfigError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # imported after parsing: these import torch, which `dnr --help` does not need
    from dnr.data import DataError
    from dnr.rundir import ArtifactError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, ArtifactError, OSError) as err:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"dnr {args.command}: error: {_describe(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print("\ninterrupted", file=sys.stderr)
        return 130


def _describe(err: BaseException) -> str:
    """One line: our errors as they are, a file-system error with its file."""
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror or err}"
    return " ".join(str(err).split())
