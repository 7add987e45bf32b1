"""``dnr demo``: dense vs. a fixed random mask vs. DNR at 20x, over seeds, with intervals.

One seed of a run this small ranks nothing: the same 4-epoch recipe put dense at 70.5 %
clean for seed 0 and 92.0 % for seed 1 (``benchmarks/results/demo_seeds.md``). So the demo
is ``dnr compare`` over a few seeds: each row is a mean ± s.d., and DNR is set against the
others by the paired difference over seeds with its 95 % interval, "ahead" only where the
interval excludes zero. A newcomer reads the table's uncertainty beside the table.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dnr.compare import COMPARISON_JSON, COMPARISON_MD, run_compare
from dnr.config import ConfigError
from dnr.fileio import atomic_write_json

__all__ = ["DEMO_METHODS", "DEMO_SEEDS", "format_demo", "run_demo"]

#: The demo's rows: the dense upper reference, the control, the method.
DEMO_METHODS = ("dense", "static", "dnr")
#: Seeds each row is averaged over (three: enough for an interval, within a few minutes).
DEMO_SEEDS = (0, 1, 2)
_MARKER = "demo.json"


def run_demo(
    out_dir: str | Path,
    *,
    seeds: Sequence[int] = DEMO_SEEDS,
    progress: bool | None = None,
    overrides: Sequence[str] = (),
    log: Callable[[Any], None] = print,
) -> dict[str, Any]:
    """Train and evaluate dense, static and DNR once per seed; return ``comparison.json``.

    A previous demo in ``out_dir`` (it holds ``demo.json``) is replaced; any other
    non-empty directory is refused.
    """
    out = Path(out_dir)
    marker = out / _MARKER
    if out.exists() and any(out.iterdir()):
        if not marker.exists():
            raise ConfigError(f"{out} exists and is not a demo directory; choose another --out")
        shutil.rmtree(out)  # a previous (possibly interrupted) demo: replace it
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"seeds": list(seeds)})  # first: an interrupted demo is replaced
    run_compare(
        "demo",
        out,
        DEMO_METHODS,
        list(overrides),
        seeds=list(seeds),
        reference="dnr",
        progress=progress,
        log=log,
    )
    summary: dict[str, Any] = json.loads((out / COMPARISON_JSON).read_text())
    atomic_write_json(marker, {"seeds": list(seeds), "comparison": COMPARISON_JSON})
    return summary


def _cell(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "–"
    sd = f" ± {100 * stats['sd']:.1f}" if stats["sd"] is not None else ""
    return f"{100 * stats['mean']:.1f}{sd}"


def _against_dnr(entry: dict[str, Any]) -> str:
    """``other - dnr`` turned around: dnr - other, with its 95 % interval."""
    if entry["mean"] is None:
        return "–"

    def flip(value: float) -> float:
        return 0.0 - 100 * value + 0.0  # + 0.0: a zero difference prints +0.0, not -0.0

    if entry["lo"] is None:
        return f"{flip(entry['mean']):+.1f}"
    return f"{flip(entry['mean']):+.1f} [{flip(entry['hi']):+.1f}, {flip(entry['lo']):+.1f}]"


def format_demo(summary: dict[str, Any], out_dir: str | Path) -> str:
    """The demo's tables for the terminal: means over seeds, then DNR against each row."""
    metrics = [m for m in summary.get("metrics", []) if m != "worst_case"]
    density = {r["method"]: r["achieved_density"] for r in summary["rows"]}
    seeds = summary["seeds"]
    lines = [
        f"accuracy % on {summary['rows'][0]['num_test_examples']} test images: mean ± s.d. "
        f"over seeds {', '.join(map(str, seeds))}",
        f"{'method':<8}" + "".join(f"{m:>14}" for m in metrics) + f"{'compression':>13}",
    ]
    for row in summary.get("summary", []):
        cells = "".join(f"{_cell(row['metrics'][m]):>14}" for m in metrics)
        lines.append(f"{row['method']:<8}{cells}{1 / density[row['method']]:>12.1f}x")
    lines.append(
        "dnr minus each, paired by seed, 95 % interval (a difference counts only where its "
        "interval excludes 0):"
    )
    for other in [m for m in summary["methods"] if m != "dnr"]:
        entries = {
            e["metric"]: e
            for e in summary.get("differences", [])
            if e["a"] == other and e["b"] == "dnr"
        }
        cells = "  ".join(f"{m} {_against_dnr(entries[m])}" for m in metrics if m in entries)
        lines.append(f"  dnr - {other:<7} {cells}")
    lines.append(f"tables: {Path(out_dir) / COMPARISON_MD}")
    run = Path(out_dir) / "dnr" / (f"seed{seeds[0]}" if len(seeds) > 1 else "")  # compare's layout
    lines.append(f"summary: dnr report {run}")
    return "\n".join(lines)
