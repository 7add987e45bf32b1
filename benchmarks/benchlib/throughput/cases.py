"""What the throughput benchmark times: one ``Case`` per pipeline, method and training mode.

Every case of a model starts from the same weights and data, so the ratios between rows
measure the pipelines, not their inputs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from benchlib.machine import now, sync
from benchlib.reference_loop import ReferenceTrainer, make_loader, reference_masks
from dnr.config import Config, load_config
from dnr.data.loader import BatchLoader, Split
from dnr.models import create_model, init_weights
from dnr.sparsity import Progress
from dnr.training import build_optimizer, build_training_parts, train_step
from dnr.training.step import StepState, accumulate, train_mode

METHODS: dict[str, list[str]] = {
    "dense": ["sparsity.method=dense"],
    "dnr": ["sparsity.method=dnr", "sparsity.density=0.05"],
    "dnr_channel": ["sparsity.method=dnr", "sparsity.granularity=channel", "sparsity.density=0.1"],
}
METHOD_LABELS = {
    "dense": "dense AT",
    "dnr": "DNR irregular d=0.05",
    "dnr_channel": "DNR channel d=0.1",
}

Batch = tuple[torch.Tensor, torch.Tensor]


def mode_overrides(mode: str, replays: int) -> list[str]:
    """Config overrides of a training mode (``attack.train_mode``)."""
    if mode == "free":
        return ["attack.train_mode=free", f"attack.replays={replays}"]
    return [f"attack.train_mode={mode}"]


def optional_overrides(args: argparse.Namespace) -> list[str]:
    """Overrides for --bf16/--channels-last/--compile."""
    flags = ("bf16", "channels_last", "compile")
    return [f"train.{flag}=true" for flag in flags if getattr(args, flag)]


@dataclass
class Case:
    """One row: a pipeline (ours or the reference) for one method and mode of one model."""

    pipeline: str  # "ours" | "reference"
    method: str
    mode: str
    cfg: Config
    model: nn.Module
    run: Callable[[int, int], float]  # (batches, epoch) -> seconds
    next_batch: Callable[[], Batch]  # profiling: data ...
    train_one: Callable[[torch.Tensor, torch.Tensor], object]  # ... and one step on it
    hooks: dict[str, Any] = field(default_factory=dict)  # what the phase timer wraps
    per_image: list[float] = field(default_factory=list)
    slices: list[tuple[float, float]] = field(default_factory=list)

    @property
    def key(self) -> str:
        """``pipeline/method/mode``: the row's name in the profile and the progress lines."""
        return f"{self.pipeline}/{self.method}/{self.mode}"


def endless(epoch: Callable[[int], Iterator[Batch]]) -> Callable[[], Batch]:
    """``next`` over consecutive epochs (for profiling steps outside the timed slices)."""
    number = 0
    it = epoch(0)

    def next_batch() -> Batch:
        nonlocal number, it
        try:
            return next(it)
        except StopIteration:
            number += 1
            it = epoch(number)
            return next(it)

    return next_batch


def build_model(name: str, width: float, init: str, seed: int) -> nn.Module:
    """The model every case of ``name`` starts from (the same weights for each)."""
    torch.manual_seed(seed)  # every case of a model starts from the same weights
    model = create_model(name, num_classes=10, width=width)  # CIFAR mean/std by default
    return init_weights(model, init)


def ours_case(
    name: str,
    method: str,
    mode: str,
    overrides: list[str],
    split: Split,
    batch: int,
    device: torch.device,
    seed: int,
) -> Case:
    """Our pipeline as the training loop sets it up (dnr.training.build_training_parts)."""
    cfg = load_config(None, overrides)
    t = cfg.train
    model = build_model(name, cfg.model.width, cfg.model.init, seed)
    parts = build_training_parts(cfg, model, device, masks_seed=seed)
    model, optimizer, sparsity = parts.model, parts.optimizer, parts.method
    loader = BatchLoader(split, batch, device, shuffle=True, augment=True, seed=seed)
    if t.compile:
        model.compile()
    steps = train_mode(cfg).replays(cfg)
    # rewiring happens at epoch ends (rewire_every=0), outside the measured steps
    progress = Progress(step=0, epoch=0, epochs=1, steps_per_epoch=len(loader) * steps)
    gen = torch.Generator(device=device).manual_seed(seed)
    state = StepState()  # free training's perturbation, carried between steps
    sums = torch.zeros(4, device=device)
    model.train()

    def one(x: torch.Tensor, y: torch.Tensor) -> None:
        for group in optimizer.param_groups:  # the loop sets the LR every step
            group["lr"] = t.lr
        out = train_step(model, optimizer, x, y, cfg, sparsity, progress, gen, state=state)
        accumulate(sums, out, y)  # the loop's on-device sums (no host sync per step)

    def run(batches: int, epoch: int) -> float:
        start = now(device)
        it = loader.epoch(epoch)
        for _ in range(batches):
            one(*next(it))
        sums.tolist()  # the loop reads its sums once per epoch: a sync, so timing is honest
        return time.perf_counter() - start

    hooks = {"optimizer": optimizer, "method": sparsity}
    batches = endless(lambda epoch: loader.epoch(100_000 + epoch))
    return Case("ours", method, mode, cfg, model, run, batches, one, hooks)


def reference_case(
    name: str,
    method: str,
    overrides: list[str],
    x: np.ndarray,
    y: np.ndarray,
    batch: int,
    device: torch.device,
    seed: int,
    workers: int,
) -> Case:
    """reference_loop.py on the same model (weights), data, batch and attack."""
    cfg = load_config(None, overrides)
    a = cfg.attack
    model = build_model(name, cfg.model.width, cfg.model.init, seed).to(device)
    optimizer = build_optimizer(cfg, model)  # the same SGD settings
    masks = None
    if method != "dense":
        masks = reference_masks(model, cfg.sparsity.density, torch.Generator().manual_seed(seed))
    trainer = ReferenceTrainer(
        model,
        optimizer,
        device,
        masks=masks,
        eps=a.eps,
        step_size=a.step_size,
        steps=a.steps,
        beta=cfg.train.beta,
    )
    loader = make_loader(x, y, batch, workers, pin_memory=device.type == "cuda", seed=seed)

    def run(batches: int, epoch: int) -> float:
        start = now(device)
        it = iter(loader)  # a new epoch: the released code starts its workers here
        for _ in range(batches):
            trainer.step(*next(it))
        sync(device)
        elapsed = time.perf_counter() - start
        del it  # worker shutdown outside the clock
        return elapsed

    hooks = {"optimizer": optimizer, "trainer": trainer}
    batches = endless(lambda _epoch: iter(loader))
    return Case("reference", method, "pgd", cfg, model, run, batches, trainer.step, hooks)
