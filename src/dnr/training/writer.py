"""Every write a training run makes into its run directory, behind one object.

Reads happen on every process; writes only where ``enabled`` (rank 0 under torchrun), so
the loop never asks which process it is. Every write is atomic (``dnr.fileio``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dnr.artifacts import RunDir, load_checkpoint, save_checkpoint, save_model
from dnr.config import Config, ConfigError, save_config
from dnr.fileio import append_jsonl, atomic_write_text, read_jsonl

__all__ = ["CHECKPOINT_VERSION", "RunExistsError", "RunWriter"]

#: 2: sparsity state under "sparsity", counters under "state" (1: flat, "masking").
CHECKPOINT_VERSION = 2


class RunExistsError(ConfigError):
    """The output directory already holds a run and --resume was not given."""


class RunWriter:
    """The run directory of one training run: guards, config, metrics, checkpoints, model."""

    def __init__(self, path: str | Path, *, enabled: bool = True) -> None:
        self.run = RunDir(Path(path))
        self.enabled = enabled

    @property
    def path(self) -> Path:
        return self.run.path

    def open(self, cfg: Config, resume: bool) -> dict[str, Any] | None:
        """The resume checkpoint, or None for a fresh run; never overwrite a run silently."""
        run = self.run
        has_run = run.last_checkpoint.exists() or run.model_weights.exists()
        if not resume:
            if has_run:
                raise RunExistsError(
                    f"{run.path} already holds a run; pass --resume to continue it "
                    "or choose another --out"
                )
            return None
        if not run.last_checkpoint.exists():
            raise ConfigError(f"--resume: no checkpoint to resume in {run.checkpoints}")
        state = load_checkpoint(run.last_checkpoint)
        saved = state.get("config")
        if saved != cfg.to_dict():
            raise ConfigError(
                f"--resume: the configuration differs from the one {run.path} was started "
                f"with ({config_difference(saved, cfg.to_dict())}); see {run.config}"
            )
        if state.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(
                f"--resume: {run.last_checkpoint} was written by another "
                f"version of torch-dnr (checkpoint format {state.get('version')})"
            )
        return state

    def start(self, cfg: Config) -> None:
        """A fresh run: the resolved config, and no metrics from an earlier attempt."""
        if self.enabled:
            self.run.path.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run.config)
            self.run.metrics.unlink(missing_ok=True)

    def history(self, epochs_done: int) -> list[dict[str, Any]]:
        """Metrics of the epochs already done; lines of epochs to be replayed are dropped."""
        kept = [r for r in read_jsonl(self.run.metrics) if r.get("epoch", 0) <= epochs_done]
        if self.enabled:
            atomic_write_text(self.run.metrics, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def append_metrics(self, record: dict[str, Any]) -> None:
        if self.enabled:
            append_jsonl(self.run.metrics, record)

    def save_last(self, state: dict[str, Any]) -> None:
        if self.enabled:
            save_checkpoint(self.run.last_checkpoint, {"version": CHECKPOINT_VERSION, **state})

    def save_best(self, state: dict[str, Any]) -> None:
        if self.enabled:
            save_checkpoint(self.run.best_checkpoint, {"version": CHECKPOINT_VERSION, **state})

    def load_best(self, map_location: torch.device | str = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.run.best_checkpoint, map_location=map_location)

    def save_model(self, model: nn.Module, meta: dict[str, Any]) -> None:
        if self.enabled:
            save_model(self.run.path, model, meta)


def config_difference(saved: Any, current: dict[str, Any]) -> str:
    """The keys that differ, e.g. for a run started by a version without some options."""
    if not isinstance(saved, dict):
        return "no configuration in the checkpoint"
    keys = []
    for section in sorted(set(saved) | set(current)):
        a, b = saved.get(section) or {}, current.get(section) or {}
        for name in sorted(set(a) | set(b)):
            if name not in a:
                keys.append(f"{section}.{name} is new since that run started")
            elif a.get(name) != b.get(name):
                keys.append(f"{section}.{name}")
    return "differs in " + ", ".join(keys[:6]) + (" ..." if len(keys) > 6 else "")
