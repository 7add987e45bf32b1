"""The documents of a comparison: the runs table, comparison.md and comparison.json.

Rendering only: the rows come from :mod:`dnr.compare.rows`, the statistics from
:mod:`dnr.compare.statistics`. Every sentence says what its table can and cannot show, so
no row is read as beating another where the seeds do not show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnr.compare.protocol import IMAGES_SEEN_NOTE, NOISE_SEED_OFFSET
from dnr.compare.rows import accuracy_names, run_row
from dnr.markdown import markdown_table

if TYPE_CHECKING:
    from dnr.compare.plan import ComparePlan

__all__ = ["comparison_document", "comparison_json", "comparison_table", "runs_table"]


def _pct(value: float | None) -> str:
    """An accuracy as a percentage; "-" where the run has none."""
    return "-" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, digits: int = 4) -> str:
    """A density to ``digits`` places; "-" where the run has none."""
    return "-" if value is None else f"{value:.{digits}f}"


def comparison_table(
    out_dir: str | Path, methods: Sequence[str], seeds: Sequence[int] | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Rows (one per run, from its model.json, metrics.jsonl, eval.json) and the Markdown
    table of them; reads finished run directories only, trains nothing.

    ``seeds`` None: one run per method in ``OUT/<method>``; else one per method and seed in
    ``OUT/<method>/seed<k>`` (the table gains a seed column).
    """
    out = Path(out_dir)
    if seeds is None:
        rows = [run_row(out / method, method) for method in methods]
    else:
        rows = [run_row(out / m / f"seed{k}", m) for m in methods for k in seeds]
    return rows, runs_table(rows, per_seed=seeds is not None)


def runs_table(rows: Sequence[dict[str, Any]], per_seed: bool) -> str:
    """One line per run: its sparsity, training length and every accuracy."""
    attacks = accuracy_names(rows)
    staged = any(row["stage_epochs"] for row in rows)
    header = [
        "method",
        *(["seed"] if per_seed else []),
        "granularity",
        "target density",
        "achieved density",
        "epochs",
        *(["stages (epochs)"] if staged else []),
        "images seen",
        *attacks,
        "worst case",
    ]
    body = []
    for row in rows:
        stages = ", ".join(f"{k} {v}" for k, v in row["stage_epochs"].items()) or "-"
        images = row["images_seen"]
        body.append(
            [
                row["method"],
                *([row.get("seed", "-")] if per_seed else []),
                row["granularity"] or "-",
                _num(row["target_density"]),
                _num(row["achieved_density"]),
                row["epochs"],
                *([stages] if staged else []),
                "-" if images is None else f"{images:,}",
                *(_pct(row["accuracy"].get(name)) for name in attacks),
                _pct(row["worst_case_accuracy"]),
            ]
        )
    return markdown_table(header, body)


def _metric_name(metric: str) -> str:
    """The column name a reader expects (``worst_case`` is the JSON key)."""
    return "worst case" if metric == "worst_case" else metric


def _pp(value: float | None) -> str:
    """A difference of accuracies in percentage points."""
    return "-" if value is None else f"{100 * value:+.2f}"


def _interval(entry: dict[str, Any]) -> str:
    """The 95 % interval in percentage points, or why there is none."""
    if entry["lo"] is None:
        return f"none (n = {entry['n']})"
    return f"[{_pp(entry['lo'])}, {_pp(entry['hi'])}]"


def _differences_table(entries: Sequence[dict[str, Any]], floor: dict[str, float | None]) -> str:
    """Paired differences, with the noise floor's half width beside each where measured."""
    header = ["pair", "metric", "seeds", "mean Δ (pp)", "95 % interval (pp)", "verdict"]
    if floor:
        header.append("noise floor ± (pp)")
    body = []
    for e in entries:
        cells = [
            f"{e['a']} − {e['b']}",
            _metric_name(e["metric"]),
            e["n"],
            _pp(e["mean"]),
            _interval(e),
            e["verdict"],
        ]
        if floor:
            half = floor.get(e["metric"])
            cells.append("-" if half is None else f"±{100 * half:.2f}")
        body.append(cells)
    return markdown_table(header, body)


def _mean_cell(stats: dict[str, Any]) -> str:
    """Mean ± s.d. in percent; the s.d. left out where one seed gives none."""
    if stats["mean"] is None:
        return "-"
    spread = "" if stats["sd"] is None else f" ± {100 * stats['sd']:.2f}"
    return f"{_pct(stats['mean'])}{spread}"


def comparison_document(
    rows: list[dict[str, Any]],
    table: str,
    stats: dict[str, Any] | None = None,
    seeds: Sequence[int] = (),
) -> str:
    """comparison.md: the tables, what their columns count, and what the seeds can show."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    seed_text = ", ".join(map(str, seeds))
    title = f"# Comparison: {', '.join(methods)}"
    notes = _notes(rows)
    if stats is None:
        return (
            f"{title}\n\n{table}\n\n{notes}"
            f"One seed (train.seed {seed_text}): no interval can be given, so no row here is "
            "shown to beat another; a gap may be seed noise. Rerun with --seeds 0,1,2 (and "
            "--noise-floor) for paired 95 % intervals over seeds.\n"
        )
    noise = stats["noise_floor"]
    floor = {e["metric"]: e["half_width"] for e in noise} if noise else {}
    parts = [
        f"{title} ({'seeds' if len(seeds) > 1 else 'seed'} {seed_text})",
        f"## Runs: one row per method and seed\n\n{table}",
        "## Mean over seeds (± sample standard deviation, percentage points)\n\n"
        + _mean_table(stats),
        *_difference_sections(stats, floor),
    ]
    if noise:
        parts.append(_noise_section(noise, seed_text))
    parts.append(f"{notes}{_intervals_note(stats, seeds)}{_floor_note(noise)}\n")
    return "\n\n".join(parts)


def _notes(rows: Sequence[dict[str, Any]]) -> str:
    """Where the accuracies come from and what images seen counts."""
    protocols = sorted({str(r["protocol"]) for r in rows})
    examples = sorted({str(r["num_test_examples"]) for r in rows})
    return (
        f"Accuracies: each run's eval.json (protocol {', '.join(protocols)}, "
        f"{', '.join(examples)} test examples); worst case: per example, over every attack.\n"
        f"Images seen: {IMAGES_SEEN_NOTE}.\n"
    )


def _mean_table(stats: dict[str, Any]) -> str:
    """Mean ± s.d. over seeds, one line per method."""
    metrics = stats["metrics"]
    mean_header = ["method", "seeds", *(_metric_name(m) for m in metrics)]
    mean_body = [
        [s["method"], len(s["seeds"]), *(_mean_cell(s["metrics"][m]) for m in metrics)]
        for s in stats["summary"]
    ]
    return markdown_table(mean_header, mean_body)


def _difference_sections(stats: dict[str, Any], floor: dict[str, float | None]) -> list[str]:
    """A section of paired differences against the reference, then one against static."""
    sections = []
    for against, what in (("reference", None), ("static", "static")):
        entries = [e for e in stats["differences"] if e["against"] == against]
        if entries:
            b = what or entries[0]["b"]
            sections.append(
                f"## Paired differences against {b} (same seed; mean over seeds, 95 % t "
                f"interval)\n\n{_differences_table(entries, floor)}"
            )
    return sections


def _noise_section(noise: list[dict[str, Any]], seed_text: str) -> str:
    """The reference against itself: the interval identical configurations differ by."""
    half = noise[-1]["half_width"]  # worst case
    return (
        f"## Noise floor: {noise[0]['b']} against itself\n\n"
        f"{noise[0]['b']} trained again with seeds + {NOISE_SEED_OFFSET}, paired with "
        f"seeds {seed_text}: the interval identical configurations differ by"
        + (
            f" (worst case: ±{100 * half:.2f} pp)"
            if half is not None
            else " (one pair: no interval can be given)"
        )
        + ". A difference above that is no larger is what rerunning one method with "
        "other seeds gives as well.\n\n" + _differences_table(noise, {})
    )


def _intervals_note(stats: dict[str, Any], seeds: Sequence[int]) -> str:
    """What a verdict means, or that one seed gives none."""
    n = min((e["n"] for e in stats["differences"]), default=len(seeds))
    if n >= 2:
        return (
            'Verdicts: "X ahead" only where the 95 % interval excludes 0; otherwise "no '
            'difference shown". The interval (Student t over seeds) treats the seeds as '
            "independent draws; with few seeds it is wide."
        )
    return (
        "One seed: no interval can be given, so no difference is shown; rerun with "
        "--seeds 0,1,2 for paired 95 % intervals."
    )


def _floor_note(noise: list[dict[str, Any]] | None) -> str:
    """How to measure the noise floor, when it was not."""
    if noise:
        return ""
    return (
        " Noise floor not measured: --noise-floor trains the reference again with "
        f"seeds + {NOISE_SEED_OFFSET} and reports what identical configurations differ by."
    )


def comparison_json(
    plan: ComparePlan,
    cfg_path: str | Path | None,
    overrides: Sequence[str],
    rows: list[dict[str, Any]],
    noise_rows: list[dict[str, Any]],
    stats: dict[str, Any] | None,
) -> dict[str, Any]:
    """comparison.json: the rows, the config they share, and (several seeds) the statistics."""
    shared = plan.configs[plan.methods[0], plan.seeds[0]].to_dict()
    shared["sparsity"].pop("method", None)
    if plan.per_seed:
        shared["train"].pop("seed", None)
    return {
        "methods": plan.methods,
        "seeds": plan.seeds,
        "reference": plan.reference,
        "noise_floor_seeds": plan.noise_seeds or None,
        "layout": "OUT/<method>/seed<k>/" if plan.per_seed else "OUT/<method>/",
        "config": str(cfg_path) if cfg_path is not None else None,
        "overrides": list(overrides),
        "shared_config": shared,
        "images_seen": IMAGES_SEEN_NOTE,
        "rows": rows,
        **({"noise_floor_rows": noise_rows, **stats} if stats is not None else {}),
    }
