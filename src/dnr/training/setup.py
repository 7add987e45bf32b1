"""Building what a run trains: the model (optionally from another run), optimizer, method.

:func:`build_training_parts` is the one build order (device, memory format, optimizer, masks,
weights from another run) that the loop, the throughput benchmark and the tests share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dnr.checkpoints import load_checkpoint
from dnr.config import Config, ConfigError
from dnr.data import DatasetSplits
from dnr.modelfile import read_model_meta, read_model_state
from dnr.models import create_model, init_weights
from dnr.registry import DATASETS
from dnr.rundir import ArtifactError, RunDir
from dnr.seeding import derive_seed
from dnr.sparsity import SparsityMethod, build_sparsity
from dnr.training.optim import build_optimizer

__all__ = [
    "TrainingParts",
    "build_optimizer",
    "build_training_parts",
    "check_init_from",
    "init_masks_from",
    "load_init_weights",
    "model_for",
    "model_meta",
]


def model_for(cfg: Config, data: DatasetSplits) -> nn.Module:
    """The configured architecture sized for the dataset (classes, image size, statistics)."""
    meta = data.meta
    try:
        model = create_model(
            cfg.model.name,
            num_classes=meta.num_classes,
            input_size=meta.image_size,
            width=cfg.model.width,
            mean=meta.mean,
            std=meta.std,
            **cfg.model.kwargs,
        )
    except ValueError as err:  # e.g. images of a size the architectures are not defined for
        raise ConfigError(
            f"model.name={cfg.model.name} on data.name={cfg.data.name}: {err}"
        ) from None
    return init_weights(model, cfg.model.init)


@dataclass
class TrainingParts:
    """What a run trains: the model, its optimizer, and the sparsity method over both."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    method: SparsityMethod


def build_training_parts(
    cfg: Config,
    model: nn.Module,
    device: torch.device | str = "cpu",
    *,
    masks_seed: int | None = None,
    init_from: str | Path | None = None,
) -> TrainingParts:
    """The optimizer and sparsity method over a freshly initialised ``model``, in run order.

    ``model`` goes to ``device`` (and channels-last memory) before the optimizer and the
    masks take its parameters; the masks draw from a generator seeded with ``masks_seed``
    (default: the run's, ``derive_seed(train.seed, "masks")``). ``init_from`` (a finished
    run) gives its weights before the masks are drawn, or with ``train.init_masks`` its
    weights and masks after (its weights are zero outside its masks).
    """
    t = cfg.train
    if init_from and not t.init_masks:
        load_init_weights(model, init_from)  # the method's initial masks then apply to them
    model.to(device)
    if t.channels_last:  # before the optimizer and masks take the parameters
        # torch < 2.14's hints lack Module.to(memory_format=...); newer ones have it
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload, unused-ignore]
    optimizer = build_optimizer(cfg, model)
    seed = derive_seed(t.seed, "masks") if masks_seed is None else masks_seed
    method = build_sparsity(cfg, model, optimizer, torch.Generator().manual_seed(seed))
    if init_from and t.init_masks:
        load_init_weights(model, init_from)
        init_masks_from(method, init_from)
    return TrainingParts(model, optimizer, method)


def check_init_from(source: str | Path) -> None:
    """``ConfigError`` unless ``source`` holds a finished run (its model files)."""
    run = RunDir(Path(source))
    if not (run.model_weights.is_file() and run.model_meta.is_file()):
        raise ConfigError(
            f"train.init_from={source}: not a finished run (no {run.model_weights.name} "
            f"and {run.model_meta.name} there)"
        )


def load_init_weights(model: nn.Module, source: str | Path) -> None:
    """Start from the final weights of the run in ``source`` (``train.init_from``).

    The architectures must agree exactly (name, classes, input size, width, extras).
    """
    run = RunDir(Path(source))
    where = f"train.init_from={source}"
    try:
        meta = read_model_meta(run.path)
        arch = meta["architecture"]
        state = read_model_state(run.path, meta)  # a run, or a sparse/compact export
    except Exception as err:  # ArtifactError, OSError, a damaged safetensors file
        raise ConfigError(f"{where}: not a finished run ({err})") from None
    mine = getattr(model, "arch_config", {})
    differ = [key for key in sorted(set(arch) | set(mine)) if arch.get(key) != mine.get(key)]
    if differ:
        raise ConfigError(
            f"{where}: that run's architecture differs in {', '.join(differ)} "
            f"({', '.join(f'{k}={arch.get(k)!r} there, {mine.get(k)!r} here' for k in differ[:3])})"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # same architecture description, different tensors
        raise ConfigError(f"{where}: its weights do not fit this model: {err}") from None


def init_masks_from(method: SparsityMethod, source: str | Path) -> None:
    """Take the masks of the run in ``source`` (its selected epoch) for ``method``."""
    where = f"train.init_from={source}"
    try:
        best = load_checkpoint(RunDir(Path(source)).best_checkpoint)
    except ArtifactError as err:
        raise ConfigError(f"{where} with train.init_masks: {err}") from None
    state = best.get("sparsity", best.get("masking"))  # checkpoint format 2, or 1
    if not isinstance(state, Mapping) or "masks" not in state:
        raise ConfigError(
            f"{where}: that run has no masks (a dense run?); "
            "set train.init_masks=false to take only its weights"
        )
    try:
        method.adopt_masks(state)
    except ValueError as err:
        raise ConfigError(f"{where}: its masks do not fit this run: {err}") from None


def model_meta(
    cfg: Config, data: DatasetSplits, method: SparsityMethod, extra: dict[str, Any]
) -> dict[str, Any]:
    """What ``model.json`` records besides the architecture."""
    return {
        "classes": data.meta.classes,
        "dataset": {
            # a dataset handed over from Python (dnr.data.from_datasets) has no reader:
            # its own name, so that `dnr eval RUN` asks for data.* instead of reading another
            "name": cfg.data.name if data.meta.name in DATASETS else data.meta.name,
            "root": cfg.data.root,
            "train": cfg.data.train,
            "test": cfg.data.test,
            "image_size": cfg.data.image_size,  # folder: dnr eval RUN resizes the same way
        },
        "sparsity": {"method": method.name, "mode": method.granularity, **method.stats()},
        "training": {
            "loss": cfg.train.loss,
            "beta": cfg.train.beta,
            "trades_beta": cfg.train.trades_beta,
            "mart_beta": cfg.train.mart_beta,
            "optimizer": cfg.train.optimizer,
            "epochs": cfg.train.epochs,
            "init_from": cfg.train.init_from,
            "attack": {
                "eps": cfg.attack.eps,
                "step_size": cfg.attack.step_size,
                "steps": cfg.attack.steps,
                "random_start": cfg.attack.random_start,
                "train_mode": cfg.attack.train_mode,
                "replays": cfg.attack.replays,
                "fgsm_step": cfg.attack.fgsm_step,
            },
        },
        **extra,
    }
