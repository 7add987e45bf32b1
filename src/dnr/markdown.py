"""The one Markdown table writer (eval.md, report.md, benchmark results)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured table; ``|`` and newlines inside cells are escaped."""

    def cell(value: Any) -> str:
        """One cell on one line, its pipes not read as column breaks."""
        return str(value).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
