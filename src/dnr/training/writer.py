"""Every write a training run makes into its run directory, behind one object.

Reads happen on every process; writes only where ``enabled`` (rank 0 under torchrun), so
the loop never asks which process it is. Every write is atomic (``dnr.fileio``), and every
checkpoint is checksummed (``dnr.checkpoints``). ``save_last`` keeps the state before it as
``checkpoints/previous.pt``: a resume whose ``last.pt`` is damaged continues from that one,
with a warning.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dnr.checkpoints import load_checkpoint, save_checkpoint
from dnr.config import Config, ConfigError, as_current, read_saved_config, save_config
from dnr.fileio import append_jsonl, atomic_write_text, read_jsonl, temp_files
from dnr.modelfile import save_model
from dnr.rundir import ArtifactError, RunDir

__all__ = ["CHECKPOINT_VERSION", "RunExistsError", "RunWriter"]

#: 2: sparsity state under "sparsity", counters under "state" (1: flat, "masking").
CHECKPOINT_VERSION = 2


class RunExistsError(ConfigError):
    """The output directory already holds a run and --resume was not given."""


class RunWriter:
    """The run directory of one training run: guards, config, metrics, checkpoints, model.

    ``log`` receives warnings (a damaged ``last.pt`` resumed from ``previous.pt``); they are
    also kept in :attr:`warnings`. Without ``log``, the writing process prints them to
    stderr.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        enabled: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.run = RunDir(Path(path))
        self.enabled = enabled
        self.warnings: list[str] = []
        self._log = log
        # last.pt was found damaged: the next save must not rotate it into previous.pt
        self._last_damaged = False

    @property
    def path(self) -> Path:
        return self.run.path

    def has_model(self) -> bool:
        return self.run.model_weights.exists()

    def has_run(self) -> bool:
        """Whether the directory holds a run's checkpoints or model (not just a config)."""
        run = self.run
        return any(
            p.exists() for p in (run.last_checkpoint, run.previous_checkpoint, run.model_weights)
        )

    def open(self, cfg: Config, resume: bool) -> dict[str, Any] | None:
        """The resume checkpoint, or None for a fresh run; never overwrite a run silently."""
        run = self.run
        if run.path.exists() and not run.path.is_dir():
            raise ConfigError(f"--out {run.path} is a file, not a run directory")
        if not resume:
            # The writing rank decides: under torchrun another rank could look before rank 0
            # has cleared an earlier run for --overwrite (no barrier comes first)
            if self.enabled and self.has_run():
                raise RunExistsError(
                    f"{run.path} already holds a run; pass --resume to continue it, "
                    "--overwrite to replace it, or choose another --out"
                )
            return None
        self._remove_temp_files()
        if not self.has_run():  # killed before its first checkpoint, or never started
            self._check_saved_config(cfg)
            self._say(f"--resume: {run.path} holds no checkpoint yet: starting the run afresh")
            return None
        state, source = self._resume_checkpoint()
        saved = as_current(state.get("config"))
        if saved != cfg.to_dict():
            raise ConfigError(
                f"--resume: the configuration differs from the one {run.path} was started "
                f"with ({config_difference(saved, cfg.to_dict())}); see {run.config}"
            )
        if state.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(
                f"--resume: {source} was written by another "
                f"version of torch-dnr (checkpoint format {state.get('version')})"
            )
        return state

    def _check_saved_config(self, cfg: Config) -> None:
        """A ``config.yaml`` left by an attempt that saved no checkpoint must be ``cfg``'s:
        ``--resume`` continues that run, not another one."""
        if not self.run.config.is_file():
            return
        try:
            saved = read_saved_config(self.run.config)
        except OSError as err:
            raise ConfigError(f"--resume: cannot read {self.run.config}: {err}") from None
        if saved != cfg.to_dict():
            raise ConfigError(
                f"--resume: the configuration differs from the one {self.run.path} was started "
                f"with ({config_difference(saved, cfg.to_dict())}); see {self.run.config}"
            )

    def _remove_temp_files(self) -> None:
        """Temp files of writes a kill cut short (a checkpoint's can be as large as it):
        a repeated ``--resume`` must not pile them up. The writing rank only."""
        if self.enabled:
            for path in self.run.artifacts():
                for leftover in temp_files(path):
                    leftover.unlink(missing_ok=True)

    def _resume_checkpoint(self) -> tuple[dict[str, Any], Path]:
        """``last.pt``, else (damaged or missing) ``previous.pt`` with a warning."""
        last, previous = self.run.last_checkpoint, self.run.previous_checkpoint
        if not last.exists() and not previous.exists():
            done = " (its model is there: the training is done)" if self.has_model() else ""
            raise ConfigError(f"--resume: no checkpoint to resume in {self.run.checkpoints}{done}")
        problem = f"{last} is missing"
        if last.exists():
            try:
                return load_checkpoint(last), last
            except ArtifactError as err:
                if not previous.exists():
                    raise ArtifactError(
                        f"{err}; no previous checkpoint to fall back to: start again "
                        "(dnr train --overwrite) or restore the file"
                    ) from None
                problem = str(err)
        try:
            state = load_checkpoint(previous)
        except ArtifactError as err:
            raise ArtifactError(f"{problem}; the fallback is unusable too: {err}") from None
        self._last_damaged = True
        epochs = state.get("state", {}).get("epochs_done") if isinstance(state, dict) else None
        at = f" (after epoch {epochs})" if isinstance(epochs, int) else ""
        self._warn(
            f"{problem}; resuming from the previous checkpoint {previous}{at} instead: "
            "the steps after it are trained again"
        )
        return state, previous

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        self._say(f"warning: {message}")

    def _say(self, line: str) -> None:
        """One line on the run's log, else on stderr (the writing rank only)."""
        if self._log is not None:
            self._log(line)
        elif self.enabled:
            print(line, file=sys.stderr, flush=True)

    def clear(self) -> list[Path]:
        """Delete an earlier run's files (``dnr train --overwrite``) and return them.

        Only the files :meth:`RunDir.artifacts` names (and leftovers of their interrupted
        atomic writes) go; anything else in the directory stays. Checkpoints and weights go
        last, so an interrupted clear still counts as a run.
        """
        if not self.enabled:
            return []
        removed = []
        for path in self.run.artifacts():
            for leftover in temp_files(path):
                leftover.unlink(missing_ok=True)
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(path)
        for folder in (self.run.checkpoints, self.run.tensorboard):
            try:
                folder.rmdir()  # only if nothing else is in it
            except OSError:
                pass
        return removed

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
        """The resume state; the one it replaces becomes ``previous.pt`` (unless damaged)."""
        if self.enabled:
            save_checkpoint(
                self.run.last_checkpoint,
                {"version": CHECKPOINT_VERSION, **state},
                previous=None if self._last_damaged else self.run.previous_checkpoint,
            )
            self._last_damaged = False

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
