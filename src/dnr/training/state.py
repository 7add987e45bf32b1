"""Training progress as one object with an explicit ``state_dict`` (torch-optimizer style)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """Counters and the best-so-far selection; ``history`` is rebuilt from metrics.jsonl.

    ``epochs_done`` is the number of finished epochs, so a resumed run starts at epoch
    index ``epochs_done``; ``batch`` > 0 says a step-level checkpoint was taken inside that
    epoch after ``batch`` batches, with the epoch's partial ``sums`` (loss*n, clean correct,
    adversarial correct, n), its training ``seconds`` so far and the attack generator's
    state ``attack_rng``. ``best_val`` is the validation PGD accuracy of ``best_epoch``
    (1-based; -1 before any selection).
    """

    epochs_done: int = 0
    step: int = 0
    best_val: float = -1.0
    best_epoch: int = -1
    batch: int = 0
    sums: list[float] = field(default_factory=lambda: [0.0] * 4)
    seconds: float = 0.0
    attack_rng: Tensor | None = None
    delta: Tensor | None = None  # free training's perturbation, carried between batches
    stopped_at: int = 0  # the epoch after which a collapse stopped the run (0: it did not)
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
            "batch": self.batch,
            "sums": list(self.sums),
            "seconds": self.seconds,
            "attack_rng": self.attack_rng,
            "delta": self.delta,
            "stopped_at": self.stopped_at,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epochs_done = int(state["epochs_done"])
        self.step = int(state["step"])
        self.best_val = float(state["best_val_pgd"])
        self.best_epoch = int(state["best_epoch"])
        # (absent from checkpoints of versions without step-level checkpoints)
        self.batch = int(state.get("batch", 0))
        self.sums = [float(v) for v in state.get("sums", [0.0] * 4)]
        self.seconds = float(state.get("seconds", 0.0))
        self.attack_rng = state.get("attack_rng")
        self.delta = state.get("delta")
        self.stopped_at = int(state.get("stopped_at", 0))
