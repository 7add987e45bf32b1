"""``dnr compare``: several sparsity methods, one recipe, one table.

Every method trains with the same config, seed, data and budget (only ``sparsity.method``
differs) into ``OUT/<method>/``, so the rows differ by the method alone. The job is
resumable at the granularity of runs: a finished run (``eval.json``) is reused, an
interrupted one resumes from its checkpoint, and a run directory trained with another
config is refused rather than mixed into the table. Everything that can be refused
(names, configs, existing directories) is checked before anything trains.

Outputs: ``OUT/comparison.json`` (rows + the shared config), ``OUT/comparison.md`` (the
table) and ``OUT/comparison.png`` (clean vs. worst-case robust accuracy per method).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from dnr.artifacts import ArtifactError, RunDir, read_model_meta
from dnr.config import Config, ConfigError, load_config, parse_override
from dnr.distributed import Distributed
from dnr.fileio import atomic_write, atomic_write_json, atomic_write_text, read_jsonl
from dnr.markdown import markdown_table
from dnr.registry import SPARSITY_METHODS, UnknownNameError
from dnr.runner import run_train
from dnr.training.writer import config_difference

__all__ = ["comparison_table", "run_compare", "select_methods"]

COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
COMPARISON_PNG = "comparison.png"

#: How ``images_seen`` is counted (also written into comparison.json / .md).
IMAGES_SEEN_NOTE = (
    "training examples per epoch (metrics.jsonl: train_images), summed over every epoch "
    "of every stage"
)

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
        saved = yaml.safe_load(run.config.read_text())
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


def run_compare(
    cfg_path: str | Path | None,
    out_dir: str | Path,
    methods: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    *,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train + evaluate each method into ``out_dir/<method>``; write the comparison.

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
    configs = method_configs(cfg_path, names, list(overrides))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is not a directory; choose another --out")
    actions = {m: plan_run(m, configs[m], out / m) for m in names}
    out.mkdir(parents=True, exist_ok=True)
    for i, method in enumerate(names, 1):
        run_dir, action = out / method, actions[method]
        prefix = f"[{i}/{len(names)}] {method}:"
        if action == "reuse":
            log(f"{prefix} reusing the finished run in {run_dir} (eval.json)")
            continue
        if action == "resume":
            log(f"{prefix} resuming {run_dir} from its last checkpoint ...")
        else:
            log(f"{prefix} training into {run_dir} ...")
        run_train(configs[method], run_dir, resume=action == "resume", progress=progress, log=log)
    rows, table = comparison_table(out, names)
    shared = configs[names[0]].to_dict()
    shared["sparsity"].pop("method", None)
    atomic_write_json(
        out / COMPARISON_JSON,
        {
            "methods": names,
            "config": str(cfg_path) if cfg_path is not None else None,
            "overrides": list(overrides),
            "shared_config": shared,
            "images_seen": IMAGES_SEEN_NOTE,
            "rows": rows,
        },
    )
    atomic_write_text(out / COMPARISON_MD, _document(rows, table))
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


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def comparison_table(
    out_dir: str | Path, methods: Sequence[str]
) -> tuple[list[dict[str, Any]], str]:
    """Rows (one per method, from its model.json, metrics.jsonl, eval.json) and the Markdown
    table of them; reads finished run directories only, trains nothing."""
    out = Path(out_dir)
    rows = [run_row(out / method, method) for method in methods]
    attacks: list[str] = []
    for row in rows:
        attacks += [name for name in row["accuracy"] if name not in attacks]
    staged = any(row["stage_epochs"] for row in rows)
    header = [
        "method",
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
    return rows, markdown_table(header, body)


def _document(rows: list[dict[str, Any]], table: str) -> str:
    """comparison.md: the table and what its columns count."""
    protocols = sorted({str(r["protocol"]) for r in rows})
    examples = sorted({str(r["num_test_examples"]) for r in rows})
    return (
        f"# Comparison: {', '.join(r['method'] for r in rows)}\n\n{table}\n\n"
        f"Accuracies: each run's eval.json (protocol {', '.join(protocols)}, "
        f"{', '.join(examples)} test examples); worst case: per example, over every attack.\n"
        f"Images seen: {IMAGES_SEEN_NOTE}.\n"
    )


def plot_comparison(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Clean vs. worst-case robust accuracy, one labelled point per method (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels: dict[tuple[float, float], list[str]] = {}  # methods on one spot share a label
    for r in rows:
        if r["clean_accuracy"] is not None and r["worst_case_accuracy"] is not None:
            spot = (100 * r["clean_accuracy"], 100 * r["worst_case_accuracy"])
            labels.setdefault(spot, []).append(r["method"])
    points = [(", ".join(names), clean, robust) for (clean, robust), names in labels.items()]
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, clean, robust in points:
        ax.scatter([clean], [robust], s=40)
        ax.annotate(name, (clean, robust), textcoords="offset points", xytext=(5, 5))
    if points:
        low = min(min(p[1], p[2]) for p in points)
        high = max(max(p[1], p[2]) for p in points)
        pad = max(2.0, 0.1 * (high - low))
        lo, hi = max(0.0, low - pad), min(100.0, high + pad)
        ax.plot([lo, hi], [lo, hi], "--", color="grey", linewidth=0.8, label="robust = clean")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run has both clean and worst-case accuracy", ha="center")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("worst-case robust accuracy (%)")
    ax.set_title("Clean vs. worst-case robust accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return Path(path)
