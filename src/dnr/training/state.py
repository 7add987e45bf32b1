"""Training progress as one object with an explicit ``state_dict`` (torch-optimizer style)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """Counters and the best-so-far selection; ``history`` is rebuilt from metrics.jsonl.

    ``epochs_done`` is the number of finished epochs, so a resumed run starts at epoch
    index ``epochs_done``. ``best_val`` is the validation PGD accuracy of ``best_epoch``
    (1-based; -1 before any selection).
    """

    epochs_done: int = 0
    step: int = 0
    best_val: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)

    def select(self, value: float | None, epoch: int) -> bool:
        """Record ``value`` for 1-based ``epoch``; True if it is the new best."""
        if value is None or value <= self.best_val:
            return False
        self.best_val, self.best_epoch = value, epoch
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "epochs_done": self.epochs_done,
            "step": self.step,
            "best_val_pgd": self.best_val,
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epochs_done = int(state["epochs_done"])
        self.step = int(state["step"])
        self.best_val = float(state["best_val_pgd"])
        self.best_epoch = int(state["best_epoch"])
