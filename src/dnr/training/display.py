"""What a training run shows: the epoch's progress bar, and the console line of each record.

The run's log receives structured records (:class:`dnr.training.loggers.Event`); the text a
console shows for one is :func:`event_line`, so the CLI prints what it always printed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["EpochBar", "epoch_line", "event_line", "percent"]


class EpochBar:
    """The epoch's tqdm bar (when shown): loss, LR and images/s every 10 batches.

    Reading the loss is a host synchronisation, so figures are shown only every 10
    batches (and after the last), and never when the bar is off.
    """

    def __init__(
        self, epoch: int, epochs: int, start: int, steps: int, batch_size: int, show: bool
    ) -> None:
        self.start, self.steps, self.batch_size, self.show = start, steps, batch_size, show
        self.started = time.perf_counter()
        self.bar = tqdm(
            total=steps,
            initial=start,
            desc=f"epoch {epoch + 1}/{epochs}",
            disable=not show,
            leave=False,
            dynamic_ncols=True,
        )

    def advance(self, batch: int) -> bool:
        """Count ``batch`` as done; whether its figures are due for display."""
        self.bar.update(1)
        return self.show and (batch % 10 == 0 or batch == self.steps - 1)

    def figures(self, batch: int, loss: Tensor, lr: float) -> None:
        """Show the loss (a host sync), the LR and images/s since the epoch (re)started."""
        rate = (batch + 1 - self.start) * self.batch_size / (time.perf_counter() - self.started)
        self.bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4f}", img_s=f"{rate:.0f}")

    def close(self) -> None:
        self.bar.close()


def percent(value: Any) -> str:
    """An accuracy as a percentage, or ``-`` where there is none."""
    return "-" if value is None else f"{100 * value:.1f}%"


def event_line(event: Mapping[str, Any]) -> str:
    """The console line of a record of the run's log: an epoch's figures, else its text."""
    if event.get("kind") == "epoch":
        return epoch_line(event, event["epochs"])
    return str(event.get("text", ""))


def epoch_line(record: Mapping[str, Any], epochs: int) -> str:
    """The one line an epoch logs: its losses and accuracies, density and speed."""
    parts = [
        f"epoch {record['epoch']}/{epochs}",
        f"loss {record['train_loss']:.3f}",
        f"train clean {percent(record['train_clean_acc'])} adv {percent(record['train_adv_acc'])}",
    ]
    if "val_pgd_acc" in record:
        parts.append(
            f"val clean {percent(record['val_clean_acc'])} pgd {percent(record['val_pgd_acc'])}"
        )
    if "density" in record:
        parts.append(f"density {record['density']:.4f}")
    parts.append(f"{record['images_per_sec']:.0f} img/s")
    return " | ".join(parts)
