"""What the epoch loop works on, assembled once: fresh, from ``train.init_from``, or resumed.

:func:`open_run` checks what can fail fast, loads the data, builds the training parts
(``setup.build_training_parts``), restores a resume checkpoint into them, and wraps the
model for torchrun; :class:`TrainingRun` then also says what its checkpoints hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dnr.config import Config, ConfigError
from dnr.data import BatchLoader, DatasetSplits, SourceData, as_splits, make_loader
from dnr.devices import cpu_fallback_warning, describe_device
from dnr.distributed import Distributed, tensor_checksum
from dnr.seeding import derive_seed
from dnr.sparsity import SparsityMethod, Stage
from dnr.training.guards import StopSignals
from dnr.training.schedule import schedule_warning
from dnr.training.setup import (
    TrainingParts,
    build_training_parts,
    check_init_from,
    model_for,
)
from dnr.training.state import TrainState
from dnr.training.writer import RunWriter

__all__ = ["TrainingRun", "open_run", "stage_plan"]


@dataclass
class TrainingRun:
    """What the epoch loop works on, built once by :func:`open_run`."""

    cfg: Config
    data: DatasetSplits
    device: torch.device
    dist: Distributed
    model: nn.Module
    trained: nn.Module  # what the training forward passes go through: DDP(model) or model
    optimizer: torch.optim.Optimizer
    method: SparsityMethod
    plan: list[tuple[Stage, int]]  # (stage, its first epoch) for every epoch
    loader: BatchLoader
    state: TrainState
    writer: RunWriter
    stop: StopSignals = field(default_factory=StopSignals)

    def resume_state(self) -> dict[str, Any]:
        """What ``last.pt`` holds: enough to go on bitwise as if never stopped."""
        return {
            "config": self.cfg.to_dict(),
            "state": self.state.state_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sparsity": self.method.state_dict(),
            "rng_cpu": torch.get_rng_state(),
        }

    def best_state(self, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        """What ``best.pt`` holds: the selected epoch's model and masks, and its figures."""
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "sparsity": self.method.state_dict(),
            "val_clean_acc": record.get("val_clean_acc"),
            "val_pgd_acc": record.get("val_pgd_acc"),
        }

    def rank_checksum(self) -> torch.Tensor:
        """Checksums of every weight and every tensor of the method's state (its masks)."""
        return tensor_checksum([*self.model.parameters(), *_tensors(self.method.state_dict())])


def stage_plan(stages: list[Stage], epochs: int) -> list[tuple[Stage, int]]:
    """``(stage, first epoch of the stage)`` for every epoch of the run."""
    if sum(s.epochs for s in stages) != epochs or any(s.epochs < 1 for s in stages):
        raise ConfigError(
            f"the sparsity method's stages ({', '.join(f'{s.name}: {s.epochs}' for s in stages)}"
            f" epochs) must each be >= 1 and add up to train.epochs={epochs}"
        )
    plan, start = [], 0
    for stage in stages:
        plan += [(stage, start)] * stage.epochs
        start += stage.epochs
    return plan


def open_run(
    cfg: Config,
    writer: RunWriter,
    dist: Distributed,
    device: torch.device,
    resume: bool,
    data: DatasetSplits | SourceData | None,
    log: Callable[[str], None],
) -> TrainingRun:
    """Model, optimizer, method and state: fresh, from ``train.init_from``, or resumed."""
    resume_state = writer.open(cfg, resume)
    if resume and dist.agree(resume_state is None) and dist.agree(resume_state is not None):
        raise ConfigError(
            f"--resume: some ranks see no checkpoint in {writer.path}: the run directory must "
            "be on a file system every rank sees"
        )
    t = cfg.train
    source = t.init_from if resume_state is None else None
    _check_and_describe(cfg, dist, device, log)
    if source:
        check_init_from(source)  # before loading data: a typo fails in a second
    torch.manual_seed(derive_seed(t.seed, "init"))
    data = as_splits(data, cfg.data)  # read per cfg.data, or split the dataset given
    if len(data.train.y) == 0:
        raise ConfigError(f"data: no training images in {cfg.data.name} (data.train is empty?)")
    parts = build_training_parts(cfg, model_for(cfg, data), device, init_from=source)
    plan = stage_plan(parts.method.stages(), t.epochs)  # before anything is written
    state = TrainState()
    if resume_state is not None:
        _restore(cfg, resume_state, parts, state, writer, log)
    else:
        writer.start(cfg)
        for line in (schedule_warning(cfg), _no_validation_note(data)):
            if line:
                log(line)
    loader = make_loader(
        data.train,
        t.batch_size,
        device,
        resident=cfg.data.resident,
        shuffle=True,
        augment=cfg.data.augment,
        seed=t.seed,
        rank=dist.rank,
        world=dist.world,
    )
    if t.compile:  # in place: state dicts, masks and the attack see the same module
        parts.model.compile()
    trained = dist.wrap(parts.model, device, sync_bn=t.sync_bn)
    model, optimizer, method = parts.model, parts.optimizer, parts.method
    return TrainingRun(
        cfg, data, device, dist, model, trained, optimizer, method, plan, loader, state, writer
    )


def _check_and_describe(
    cfg: Config, dist: Distributed, device: torch.device, log: Callable[[str], None]
) -> None:
    """The global batch must split over the processes; say where the run trains."""
    t = cfg.train
    if t.batch_size % dist.world:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is the global batch: it must be a multiple of "
            f"the {dist.world} torchrun processes"
        )
    for line in (describe_device(device), cpu_fallback_warning(t.device, device)):
        if line:
            log(line)
    if dist.enabled:
        log(
            f"torchrun: {dist.world} processes ({dist.backend}), "
            f"{t.batch_size // dist.world} images per process and step"
        )


def _restore(
    cfg: Config,
    saved: dict[str, Any],
    parts: TrainingParts,
    state: TrainState,
    writer: RunWriter,
    log: Callable[[str], None],
) -> None:
    """Load a resume checkpoint into the parts, the state and the global RNG."""
    parts.model.load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.method.load_state_dict(saved["sparsity"])
    state.load_state_dict(saved["state"])
    torch.set_rng_state(saved["rng_cpu"])
    state.history = writer.history(state.epochs_done)
    epochs = cfg.train.epochs
    within = f", after batch {state.batch}" if state.batch else ""
    log(
        f"resuming {writer.path} at epoch {state.epochs_done + 1}/{epochs}{within}"
        if state.epochs_done < epochs
        else f"{writer.path}: all {epochs} epochs were done; writing the final artifacts"
    )


def _no_validation_note(data: DatasetSplits) -> str | None:
    """Selection falls back to the last epoch: say so once, at the start."""
    if len(data.val.y) == 0:
        return "note: no validation split (data.val_size=0); the last epoch is kept as best"
    return None


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a nested state dict, in a fixed order (sorted keys)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for key in sorted(value, key=str) for t in _tensors(value[key])]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    return []
