"""A table's report: mean ± s.d. over seeds, paired differences against the reference with
95 % intervals (``dnr.stats``), the noise floor, and one figure that answers the question.

Writes ``results/<scale>/<table>.md``, ``.json`` and ``.png`` from the result files alone,
so a report can be rebuilt anywhere the results are (no weights needed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnr.fileio import atomic_write_json, atomic_write_text
from dnr.markdown import markdown_table
from dnr.stats import mean_sd, paired_by_key
from experiments.protocol import NOISE, NOISE_OFFSET, Run, Table

if TYPE_CHECKING:
    from experiments.runner import Study

__all__ = ["METRICS", "write_report"]


def _part(part: str, key: str, scale: float = 100.0) -> Callable[[dict[str, Any]], float | None]:
    def get(result: dict[str, Any]) -> float | None:
        found = result.get("parts", {}).get(part)
        if found is None:
            return None
        value = found["accuracy"].get(key) if "accuracy" in found else found.get(key)
        return None if value is None else float(value) * scale

    return get


#: name → (header, how to read it from a result, is it an accuracy compared by interval)
METRICS: dict[str, tuple[str, Callable[[dict[str, Any]], float | None], bool]] = {
    "clean": ("clean %", _part("pgd20", "clean"), True),
    "pgd20": ("PGD-20 %", _part("pgd20", "pgd20"), True),
    "autoattack": ("AutoAttack %", _part("autoattack", "autoattack"), True),
    "fgsm": ("FGSM (paper) %", _part("paper", "fgsm"), True),
    "pgd7": ("PGD-7 (paper) %", _part("paper", "pgd7"), True),
    "final_clean": ("final clean %", _part("final", "clean"), True),
    "final_pgd20": ("final PGD-20 %", _part("final", "pgd20"), True),
    "weights": ("weights", _part("costs", "weights", 1.0), False),
    "macs": ("MMACs", _part("costs", "macs", 1e-6), False),
    "latency_ms": ("latency ms", _part("costs", "latency_ms", 1.0), False),
    "train_minutes": ("train min", _part("train", "train_seconds", 1 / 60), False),
}

#: the figures the differences table reports (the accuracies a reader compares)
COMPARED = ("clean", "pgd20", "autoattack", "pgd7")


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def _by_seed(
    results: dict[Run, dict[str, Any]], variant: str, setting: str, metric: str
) -> dict[int, float | None]:
    get = METRICS[metric][1]
    return {
        r.seed: get(res)
        for r, res in results.items()
        if r.variant == variant and r.setting == setting
    }


def _interval(
    a: dict[int, float | None], b: dict[int, float | None], shift: int = 0
) -> dict[str, Any]:
    b = {k - shift: v for k, v in b.items()}
    seeds, diff = paired_by_key(a, b)
    return {"seeds": seeds, **diff.to_dict()}


def _cell(d: dict[str, Any]) -> str:
    if d["mean"] is None:
        return "–"
    if d["lo"] is None:
        return f"{d['mean']:+.1f} (1 seed)"
    mark = (
        ""
        if d["verdict"] == "no difference shown"
        else " **" + ("ahead" if d["verdict"] == "A ahead" else "behind") + "**"
    )
    return f"{d['mean']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]{mark}"


def summarise(table: Table, results: dict[Run, dict[str, Any]]) -> dict[str, Any]:
    """Per setting: each variant's mean ± s.d., its paired difference from the reference,
    and (for a table with one) the noise floor."""
    out: dict[str, Any] = {"question": table.question, "reference": table.reference, "settings": {}}
    for setting in table.settings:
        rows = {}
        for variant in table.variants:
            stats = {
                m: mean_sd(
                    [v for v in _by_seed(results, variant, setting, m).values() if v is not None]
                ).to_dict()
                for m in METRICS
            }
            diffs = {}
            if variant != table.reference:
                for m in COMPARED:
                    diffs[m] = _interval(
                        _by_seed(results, variant, setting, m),
                        _by_seed(results, table.reference, setting, m),
                    )
            rows[variant] = {"stats": stats, "vs_reference": diffs}
        entry: dict[str, Any] = {"variants": rows}
        if table.pairs:
            entry["pairs"] = {
                f"{a} − {b}": {
                    m: _interval(_by_seed(results, a, setting, m), _by_seed(results, b, setting, m))
                    for m in COMPARED
                }
                for a, b in table.pairs
            }
        if table.noise_floor:
            entry["noise_floor"] = {
                m: _interval(
                    _by_seed(results, table.reference, setting, m),
                    _by_seed(results, table.reference, NOISE, m),
                    shift=NOISE_OFFSET,
                )
                for m in COMPARED
            }
        out["settings"][setting] = entry
    return out


def _markdown(
    table: Table, summary: dict[str, Any], scale: str, done: tuple[int, int], n_runs: int
) -> str:
    ref = table.reference
    lines = [
        f"# Study `{table.name}` at scale `{scale}`",
        "",
        f"*{table.question}*",
        "",
        f"Runs measured: {done[0]} of {n_runs} (AutoAttack on {done[1]}). "
        "Accuracies in % on the test set; mean ± s.d. over seeds; Δ = variant − "
        f"`{ref}`, paired by seed, with its 95 % t interval; **ahead**/**behind** only where "
        "the interval excludes zero. The command: "
        f"`python -m experiments.study run {table.name} --scale {scale}`, then `report`.",
        "",
    ]
    for setting, entry in summary["settings"].items():
        if setting:
            lines += [f"## {setting}", ""]
        rows = []
        for variant, row in entry["variants"].items():
            s = row["stats"]
            n = s["clean"]["n"]
            rows.append(
                [f"`{variant}`", str(n)]
                + [
                    _fmt(s[m]["mean"])
                    + (f" ± {s[m]['sd']:.1f}" if s[m]["sd"] is not None and METRICS[m][2] else "")
                    for m in METRICS
                ]
            )
        lines += [markdown_table(["variant", "seeds", *[METRICS[m][0] for m in METRICS]], rows), ""]
        diff_rows = [
            [f"`{v}`", *[_cell(row["vs_reference"][m]) for m in COMPARED]]
            for v, row in entry["variants"].items()
            if v != ref
        ]
        for pair, diffs in entry.get("pairs", {}).items():
            diff_rows.append([f"{pair} (its own pair)"] + [_cell(diffs[m]) for m in COMPARED])
        if "noise_floor" in entry:
            diff_rows.append(
                [f"`{ref}` vs itself (seeds + {NOISE_OFFSET}): the noise floor"]
                + [_cell(entry["noise_floor"][m]) for m in COMPARED]
            )
        if diff_rows:
            lines += [
                markdown_table(
                    ["Δ vs `" + ref + "`", *[METRICS[m][0] for m in COMPARED]], diff_rows
                ),
                "",
            ]
    return "\n".join(lines)


def _figure(table: Table, summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    settings = list(summary["settings"])
    if len(settings) == 1:  # one setting: clean vs PGD-20, each variant a point ± s.d.
        for variant, row in summary["settings"][settings[0]]["variants"].items():
            c, r = row["stats"]["clean"], row["stats"]["pgd20"]
            if c["mean"] is None or r["mean"] is None:
                continue
            ax.errorbar(
                c["mean"],
                r["mean"],
                xerr=c["sd"] or 0,
                yerr=r["sd"] or 0,
                fmt="o",
                capsize=3,
                label=variant,
            )
        ax.set_xlabel("clean accuracy %")
        ax.set_ylabel("PGD-20 accuracy %")
    else:  # a varied setting: PGD-20 against it, one line per variant
        for variant in table.variants:
            xs, ys, es = [], [], []
            for i, setting in enumerate(settings):
                r = summary["settings"][setting]["variants"][variant]["stats"]["pgd20"]
                if r["mean"] is not None:
                    xs.append(i)
                    ys.append(r["mean"])
                    es.append(r["sd"] or 0)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=variant)
        ax.set_xticks(range(len(settings)), settings)
        ax.set_ylabel("PGD-20 accuracy % (mean ± s.d.)")
    ax.set_title(table.question, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(study: Study, table: Table, runs: list[Run]) -> Path:
    """Read every result of ``runs`` that exists and write the table's report files."""
    results = {run: found for run in runs if (found := study.load(run))}
    summary = summarise(table, results)
    base = study.results_root / study.scale.name / table.name
    trained = sum(1 for r in runs if not [p for p in study.missing(r) if p != "autoattack"])
    attacked = sum(1 for r in runs if "autoattack" in study.load(r).get("parts", {}))
    atomic_write_json(
        base.with_suffix(".json"), {"scale": study.scale.name, "table": table.name, **summary}
    )
    atomic_write_text(
        base.with_suffix(".md"),
        _markdown(table, summary, study.scale.name, (trained, attacked), len(runs)),
    )
    _figure(table, summary, base.with_suffix(".png"))
    return base.with_suffix(".md")
