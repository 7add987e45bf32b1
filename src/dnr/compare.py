"""``dnr compare``: several sparsity methods, one recipe, one table.

Every method trains with the same config, seed, data and budget (only ``sparsity.method``
differs) into ``OUT/<method>/``, so the rows differ by the method alone. The job is
resumable at the granularity of runs: a finished run (``eval.json``) is reused, an
interrupted one resumes from its checkpoint, and a run directory trained with another
config is refused rather than mixed into the table. Everything that can be refused
(names, seeds, configs, existing directories) is checked before anything trains.

One seed says nothing about whether a gap between two methods is more than seed noise.
With ``seeds`` (``--seeds 0,1,2``) every method trains once per seed into
``OUT/<method>/seed<k>/``, and each method is compared with the reference (and with
``static``) by the paired difference over seeds with its 95 % t interval (:mod:`dnr.stats`);
``noise_floor`` trains the reference again with seeds ``k + 1000``: "reference against
itself" is the interval that identical configurations differ by.

Outputs: ``OUT/comparison.json`` (rows + the shared config + per-seed summaries and paired
differences), ``OUT/comparison.md`` (the tables) and ``OUT/comparison.png`` (clean vs.
worst-case robust accuracy per method, mean ± s.d. over seeds).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from dnr.config import Config, ConfigError, as_current, load_config, parse_override
from dnr.distributed import Distributed
from dnr.fileio import atomic_write, atomic_write_json, atomic_write_text, read_jsonl
from dnr.markdown import markdown_table
from dnr.modelfile import read_model_meta
from dnr.registry import SPARSITY_METHODS, UnknownNameError
from dnr.rundir import ArtifactError, RunDir
from dnr.runner import run_train
from dnr.stats import mean_sd, paired_by_key
from dnr.training.writer import config_difference

__all__ = ["comparison_table", "parse_seeds", "run_compare", "select_methods"]

COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
COMPARISON_PNG = "comparison.png"

#: How ``images_seen`` is counted (also written into comparison.json / .md).
IMAGES_SEEN_NOTE = (
    "training examples per epoch (metrics.jsonl: train_images), summed over every epoch "
    "of every stage"
)

#: ``--noise-floor``: the reference trains again with these seeds + this offset.
NOISE_SEED_OFFSET = 1000

#: The largest seed train.seed takes (config.py checks the same bound).
_SEED_LIMIT = 2**63

#: What to do with a method's run directory: train afresh, resume it, or reuse it.
Action = Literal["train", "resume", "reuse"]


def select_methods(methods: Sequence[str] | None, log: Callable[[str], None] = print) -> list[str]:
    """Registered names (lower case) in the given order; all registered ones for None.

    Every name is checked before one is returned, so a typo costs no training. A name given
    twice runs once (with a note): two runs of one method with one seed would be identical.
    """
    if methods is None:
        return SPARSITY_METHODS.names()
    names: list[str] = []
    for raw in methods:
        name = raw.strip().lower()
        if name in names:
            log(f"note: sparsity method {name} is named twice; it runs once")
        elif name:
            names.append(name)
    if not names:
        raise ConfigError("no sparsity methods to compare (e.g. --methods dense,static,dnr)")
    unknown = [n for n in names if n not in SPARSITY_METHODS]
    if unknown:
        raise UnknownNameError(
            f"unknown sparsity method{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(n) for n in unknown)}; choose from "
            f"{', '.join(SPARSITY_METHODS.names())}"
        )
    return names


def method_configs(
    cfg_path: str | Path | None, methods: Sequence[str], overrides: Sequence[str]
) -> dict[str, Config]:
    """The config of each method: the file + overrides + ``sparsity.method=<method>``."""
    for text in overrides:
        if parse_override(text)[0] == "sparsity.method":
            raise ConfigError(
                "compare sets sparsity.method for each run; name the methods with --methods"
            )
    configs = {}
    for method in methods:
        try:
            configs[method] = load_config(cfg_path, [*overrides, f"sparsity.method={method}"])
        except ConfigError as err:
            raise ConfigError(f"sparsity.method={method}: {err}") from None
    return configs


def plan_run(method: str, cfg: Config, run_dir: Path) -> Action:
    """Train, resume or reuse ``run_dir``; ConfigError when it cannot be part of the table.

    The config check is the one ``dnr train --resume`` makes (same difference message),
    made here for finished runs too and before any method trains.
    """
    run = RunDir(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{method}: {run_dir} is not a directory; choose another --out")
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "train"
    if not run.config.is_file():
        raise ConfigError(
            f"{method}: {run_dir} is not a run directory (no config.yaml); "
            "remove it or choose another --out"
        )
    try:
        saved = as_current(yaml.safe_load(run.config.read_text()))
    except yaml.YAMLError:
        saved = None
    if saved != cfg.to_dict():
        raise ConfigError(
            f"{method}: {run_dir} was trained with another configuration "
            f"({config_difference(saved, cfg.to_dict())}); remove it or choose another --out"
        )
    if run.eval_json.is_file() and run.model_meta.is_file():
        evaluation = _read_json(run.eval_json, method)
        wanted = (cfg.eval.protocol, cfg.eval.norm)
        found = (evaluation.get("protocol"), evaluation.get("norm"))
        if found != wanted:  # e.g. a later `dnr eval RUN --protocol full` replaced it
            raise ConfigError(
                f"{method}: {run.eval_json} holds a {found[0]}/{found[1]} evaluation, not "
                f"eval.protocol={wanted[0]} eval.norm={wanted[1]}; move it away to have "
                "compare evaluate the run again"
            )
        return "reuse"
    if run.last_checkpoint.is_file():
        return "resume"  # interrupted in training or in its evaluation
    if run.model_weights.is_file():
        raise ConfigError(
            f"{method}: {run_dir} holds a model but no eval.json and no checkpoint to resume; "
            "remove it or choose another --out"
        )
    return "train"  # interrupted before its first epoch ended: nothing to resume


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct non-negative integers, in the given order."""
    words = [w.strip() for w in text.split(",")]
    if not any(words):
        raise ConfigError(f"--seeds: no seeds in {text!r} (e.g. --seeds 0,1,2)")
    seeds = []
    for word in words:
        try:
            seeds.append(int(word))
        except ValueError:
            raise ConfigError(
                f"--seeds: {word!r} is not an integer (comma-separated seeds, e.g. --seeds 0,1,2)"
            ) from None
    check_seeds(seeds)
    return seeds


def check_seeds(seeds: Sequence[int]) -> None:
    """ConfigError for no seeds, a negative or too large one, or one given twice (the runs of
    a seed would be identical, and a pair counted twice narrows the interval falsely)."""
    if not seeds:
        raise ConfigError("--seeds: no seeds (e.g. --seeds 0,1,2)")
    for seed in seeds:
        if not 0 <= seed < _SEED_LIMIT - NOISE_SEED_OFFSET:
            raise ConfigError(f"--seeds: a seed is a non-negative integer, got {seed}")
    twice = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if twice:
        raise ConfigError(
            f"--seeds: seed {', '.join(map(str, twice))} given twice; each seed trains every "
            "method once"
        )


def _reference(names: Sequence[str], reference: str | None) -> str:
    """``--reference``: the given method, else dnr when it is compared, else the first."""
    if reference is None:
        return "dnr" if "dnr" in names else names[0]
    name = reference.strip().lower()
    if name not in names:
        raise ConfigError(
            f"--reference {name}: not among the compared methods ({', '.join(names)})"
        )
    return name


def _seeded_configs(
    cfg_path: str | Path | None,
    methods: Sequence[str],
    overrides: Sequence[str],
    seeds: Sequence[int],
) -> dict[tuple[str, int], Config]:
    """The config of each (method, seed): method_configs + ``train.seed=<seed>`` (the last
    override, so it wins over a ``train.seed=`` the user gave)."""
    configs = {}
    for seed in seeds:
        per_method = method_configs(cfg_path, methods, [*overrides, f"train.seed={seed}"])
        configs.update({(m, seed): cfg for m, cfg in per_method.items()})
    return configs


def _check_layout(out: Path, method: str, per_seed: bool) -> None:
    """Refuse a method directory laid out for the other mode (one seed vs. several)."""
    method_dir = out / method
    if not method_dir.is_dir():
        return
    if per_seed and RunDir(method_dir).config.is_file():
        raise ConfigError(
            f"{method}: {method_dir} holds a single-seed run; runs with several seeds (or "
            "--noise-floor) go to OUT/<method>/seed<k>/: choose another --out"
        )
    if not per_seed and any(p.name.startswith("seed") for p in method_dir.iterdir()):
        raise ConfigError(
            f"{method}: {method_dir} holds per-seed runs (seed<k>/); give their --seeds "
            "(and --noise-floor if it was given), or choose another --out"
        )


def run_compare(
    cfg_path: str | Path | None,
    out_dir: str | Path,
    methods: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    *,
    seeds: Sequence[int] | None = None,
    reference: str | None = None,
    noise_floor: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train + evaluate each method (once per seed) into ``out_dir``; write the comparison.

    ``seeds`` None: the config's train.seed alone, into ``out_dir/<method>`` (as before
    seeds existed). Several seeds, or ``noise_floor``: ``out_dir/<method>/seed<k>``, and the
    paired differences against ``reference`` (default dnr, else the first method) and
    ``static``. ``noise_floor`` also trains the reference with every seed + 1000.

    Returns the path of ``comparison.md``. Rerunning the same command continues an
    interrupted comparison: finished runs are reused, an interrupted one resumes.
    """
    if Distributed.launched():
        # Each method's test evaluation runs on rank 0 alone; the other ranks would wait for
        # the next method's process group longer than its timeout allows.
        raise ConfigError(
            "dnr compare runs in one process: train each method under torchrun with "
            "`torchrun ... -m dnr train --out OUT/METHOD sparsity.method=METHOD ...`, then "
            "run the same dnr compare command without torchrun (it reuses finished runs)"
        )
    names = select_methods(methods, log)
    ref = _reference(names, reference)
    if seeds is None:
        configs = method_configs(cfg_path, names, list(overrides))
        seed_list = [configs[names[0]].train.seed]
        seeded = {(m, seed_list[0]): configs[m] for m in names}
    else:
        seed_list = list(seeds)
        check_seeds(seed_list)
        if any(parse_override(text)[0] == "train.seed" for text in overrides):
            raise ConfigError(
                "compare sets train.seed for each run when --seeds is given; drop train.seed="
            )
        seeded = {}
    noise_seeds = [k + NOISE_SEED_OFFSET for k in seed_list] if noise_floor else []
    if set(noise_seeds) & set(seed_list):
        raise ConfigError(
            f"--noise-floor trains {ref} with seeds + {NOISE_SEED_OFFSET}, and seed "
            f"{sorted(set(noise_seeds) & set(seed_list))[0]} is in --seeds: give seeds below "
            f"{NOISE_SEED_OFFSET} or apart by more"
        )
    if seeds is not None:
        seeded = _seeded_configs(cfg_path, names, list(overrides), seed_list)
    if noise_seeds:
        seeded.update(_seeded_configs(cfg_path, [ref], list(overrides), noise_seeds))
    per_seed = len(seed_list) > 1 or noise_floor
    runs = [(m, k) for k in seed_list for m in names] + [(ref, k) for k in noise_seeds]
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is not a directory; choose another --out")
    for method in names:
        _check_layout(out, method, per_seed)

    def label(method: str, seed: int) -> str:
        return f"{method} seed {seed}" if per_seed else method

    def where(method: str, seed: int) -> Path:
        return out / method / f"seed{seed}" if per_seed else out / method

    actions = {(m, k): plan_run(label(m, k), seeded[m, k], where(m, k)) for m, k in runs}
    out.mkdir(parents=True, exist_ok=True)
    for i, (method, seed) in enumerate(runs, 1):
        run_dir, action = where(method, seed), actions[method, seed]
        prefix = f"[{i}/{len(runs)}] {label(method, seed)}:"
        if action == "reuse":
            log(f"{prefix} reusing the finished run in {run_dir} (eval.json)")
            continue
        if action == "resume":
            log(f"{prefix} resuming {run_dir} from its last checkpoint ...")
        else:
            log(f"{prefix} training into {run_dir} ...")
        run_train(
            seeded[method, seed], run_dir, resume=action == "resume", progress=progress, log=log
        )
    layout_seeds = seed_list if per_seed else None
    rows, table = comparison_table(out, names, layout_seeds)
    noise_rows = [run_row(where(ref, k), ref) for k in noise_seeds]
    shared = seeded[names[0], seed_list[0]].to_dict()
    shared["sparsity"].pop("method", None)
    if per_seed:
        shared["train"].pop("seed", None)
    stats = seed_statistics(rows, names, ref, noise_rows) if per_seed else None
    atomic_write_json(
        out / COMPARISON_JSON,
        {
            "methods": names,
            "seeds": seed_list,
            "reference": ref,
            "noise_floor_seeds": noise_seeds or None,
            "layout": "OUT/<method>/seed<k>/" if per_seed else "OUT/<method>/",
            "config": str(cfg_path) if cfg_path is not None else None,
            "overrides": list(overrides),
            "shared_config": shared,
            "images_seen": IMAGES_SEEN_NOTE,
            "rows": rows,
            **({"noise_floor_rows": noise_rows, **stats} if stats is not None else {}),
        },
    )
    atomic_write_text(out / COMPARISON_MD, _document(rows, table, stats, seed_list))
    plot_comparison(rows, out / COMPARISON_PNG)
    return out / COMPARISON_MD


def _read_json(path: Path, method: str) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{method}: cannot read {path}: {err}") from None
    if not isinstance(document, dict):
        raise ArtifactError(f"{method}: {path} is not a JSON object")
    return document


def _epochs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per epoch (the last line wins), in epoch order."""
    by_epoch = {int(r["epoch"]): r for r in records if "epoch" in r}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _images(record: dict[str, Any]) -> int | None:
    if "train_images" in record:
        return int(record["train_images"])
    # runs from before train_images was recorded: the rate was count / seconds
    rate, seconds = record.get("images_per_sec"), record.get("train_seconds")
    if rate is None or seconds is None:
        return None
    return round(rate * seconds)  # = the epoch's example count (rate was count / seconds)


def run_row(run_dir: Path, method: str) -> dict[str, Any]:
    """The comparison row of one finished run directory."""
    run = RunDir(run_dir)
    meta = read_model_meta(run.path)
    sparsity = meta.get("sparsity", {})
    if sparsity.get("method", method) != method:
        raise ArtifactError(f"{run.path} holds a {sparsity['method']} run, not {method}")
    if not run.eval_json.is_file():
        raise ArtifactError(f"{method}: no eval.json in {run.path}")
    evaluation = _read_json(run.eval_json, method)
    epochs = _epochs(read_jsonl(run.metrics))
    stages: dict[str, int] = {}
    for record in epochs:
        if "stage" in record:
            stages[record["stage"]] = stages.get(record["stage"], 0) + 1
    images = [_images(r) for r in epochs]
    results = {r["name"]: r["accuracy"] for r in evaluation.get("results", [])}
    results.pop("worst_case", None)  # its own column: worst_case_accuracy
    return {
        "method": method,
        "seed": _run_seed(run),
        "granularity": sparsity.get("mode"),
        "target_density": sparsity.get("target_density"),
        "achieved_density": sparsity.get("achieved_density"),
        "epochs": len(epochs),
        "stage_epochs": stages,
        "images_seen": None if None in images else sum(i for i in images if i is not None),
        "clean_accuracy": results.get("clean"),
        "accuracy": results,
        "worst_case_accuracy": evaluation.get("worst_case_accuracy"),
        "protocol": evaluation.get("protocol"),
        "num_test_examples": evaluation.get("num_examples"),
        "run_dir": str(run.path),
    }


def _run_seed(run: RunDir) -> int | None:
    """train.seed from the run's config.yaml (None when it cannot be read)."""
    try:
        seed = (yaml.safe_load(run.config.read_text()) or {}).get("train", {}).get("seed")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return seed if isinstance(seed, int) else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, digits: int = 4) -> str:
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
    return rows, _runs_table(rows, per_seed=seeds is not None)


def _attacks(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every accuracy name in the rows (clean first, as eval.json orders them)."""
    attacks: list[str] = []
    for row in rows:
        attacks += [name for name in row["accuracy"] if name not in attacks]
    return attacks


def _runs_table(rows: Sequence[dict[str, Any]], per_seed: bool) -> str:
    attacks = _attacks(rows)
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


def _figure(row: dict[str, Any], metric: str) -> float | None:
    """One accuracy of a row: an attack's (or clean), or ``worst_case``."""
    if metric == "worst_case":
        value = row["worst_case_accuracy"]
    else:
        value = row["accuracy"].get(metric)
    return None if value is None else float(value)


def seed_statistics(
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    reference: str,
    noise_rows: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Per method and metric the mean and s.d. over seeds; per pair the paired difference
    over seeds (``a - b``, same seed) with its 95 % t interval and verdict.

    Pairs: every method against ``reference``, and against ``static`` when it is compared.
    ``noise_rows`` (the reference at seed + NOISE_SEED_OFFSET) give "reference against
    itself": how far apart identical configurations land, the noise floor of the table.
    """
    metrics = [*_attacks(rows), "worst_case"]
    figures: dict[str, dict[str, dict[int, float | None]]] = {
        m: {metric: {} for metric in metrics} for m in methods
    }
    for row in rows:
        for metric in metrics:
            figures[row["method"]][metric][row["seed"]] = _figure(row, metric)
    summary = [
        {
            "method": m,
            "seeds": sorted(r["seed"] for r in rows if r["method"] == m),
            "metrics": {
                metric: mean_sd([v for v in figures[m][metric].values() if v is not None]).to_dict()
                for metric in metrics
            },
        }
        for m in methods
    ]

    def pair(a: str, b: str, against: str, fig_a: dict[str, dict[int, float | None]]) -> list:
        entries = []
        for metric in metrics:
            seeds, diff = paired_by_key(fig_a[metric], figures[b][metric])
            entries.append(
                {
                    "a": a,
                    "b": b,
                    "against": against,
                    "metric": metric,
                    "n": diff.n,
                    "mean": diff.mean,
                    "lo": diff.lo,
                    "hi": diff.hi,
                    "half_width": diff.half_width,
                    "sd": diff.sd,
                    "confidence": diff.confidence,
                    "verdict": diff.says(a, b),
                    "seeds": seeds,
                    "diffs": list(diff.diffs),
                }
            )
        return entries

    differences = []
    for m in methods:
        if m != reference:
            differences += pair(m, reference, "reference", figures[m])
    if "static" in methods:
        for m in methods:
            if m != "static":
                differences += pair(m, "static", "static", figures[m])
    noise = None
    if noise_rows:
        again: dict[str, dict[int, float | None]] = {metric: {} for metric in metrics}
        for row in noise_rows:  # keyed by the seed it is paired with
            for metric in metrics:
                again[metric][row["seed"] - NOISE_SEED_OFFSET] = _figure(row, metric)
        noise = pair(f"{reference} (seed + {NOISE_SEED_OFFSET})", reference, "itself", again)
    return {
        "metrics": metrics,
        "summary": summary,
        "differences": differences,
        "noise_floor": noise,
    }


def _metric_name(metric: str) -> str:
    return "worst case" if metric == "worst_case" else metric


def _pp(value: float | None) -> str:
    """A difference of accuracies in percentage points."""
    return "-" if value is None else f"{100 * value:+.2f}"


def _interval(entry: dict[str, Any]) -> str:
    if entry["lo"] is None:
        return f"none (n = {entry['n']})"
    return f"[{_pp(entry['lo'])}, {_pp(entry['hi'])}]"


def _differences_table(entries: Sequence[dict[str, Any]], floor: dict[str, float | None]) -> str:
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
    if stats["mean"] is None:
        return "-"
    spread = "" if stats["sd"] is None else f" ± {100 * stats['sd']:.2f}"
    return f"{_pct(stats['mean'])}{spread}"


def _document(
    rows: list[dict[str, Any]],
    table: str,
    stats: dict[str, Any] | None = None,
    seeds: Sequence[int] = (),
) -> str:
    """comparison.md: the tables, what their columns count, and what the seeds can show."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    protocols = sorted({str(r["protocol"]) for r in rows})
    examples = sorted({str(r["num_test_examples"]) for r in rows})
    seed_text = ", ".join(map(str, seeds))
    title = f"# Comparison: {', '.join(methods)}"
    notes = (
        f"Accuracies: each run's eval.json (protocol {', '.join(protocols)}, "
        f"{', '.join(examples)} test examples); worst case: per example, over every attack.\n"
        f"Images seen: {IMAGES_SEEN_NOTE}.\n"
    )
    if stats is None:
        return (
            f"{title}\n\n{table}\n\n{notes}"
            f"One seed (train.seed {seed_text}): no interval can be given, so no row here is "
            "shown to beat another; a gap may be seed noise. Rerun with --seeds 0,1,2 (and "
            "--noise-floor) for paired 95 % intervals over seeds.\n"
        )
    metrics = stats["metrics"]
    mean_header = ["method", "seeds", *(_metric_name(m) for m in metrics)]
    mean_body = [
        [s["method"], len(s["seeds"]), *(_mean_cell(s["metrics"][m]) for m in metrics)]
        for s in stats["summary"]
    ]
    noise = stats["noise_floor"]
    floor = {e["metric"]: e["half_width"] for e in noise} if noise else {}
    parts = [
        f"{title} ({'seeds' if len(seeds) > 1 else 'seed'} {seed_text})",
        f"## Runs: one row per method and seed\n\n{table}",
        "## Mean over seeds (± sample standard deviation, percentage points)\n\n"
        + markdown_table(mean_header, mean_body),
    ]
    for against, what in (("reference", None), ("static", "static")):
        entries = [e for e in stats["differences"] if e["against"] == against]
        if entries:
            b = what or entries[0]["b"]
            parts.append(
                f"## Paired differences against {b} (same seed; mean over seeds, 95 % t "
                f"interval)\n\n{_differences_table(entries, floor)}"
            )
    if noise:
        half = noise[-1]["half_width"]  # worst case
        parts.append(
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
    n = min((e["n"] for e in stats["differences"]), default=len(seeds))
    intervals = (
        'Verdicts: "X ahead" only where the 95 % interval excludes 0; otherwise "no '
        'difference shown". The interval (Student t over seeds) treats the seeds as '
        "independent draws; with few seeds it is wide."
        if n >= 2
        else "One seed: no interval can be given, so no difference is shown; rerun with "
        "--seeds 0,1,2 for paired 95 % intervals."
    )
    floor_note = (
        ""
        if noise
        else " Noise floor not measured: --noise-floor trains the reference again with "
        f"seeds + {NOISE_SEED_OFFSET} and reports what identical configurations differ by."
    )
    parts.append(f"{notes}{intervals}{floor_note}\n")
    return "\n\n".join(parts)


def plot_comparison(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Clean vs. worst-case robust accuracy, one labelled point per method (Agg backend);
    with several seeds per method the point is the mean, its error bars ± one s.d."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["clean_accuracy"] is not None and r["worst_case_accuracy"] is not None:
            by_method.setdefault(r["method"], []).append(
                (100 * r["clean_accuracy"], 100 * r["worst_case_accuracy"])
            )
    labels: dict[tuple[float, float], list[str]] = {}  # methods on one spot share a label
    spread: dict[tuple[float, float], tuple[float, float]] = {}
    for method, figures in by_method.items():
        x, y = mean_sd([c for c, _ in figures]), mean_sd([w for _, w in figures])
        assert x.mean is not None and y.mean is not None  # figures is not empty
        spot = (x.mean, y.mean)
        labels.setdefault(spot, []).append(method)
        spread[spot] = (x.sd or 0.0, y.sd or 0.0)
    points = [(", ".join(names), clean, robust) for (clean, robust), names in labels.items()]
    seeds = max((len(f) for f in by_method.values()), default=1)
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, clean, robust in points:
        if seeds > 1:
            xerr, yerr = spread[clean, robust]
            ax.errorbar([clean], [robust], xerr=[xerr], yerr=[yerr], fmt="o", capsize=3)
        else:
            ax.scatter([clean], [robust], s=40)
        ax.annotate(name, (clean, robust), textcoords="offset points", xytext=(5, 5))
    if points:
        low = min(min(p[1], p[2]) for p in points)
        high = max(max(p[1], p[2]) for p in points)
        pad = max(2.0, 0.1 * (high - low), *(max(e) + 1.0 for e in spread.values()))
        lo, hi = max(0.0, low - pad), min(100.0, high + pad)
        ax.plot([lo, hi], [lo, hi], "--", color="grey", linewidth=0.8, label="robust = clean")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run has both clean and worst-case accuracy", ha="center")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("worst-case robust accuracy (%)")
    title = "Clean vs. worst-case robust accuracy"
    ax.set_title(title if seeds == 1 else f"{title}\n(mean ± s.d. over {seeds} seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return Path(path)
