"""One finished run directory as a comparison row (model.json, metrics.jsonl, eval.json).

Reading only: nothing here trains. The row is the unit every table, statistic and plot of
a comparison is computed from, so a run is read once and in one way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dnr.fileio import read_jsonl
from dnr.modelfile import read_model_meta
from dnr.rundir import ArtifactError, RunDir

__all__ = ["accuracy_names", "figure", "read_json_object", "run_row"]


def read_json_object(path: Path, method: str) -> dict[str, Any]:
    """A JSON object from ``path``; ArtifactError (naming the method) for anything else,
    so a damaged run is reported as that method's, not as a traceback."""
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
    """Training examples of one epoch; None where an old record cannot tell."""
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
    evaluation = read_json_object(run.eval_json, method)
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


def accuracy_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every accuracy name in the rows (clean first, as eval.json orders them)."""
    attacks: list[str] = []
    for row in rows:
        attacks += [name for name in row["accuracy"] if name not in attacks]
    return attacks


def figure(row: dict[str, Any], metric: str) -> float | None:
    """One accuracy of a row: an attack's (or clean), or ``worst_case``."""
    if metric == "worst_case":
        value = row["worst_case_accuracy"]
    else:
        value = row["accuracy"].get(metric)
    return None if value is None else float(value)
