"""Where a run's records go: the ``log=`` hook's :class:`Event`, and ``train.loggers``.

Everything a training run reports is an :class:`Event`, a dict with a ``kind``:

- ``message``: ``text`` (the device, notes, a resume, a sparsity method's lines);
- ``stage``: ``stage``, ``first_epoch``, ``last_epoch`` (a staged method's next stage);
- ``epoch``: the epoch's record exactly as ``metrics.jsonl`` holds it, plus ``epochs``
  (the run's total).

``str(event)`` is the line the console shows (:func:`dnr.training.display.event_line`), so a
``log`` that prints, as the CLI's does, prints what it always printed.

The loggers (registry ``LOGGERS``, chosen by ``train.loggers``) receive the same ``epoch``
events: ``jsonl`` (always on), ``csv``, ``tensorboard`` (extra ``track``). They are
built before any data is read (a missing package fails at once), started with the epochs a
resume keeps (so that a replayed epoch never appears twice) and closed when training ends
or stops. Only the writing process (rank 0 under torchrun) builds any.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from dnr.config import ConfigError
from dnr.fileio import append_jsonl, atomic_write_text
from dnr.registry import LOGGERS
from dnr.rundir import RunDir
from dnr.training.display import event_line

__all__ = [
    "CsvLogger",
    "Event",
    "JsonlLogger",
    "Logger",
    "RunLoggers",
    "TensorBoardLogger",
    "epoch_event",
    "epoch_record",
    "flatten",
    "message",
    "open_loggers",
    "say_to",
    "scalars",
    "stage_event",
]

#: The keys an epoch's :class:`Event` adds to its ``metrics.jsonl`` record.
EVENT_KEYS = ("kind", "epochs")


class Event(dict[str, Any]):
    """One structured record of a run's log; ``str()`` is its console line."""

    def __str__(self) -> str:
        return event_line(self)


def message(text: str) -> Event:
    """A line of text for the log (no figures to keep)."""
    return Event(kind="message", text=text)


def stage_event(stage: str, first_epoch: int, last_epoch: int) -> Event:
    """A staged method's next stage begins (epochs counted from 1, both ends included)."""
    text = f"stage {stage}: epochs {first_epoch}-{last_epoch}"
    return Event(
        kind="stage", stage=stage, first_epoch=first_epoch, last_epoch=last_epoch, text=text
    )


def epoch_event(record: Mapping[str, Any], epochs: int) -> Event:
    """The epoch's ``metrics.jsonl`` record as an event of a run of ``epochs`` epochs."""
    return Event({"kind": "epoch", **record, "epochs": epochs})


def epoch_record(event: Mapping[str, Any]) -> dict[str, Any]:
    """The ``metrics.jsonl`` record an epoch event carries (the event's own keys removed)."""
    return {k: v for k, v in event.items() if k not in EVENT_KEYS}


def say_to(log: Callable[[Event], None]) -> Callable[[str], None]:
    """A callable taking lines of text (as sparsity methods log) that logs them as events."""
    return lambda text: log(message(text))


def flatten(record: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level: ``{"layer_density": {"fc": 0.1}}`` -> ``layer_density.fc``."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, sep, name))
        else:
            flat[name] = value
    return flat


class Logger(Protocol):
    """Receives a run's events; a class taking the :class:`RunDir` is registered in LOGGERS."""

    def start(self, history: list[dict[str, Any]]) -> None:
        """The records of the epochs already done (a resumed run's; empty when fresh)."""

    def log(self, event: Event) -> None:
        """An epoch's event (written before the checkpoint that counts the epoch)."""

    def close(self) -> None:
        """Training ended or stopped: flush and let go of files."""


@LOGGERS.register(name="jsonl")
class JsonlLogger:
    """metrics.jsonl: one JSON line per epoch (always on)."""

    def __init__(self, run: RunDir) -> None:
        self.path = run.metrics

    def start(self, history: list[dict[str, Any]]) -> None:
        """Nothing to do: ``RunWriter.history`` has already dropped the replayed epochs."""

    def log(self, event: Event) -> None:
        if event.get("kind") == "epoch":
            append_jsonl(self.path, epoch_record(event))

    def close(self) -> None:
        """Every line is written when logged."""


@LOGGERS.register(name="csv")
class CsvLogger:
    """metrics.csv: one row per epoch, nested figures as dotted columns (layer_density.fc)."""

    def __init__(self, run: RunDir) -> None:
        self.path = run.metrics_csv
        self.rows: list[dict[str, Any]] = []

    def start(self, history: list[dict[str, Any]]) -> None:
        # rewritten from the kept epochs, as metrics.jsonl is: a resume never repeats a row
        self.rows = [flatten(r) for r in history]
        self._write()

    def log(self, event: Event) -> None:
        if event.get("kind") == "epoch":
            self.rows.append(flatten(epoch_record(event)))
            self._write()

    def close(self) -> None:
        """Every row is written when logged."""

    def _write(self) -> None:
        """The whole file, atomically: a column that appears late (a first validation)
        joins the header, which stays the same for every row."""
        if not self.rows:
            self.path.unlink(missing_ok=True)
            return
        header = list(dict.fromkeys(key for row in self.rows for key in row))
        out = io.StringIO()
        table = csv.DictWriter(out, header, restval="", lineterminator="\n")
        table.writeheader()
        table.writerows({k: _cell(v) for k, v in row.items()} for row in self.rows)
        atomic_write_text(self.path, out.getvalue())


def _cell(value: Any) -> Any:
    """A CSV cell: empty for None, JSON for lists and booleans, else the value (floats
    are written with ``repr``, so they read back exactly)."""
    if value is None:
        return ""
    if isinstance(value, bool | list | tuple):
        return json.dumps(value)
    return value


@LOGGERS.register(name="tensorboard")
class TensorBoardLogger:
    """tensorboard/: each number of an epoch's record as a scalar at step = epoch (extra
    `track`)."""

    def __init__(self, run: RunDir) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as err:  # noqa: BLE001 - any failure means the extra is unusable
            raise ConfigError(
                f"train.loggers: tensorboard does not import here ({type(err).__name__}: "
                f"{err}); install it with: pip install 'torch-dnr[track]'"
            ) from None
        self._open = SummaryWriter
        self.path = run.tensorboard
        self._writer: Any = None

    def start(self, history: list[dict[str, Any]]) -> None:
        done = max((int(r.get("epoch", 0)) for r in history), default=0)
        # TensorBoard hides the steps >= purge_step of earlier event files: the epochs a
        # resume replays (or a killed attempt logged past its checkpoint) are shown once
        self._writer = self._open(log_dir=str(self.path), purge_step=done + 1)

    def log(self, event: Event) -> None:
        if event.get("kind") != "epoch" or self._writer is None:
            return
        step = int(event["epoch"])
        for tag, value in scalars(epoch_record(event)):
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def scalars(record: Mapping[str, Any]) -> Iterable[tuple[str, float]]:
    """``(tag, value)`` for each number of an epoch's record (``layer_density/fc``): not the
    epoch (the step), nor lists, text, flags or missing values."""
    for tag, value in flatten(record, sep="/").items():
        if tag != "epoch" and isinstance(value, int | float) and not isinstance(value, bool):
            yield tag, float(value)


class RunLoggers:
    """The loggers of one run, behind one object the loop calls."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def start(self, history: list[dict[str, Any]]) -> None:
        for logger in self.loggers:
            logger.start(list(history))  # a copy: the run's own history grows

    def log(self, event: Event) -> None:
        for logger in self.loggers:
            logger.log(event)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def open_loggers(names: list[str], run_dir: str | Path, *, enabled: bool = True) -> RunLoggers:
    """``jsonl`` and the loggers ``names`` (``train.loggers``); none where not ``enabled``."""
    if not enabled:
        return RunLoggers([])
    chosen = dict.fromkeys(["jsonl", *(n.lower() for n in names)])
    run = RunDir(Path(run_dir))
    return RunLoggers([LOGGERS.get(name)(run) for name in chosen])
