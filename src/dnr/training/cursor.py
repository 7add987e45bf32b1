"""Where a run stands inside an epoch: the bookkeeping that lets it stop and resume anywhere.

The epoch's step loop asks the cursor for its batches, hands it every step's figures and
asks it whether a step checkpoint is due. The cursor owns what such a checkpoint holds (the
batch reached, the step count, the partial sums, free training's perturbation, the attack
generator's state, the seconds so far) and what a resume restores from it, so an epoch
resumed mid-way ends exactly as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dnr.data import BatchLoader
from dnr.distributed import Distributed
from dnr.errors import ConfigError
from dnr.seeding import derive_seed
from dnr.training.state import TrainState
from dnr.training.step import StepOutput, StepState, accumulate

__all__ = ["EpochCursor", "EpochTotals"]


@dataclass(frozen=True)
class EpochTotals:
    """An epoch's figures summed over every rank, and its training time."""

    loss_sum: float  # loss x n
    clean_sum: float  # clean correct
    adv_sum: float  # adversarial correct
    count: float  # n
    seconds: float  # the epoch's training time, including the part before a resume
    resumed_seconds: float  # the part before the resume


class EpochCursor:
    """One epoch's position: its first batch, its RNG streams, its partial sums, its clock.

    Opening it either seeds the epoch's randomness afresh (from ``(seed, epoch)``, so any
    epoch replays alike) or, when ``state`` was saved mid-epoch, restores the attack
    generator from it (the global RNG was restored with the checkpoint itself).
    """

    def __init__(
        self,
        state: TrainState,
        epoch: int,
        step: int,
        *,
        seed: int,
        every: int,
        steps: int,
        dist: Distributed,
        device: torch.device,
        checkpoint: Path,
    ) -> None:
        self.state, self.epoch, self.every, self.steps, self.dist = state, epoch, every, steps, dist
        self.start = state.batch  # batches of this epoch trained before a resume
        self.step_seen = step  # optimizer steps taken when the last batch began
        # On the training device: random starts need no host-to-device copy per step.
        self.attack_gen = torch.Generator(device=device).manual_seed(
            derive_seed(seed, "attack", epoch)
        )
        # loss*n, clean correct, adv correct, n; a step checkpoint holds the global partial
        # sums, which rank 0 carries on (the ranks' sums are added at the end of the epoch)
        carried = state.sums if dist.is_main else [0.0] * 4
        self.sums = torch.tensor(carried, dtype=torch.float32, device=device)
        if self.start == 0:
            torch.manual_seed(derive_seed(seed, "epoch", epoch))
        elif state.attack_rng is not None:
            self._restore_attack_rng(state.attack_rng, device, checkpoint)
        self.resumed_seconds = state.seconds
        self.started = time.perf_counter()
        # free training's perturbation (checkpoints hold it on the CPU)
        self.step_state = StepState(delta=None if state.delta is None else state.delta.to(device))

    def _restore_attack_rng(self, saved: Tensor, device: torch.device, checkpoint: Path) -> None:
        """A generator state only fits a generator of the device type that saved it."""
        if saved.numel() != self.attack_gen.get_state().numel():
            raise ConfigError(
                f"--resume: {checkpoint} was saved mid-epoch on another kind of device than "
                f"{device.type}; resume on the device type it was trained on (train.device)"
            )
        self.attack_gen.set_state(saved)

    def batches(self, loader: BatchLoader) -> Iterator[tuple[int, tuple[Tensor, Tensor]]]:
        """``(index, batch)`` of the epoch's batches from the first one not yet trained."""
        return enumerate(loader.epoch(self.epoch, self.start), self.start)

    def add(self, out: StepOutput, y: Tensor) -> None:
        """Add a step's figures to the epoch's sums (on the device: no host sync)."""
        accumulate(self.sums, out, y)

    def seconds(self) -> float:
        """Training time of the epoch so far, including the part before a resume."""
        return self.resumed_seconds + time.perf_counter() - self.started

    def save_due(self, batch: int, step: int, stop: bool) -> bool:
        """After ``batch``, ``step`` steps in: whether to save a step checkpoint now.

        On a stop request, or when ``train.checkpoint_every`` steps have passed; never after
        the epoch's last batch (the end of the epoch saves its own).
        """
        due = self.every and step // self.every > self.step_seen // self.every
        self.step_seen = step
        return batch < self.steps - 1 and bool(stop or due)

    def park(self, batches: int, step: int) -> None:
        """Put the position after ``batches`` batches into the run's state, for a checkpoint."""
        state, dist = self.state, self.dist
        state.batch, state.step = batches, step
        partial = dist.all_reduce_(self.sums.clone())
        state.sums = partial.tolist()
        if dist.enabled:  # go on from the split a resume starts from (same rounding)
            self.sums = partial if dist.is_main else torch.zeros_like(self.sums)
        state.delta = self.step_state.delta
        state.seconds = self.seconds()
        state.attack_rng = self.attack_gen.get_state()

    def close(self) -> EpochTotals:
        """The epoch's global figures; the state says "at an epoch boundary" again."""
        self.dist.all_reduce_(self.sums)  # the global batch's figures
        loss_sum, clean_sum, adv_sum, count = self.sums.tolist()  # syncs: the timing is honest
        seconds = self.seconds()
        state = self.state
        state.batch, state.sums, state.seconds, state.attack_rng = 0, [0.0] * 4, 0.0, None
        state.delta = self.step_state.delta
        return EpochTotals(loss_sum, clean_sum, adv_sum, count, seconds, self.resumed_seconds)
