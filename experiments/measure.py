"""What the study measures on one finished run, part by part.

Each part is a pure function of the run directory and the test set (seeded subsets, seeded
attack starts), so a part computed in another session, or on another worker, is the same
number; the runner stores each part in the run's result file as soon as it exists.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dnr.checkpoints import load_checkpoint
from dnr.costs import measure_latency, model_costs
from dnr.devices import resolve_device
from dnr.export.base import export_run
from dnr.modelfile import load_model, read_model_meta
from dnr.robustness.evaluate import evaluate_model
from dnr.rundir import RunDir

__all__ = ["attacks", "costs", "final_model"]

#: the protocols the measured parts run (the paper protocol comes from the run itself)
PGD20, AUTOATTACK = "pgd20", "autoattack"


def attacks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    protocol: str,
    subset: int | None,
    *,
    restarts: int | None = None,
    num_classes: int,
) -> dict[str, Any]:
    """Accuracy under ``protocol`` on a seeded subset (None: all of ``x``): name → accuracy,
    with the images counted and the seconds it took."""
    report = evaluate_model(
        model,
        x,
        y,
        protocol=protocol,
        subset=subset if subset is not None and subset < len(y) else None,
        seed=0,
        device=resolve_device("auto"),
        progress=False,
        sanity=False,
        num_classes=num_classes,
        restarts=restarts,
    )
    return {
        "accuracy": {r.name: r.accuracy for r in report.results},
        "examples": report.num_examples,
        "seconds": report.seconds,
    }


def final_model(run_dir: Path) -> nn.Module:
    """The weights of the last epoch (the run's model file holds the validation-selected
    ones): the model rebuilt from its file, then the last checkpoint's weights."""
    run = RunDir(run_dir)
    model = load_model(run_dir)
    state = load_checkpoint(run.last_checkpoint)["model"]
    model.load_state_dict(state)
    return model.eval()


def costs(run_dir: Path, input_size: int) -> dict[str, Any]:
    """Weights, MACs and CPU latency (batch 1, median of 20, one thread) of what a user
    deploys: the compact export in channel mode (smaller dense layers), else the masked
    model itself (irregular zeros do not speed up dense kernels; its MACs count nonzeros)."""
    meta = read_model_meta(run_dir)
    channel = meta.get("sparsity", {}).get("mode") == "channel"
    with tempfile.TemporaryDirectory() as tmp:
        if channel:
            export_run(run_dir, "compact", Path(tmp) / "compact")
            model = load_model(Path(tmp) / "compact")
        else:
            model = load_model(run_dir)
    counted = model_costs(model, input_size, nonzero_only=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        latency = measure_latency(model, input_size, batch=1, repeats=20)
    finally:
        torch.set_num_threads(threads)
    return {
        "deployed_as": "compact" if channel else "masked dense",
        "weights": counted.params,
        "macs": counted.macs,
        "latency_ms": 1000 * latency,
        "latency_note": "CPU, batch 1, one thread, median of 20 forward passes",
    }
