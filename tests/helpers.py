"""What several test files need: a tiny run's overrides, a quiet ``train``, a run's records.

Kept apart from conftest.py (fixtures only) so that a test imports a helper by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from dnr.rundir import RunDir

# Keyword arguments of ``train`` for a test: no progress bar, no log lines.
QUIET: dict[str, Any] = {"show_progress": False, "log": lambda _msg: None}

# The reference DNR run (keywords of tiny_overrides): 10 % density, full redistribution,
# 3 epochs. conftest's session fixture ``reference_dnr_run`` trains it once per session.
REFERENCE_DNR: dict[str, object] = {
    "sparsity__method": "dnr",
    "sparsity__density": 0.1,
    "sparsity__redistribution": 1.0,
}

# The record fields that measure time: they differ between two runs of the same bits.
TIMING_KEYS = ("wall_seconds", "train_seconds", "images_per_sec")


def tiny_overrides(**extra: object) -> list[str]:
    """A run small enough for a unit test: tiny VGG16 on a digits subset, 2-step PGD.

    ``extra`` adds or replaces keys, written with ``__`` for the dot (``train__epochs=1``).
    """
    values: dict[str, object] = {
        "data.name": "digits",
        "data.subset": 192,
        "data.val_size": 64,
        "model.name": "vgg16",
        "model.width": 0.0625,
        "attack.steps": 2,
        "attack.step_size": 0.02,
        "train.epochs": 3,
        "train.batch_size": 32,
        "train.lr": 0.05,
        "train.schedule": "cosine",
        "train.device": "cpu",
        "eval.subset": 64,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's per-epoch records, as ``metrics.jsonl`` holds them."""
    lines = RunDir(Path(run_dir)).metrics.read_text().splitlines()
    return [json.loads(line) for line in lines]


def strip_timing(records: Iterable[dict[str, Any]], *extra: str) -> list[dict[str, Any]]:
    """The records without their timings (and the ``extra`` keys): what must match bitwise."""
    drop = {*TIMING_KEYS, *extra}
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def assert_same_weights(a: str | Path, b: str | Path) -> None:
    """The two runs' deployed weights are the same bits, tensor by tensor."""
    wa = load_file(str(RunDir(Path(a)).model_weights))
    wb = load_file(str(RunDir(Path(b)).model_weights))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
