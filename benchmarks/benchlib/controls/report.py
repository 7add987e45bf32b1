"""The controls benchmark's report: results files merged into JSON, Markdown and figures.

Nothing here trains: the report is a function of the results files alone, so it can be
rewritten (after a change of wording or of a figure) from the committed JSON.
"""

from __future__ import annotations

from pathlib import Path

from benchlib.controls.plot import plot_figures
from benchlib.controls.runs import Record, load_results, result_key
from benchlib.results import RESULTS
from dnr.fileio import atomic_write_json, atomic_write_text
from dnr.stats import PairedDifference, paired_by_key

GROUPS = (
    ("main", "Main table: dense, static and DNR (defaults)"),
    ("before", "Before this change: the paper's rewiring and no warm-up"),
    ("long", "Longer runs: four times the epochs"),
    ("peers", "Peers at the same recipe and epochs: FlyingBird and LWM (d = 0.05)"),
    ("fast", "Fast training modes: DNR on PGD-3, FGSM-RS and free (m = 3) examples"),
    ("channel", "Channel mode at d = 0.1: DNR, its static control, and weight mode"),
    ("ablation", "Ablation around the DNR defaults (uniform init)"),
)
PAIRS = [
    ("dnr-uniform", "static-uniform"),
    ("dnr-erk", "static-erk"),
    ("dnr-uniform x4 epochs", "static-uniform x4 epochs"),
    ("dnr-erk x4 epochs", "static-erk x4 epochs"),
    ("dnr-uniform", "flyingbird-uniform"),
    ("dnr-uniform", "lwm"),
    ("dnr-channel d=0.1", "static-channel d=0.1"),
    ("dnr-weight d=0.1", "static-weight d=0.1"),
    ("dnr-channel d=0.1", "dnr-weight d=0.1"),
    ("dnr-channel d=0.1 x4 epochs", "static-channel d=0.1 x4 epochs"),
    ("dnr-uniform fgsm_rs", "dnr-uniform pgd3"),
    ("dnr-uniform free m=3", "dnr-uniform pgd3"),
    ("dnr-uniform fgsm_rs x2 epochs", "dnr-uniform pgd3"),
    ("dnr-uniform free m=3 x3 epochs", "dnr-uniform pgd3"),
    ("dnr-uniform fgsm_rs step 1.0", "dnr-uniform pgd3"),
    ("dnr-uniform fgsm_rs step 1.5", "dnr-uniform pgd3"),
    ("dnr-uniform fgsm_rs step 2.0", "dnr-uniform pgd3"),
    ("dnr-uniform fgsm_rs step 1.5 x2 epochs", "dnr-uniform pgd3"),
]
DENSITY_RUNS = (
    "static-erk",
    "dnr-uniform",
    "dnr-erk",
    "dnr-uniform x4 epochs",
    "dnr-erk x4 epochs",
    "dnr-uniform-before",
)
SUMMARY_HEADER = [
    "| run | seeds | test images | test clean % (per seed) | test PGD-20 % (per seed) | "
    "95 % CI of one PGD-20 figure | val PGD-3 % | final train loss |",
    "|---|---|---|---|---|---|---|---|",
]


def pct(x: float | None) -> str:
    """A fraction as a percentage (``–`` when there is none)."""
    return "–" if x is None else f"{100 * x:.1f}"


def mean(xs: list[float]) -> float:
    """The arithmetic mean (as the report has always computed it)."""
    return sum(xs) / len(xs)


def test_images(r: Record) -> int:
    """How many test images a run was scored on (results of several test sets may mix)."""
    return int(r["test_final"]["clean"]["n"])


def summary_rows(rs: list[Record]) -> list[str]:
    """One row per run name: mean over seeds (each seed's own value in brackets)."""
    by_name: dict[tuple[str, int], list[Record]] = {}
    for r in rs:
        by_name.setdefault((r["name"], test_images(r)), []).append(r)
    rows = []
    for (name, _), group in by_name.items():
        group.sort(key=lambda r: r["seed"])
        acc = {m: [r["test_final"][m]["acc"] for r in group] for m in ("clean", "pgd20")}
        val = [r["val_final"]["pgd"] for r in group]
        loss = [r["history"][-1]["train_loss"] for r in group]
        half = mean(
            [
                (r["test_final"]["pgd20"]["ci95"][1] - r["test_final"]["pgd20"]["ci95"][0]) / 2
                for r in group
            ]
        )
        each = lambda xs: " / ".join(f"{100 * x:.1f}" for x in xs)  # noqa: E731
        rows.append(
            f"| {name} | {len(group)} | {test_images(group[0])} | "
            f"**{100 * mean(acc['clean']):.1f}** ({each(acc['clean'])}) | "
            f"**{100 * mean(acc['pgd20']):.1f}** ({each(acc['pgd20'])}) | ±{100 * half:.1f} | "
            f"{100 * mean(val):.1f} | {mean(loss):.3f} |"
        )
    return rows


def delta_cells(diff: PairedDifference, first: str, second: str) -> list[str]:
    """Δ (mean, per seed), its 95 % t interval and the verdict, as three table cells."""
    if diff.mean is None:
        return ["–", "–", "–"]
    each = " / ".join(f"{100 * d:+.1f}" for d in diff.diffs)
    delta = f"**{100 * diff.mean:+.1f}**" + (f" ({each})" if diff.n > 1 else "")
    if diff.lo is None or diff.hi is None:
        return [delta, "none (1 seed)", "no difference shown"]
    return [delta, f"[{100 * diff.lo:+.1f}, {100 * diff.hi:+.1f}]", diff.says(first, second)]


def intro(rs: list[Record]) -> list[str]:
    """Title, the shared recipe, the test and validation protocol, the devices."""
    devices = sorted({r["device"] for r in rs})
    return [
        "# DNR against its controls (real CIFAR-10, VGG16 width 0.25, d = 0.05)",
        "",
        "Written by `benchmarks/dnr_vs_controls.py --report` from `dnr_vs_controls.json` (every "
        "run's config, per-epoch history and per-layer densities are there). Recipe shared by "
        "every row: 10,000 training images, PGD-3 hybrid training (ε 8/255, step 2.5·ε/3, "
        "β 0.5), SGD lr 0.05 cosine with one warm-up epoch, batch 128, 6 epochs (24 in `long`). "
        "Test: PGD-20 × 5 restarts (ε 8/255, step 2/255) on a seeded subset of the CIFAR-10 "
        "test set, final weights; val: the held-out 1,000 training images, PGD-3 — defaults "
        "are chosen on val, never on test.",
        f"Devices: {', '.join(devices)}. GPU runs are not bit-reproducible (cuDNN); how far a "
        "rerun of the same seed moves a figure has not been measured here.",
    ]


def main_test_images(rs: list[Record]) -> int:
    """The test-set size of the main table (the largest the main runs were scored on)."""
    return max(
        (test_images(r) for r in rs if r["group"] == "main"),
        default=test_images(rs[0]),
    )


def group_sections(rs: list[Record], main_n: int) -> list[str]:
    """One summary table per group; the ablation after the defaults on its own test set."""
    lines: list[str] = []
    for group, title in GROUPS:
        sel = [
            r for r in rs if r["group"] == group and (group != "main" or test_images(r) == main_n)
        ]
        if group == "ablation":  # the defaults on the ablation's own test images first
            ns = {test_images(r) for r in sel}
            sel = [
                r
                for r in rs
                if r["group"] == "main" and test_images(r) in ns and test_images(r) != main_n
            ] + sel
        if sel:
            lines += ["", f"## {title}", "", *SUMMARY_HEADER, *summary_rows(sel)]
    return lines


PAIRS_INTRO = [
    "",
    "## Paired differences, same seed (test, final weights)",
    "",
    "Δ = first − second run, in percentage points: the mean over the seeds both ran, each "
    "seed's own Δ in brackets, and the 95 % Student-t interval of the mean over seeds "
    "(`dnr.stats`, n − 1 degrees of freedom; the seeds are treated as independent draws). "
    '"X ahead" only where that interval excludes 0, otherwise "no difference shown"; one '
    "seed gives no interval. The interval is over training seeds on one test set: it does "
    "not include the test-set sampling error of the Wilson columns above.",
    "",
    "| pair | seeds | test images | Δ clean (per seed) | 95 % CI | verdict (clean) | "
    "Δ PGD-20 (per seed) | 95 % CI | verdict (PGD-20) |",
    "|---|---|---|---|---|---|---|---|---|",
]


def pair_section(rs: list[Record], main_n: int) -> list[str]:
    """Paired differences of ``PAIRS`` by seed, on the main test set."""
    lines = list(PAIRS_INTRO)
    for first, second in PAIRS:
        cells = []
        for metric in ("clean", "pgd20"):
            figures = [
                {
                    r["seed"]: r["test_final"][metric]["acc"]
                    for r in rs
                    if r["name"] == name and test_images(r) == main_n
                }
                for name in (first, second)
            ]
            seeds, diff = paired_by_key(figures[0], figures[1])
            cells += delta_cells(diff, first, second)
        if seeds:
            lines.append(
                f"| {first} − {second} | {', '.join(map(str, seeds))} | {main_n} | "
                + " | ".join(cells)
                + " |"
            )
    return lines


def density_section(runs: dict[str, Record], main_n: int) -> list[str]:
    """Final per-layer density of ``DENSITY_RUNS`` (seed 0, main test set)."""
    lines = ["", "## Where the budget ends up (final per-layer density, seed 0)", ""]
    shown = [n for n in DENSITY_RUNS if f"{n}|0|{main_n}" in runs]
    if shown:
        final = {n: runs[f"{n}|0|{main_n}"]["layer_density_final"] for n in shown}
        lines += ["| layer | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
        for layer in final[shown[0]]:
            lines.append(
                f"| {layer} | " + " | ".join(f"{final[n][layer]:.3f}" for n in shown) + " |"
            )
    return lines


def curve_runs(rs: list[Record], main_n: int) -> list[Record]:
    """The seed-0 runs whose per-epoch curves the report lists."""
    return [
        r
        for r in rs
        if r["seed"] == 0
        and r["group"] in ("main", "before", "long", "channel")
        and test_images(r) == main_n
    ]


def curve_lines(curves: list[Record]) -> list[str]:
    """Per epoch: train loss / val PGD-3 % / weights regrown, one line per run."""
    lines = ["", "## Per-epoch curves (seed 0): train loss / val PGD-3 % / weights regrown", ""]
    for r in curves:
        cells = [
            f"{h['train_loss']:.3f}/{pct(h['val_pgd_acc'])}/{h['moved']}" for h in r["history"]
        ]
        lines.append(f"- {r['name']}: " + ", ".join(cells))
    return lines


def report_lines(rs: list[Record], runs: dict[str, Record]) -> list[str]:
    """The Markdown report of sorted runs ``rs`` (``runs``: the same, by ``result_key``)."""
    main_n = main_test_images(rs)
    return (
        intro(rs)
        + group_sections(rs, main_n)
        + pair_section(rs, main_n)
        + density_section(runs, main_n)
        + curve_lines(curve_runs(rs, main_n))
    )


def report(paths: list[Path], out: Path = RESULTS) -> None:
    """Merge results files into ``out`` (later files win for the same run, seed and test set).

    The main rows appear once per test-set size: the ablation compares against the main runs
    evaluated on its own (1,000-image) test set.
    """
    runs: dict[str, Record] = {}
    for p in paths:
        for r in load_results(p):
            runs[result_key(r)] = r
    rs = sorted(runs.values(), key=lambda r: (r["group"], r["name"], r["seed"]))
    if not rs:
        raise SystemExit("no results to report")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "dnr_vs_controls.json", {"runs": rs})
    lines = report_lines(rs, runs)
    atomic_write_text(out / "dnr_vs_controls.md", "\n".join(lines) + "\n")
    plot_figures(rs, main_test_images(rs), out)
    print("\n".join(lines))
