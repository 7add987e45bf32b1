"""Where benchmark results go (``benchmarks/results/``) and how: JSON beside Markdown."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository
RESULTS = ROOT / "benchmarks" / "results"


def spread(values: Sequence[float]) -> float:
    """Half the range relative to the median: how much the repeats disagree (0 for one)."""
    if len(values) < 2:
        return 0.0
    return (max(values) - min(values)) / 2 / statistics.median(values)


def write_results(out_dir: Path, name: str, info: dict[str, Any], markdown: str) -> None:
    """``<name>.json`` (every figure) and ``<name>.md`` (the report) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(info, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(f"wrote {out_dir / name}.json and .md")
