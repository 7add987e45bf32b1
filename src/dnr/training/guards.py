"""What stops a training run cleanly: a signal (pre-emption, Ctrl-C) or a non-finite loss.

Both are noticed without a host synchronisation in the training step: a signal only sets a
flag the loop reads between steps; a non-finite loss is recorded on the device
(:class:`FiniteWatch`) and read where the loop synchronises anyway (progress display,
checkpoints, the end of the epoch). Neither ever lets a bad state reach a checkpoint.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import Tensor

from dnr.distributed import Distributed
from dnr.errors import ConfigError

__all__ = ["NonFiniteLossError", "StopSignals", "TrainingStopped", "FiniteWatch"]


class TrainingStopped(KeyboardInterrupt):
    """SIGINT / SIGTERM arrived; the state was saved and the run can be resumed."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @classmethod
    def saved_at(cls, signum: int | None, where: str, run_dir: Path) -> TrainingStopped:
        """The state at ``where`` is saved in ``run_dir``: stop, saying how to continue."""
        signum = signum or signal.SIGTERM
        return cls(
            f"stopped by {signal.Signals(signum).name} at {where}; the state is saved. "
            f"Continue with: dnr train --resume --out {run_dir} "
            "(under torchrun, the same launcher with --resume)",
            signum,
        )


class NonFiniteLossError(ConfigError):
    """The loss became NaN or infinite; the last saved state is from before it."""


class StopSignals:
    """SIGINT and SIGTERM set :attr:`signum` instead of killing the run mid-write.

    The loop saves its state at the next step boundary and raises
    :class:`TrainingStopped`. A second SIGINT interrupts at once (KeyboardInterrupt), for a
    user who does not want to wait for the step. Outside the main thread (where Python
    cannot install handlers) signals keep their default behaviour.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator[StopSignals]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous: dict[int, Any] = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s in self.SIGNALS:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class FiniteWatch:
    """The first batch of an epoch whose loss was not finite, kept on the device."""

    def __init__(self, device: torch.device) -> None:
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, loss: Tensor, batch: int) -> None:
        """Record ``batch`` if ``loss`` is not finite and no earlier batch was (no sync)."""
        fresh = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(fresh, batch, self.first_bad)

    def bad_batch(self) -> int | None:
        """The first bad batch index (a host sync), or None."""
        value = int(self.first_bad)
        return None if value < 0 else value

    def check(self, dist: Distributed, epoch: int, last_checkpoint: Path) -> None:
        """Stop before a non-finite loss's state is saved (every rank, if any rank saw one)."""
        bad = self.bad_batch()
        if dist.agree(bad is not None):
            where = f"batch {bad + 1}" if bad is not None else "a batch of another rank"
            last = last_checkpoint
            kept = f"{last} holds the last good one" if last.exists() else "nothing was saved yet"
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite at epoch {epoch + 1}, {where}; "
                f"the run stopped without saving that state ({kept}). Lower train.lr or raise "
                "train.warmup_epochs and start again (train.init_from can start from a "
                "finished run)"
            )
