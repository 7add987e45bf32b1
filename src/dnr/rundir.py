"""The run directory: where every file of a run lives, and the error a bad one raises.

Layout (one directory per run, nothing written elsewhere)::

    RUN_DIR/config.yaml            resolved configuration
    RUN_DIR/metrics.jsonl          one JSON line per epoch
    RUN_DIR/metrics.csv            one row per epoch (train.loggers=[csv])
    RUN_DIR/tensorboard/           TensorBoard event files (train.loggers=[tensorboard])
    RUN_DIR/curves.png             loss, accuracies and per-layer density per epoch
    RUN_DIR/checkpoints/last.pt    resume state (model, optimizer, masks, epoch, RNG)
    RUN_DIR/checkpoints/previous.pt  the resume state before it (the fallback if last.pt
                                   is damaged)
    RUN_DIR/checkpoints/best.pt    best epoch by validation PGD accuracy
    RUN_DIR/model.safetensors      the final model's weights (no pickle)
    RUN_DIR/model.json             how to rebuild it: architecture, classes, width, ...
                                   (+ a ``storage`` section when the weights are stored
                                   as sparse rows: ``dnr export --format sparse``)
    RUN_DIR/eval.json, eval.md     evaluation results with exact attack settings
    RUN_DIR/layer_density.png      per-layer density over epochs (sparse runs)

How each file is written and checked lives beside its format: :mod:`dnr.checkpoints`
(sealed resume/best checkpoints) and :mod:`dnr.modelfile` (``model.safetensors`` +
``model.json``). Every such failure is a one-line :class:`ArtifactError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnr.fileio import atomic_write, atomic_write_json


class ArtifactError(ValueError):
    """A missing or malformed artifact (shown to the user without a traceback)."""


@dataclass(frozen=True)
class RunDir:
    """Names of every artifact in a run directory."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def curves_plot(self) -> Path:
        return self.path / "curves.png"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def previous_checkpoint(self) -> Path:
        return self.checkpoints / "previous.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def model_weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def model_meta(self) -> Path:
        return self.path / "model.json"

    @property
    def eval_json(self) -> Path:
        return self.path / "eval.json"

    @property
    def eval_md(self) -> Path:
        return self.path / "eval.md"

    @property
    def layer_density_plot(self) -> Path:
        return self.path / "layer_density.png"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    def artifacts(self) -> list[Path]:
        """Every file a run writes, the results first and the run's markers (checkpoints,
        weights) last: what ``dnr train --overwrite`` may delete, and nothing else."""
        return [
            self.report_md,
            self.curves_plot,
            self.layer_density_plot,
            self.eval_md,
            self.eval_json,
            *sorted(self.tensorboard.glob("events.out.tfevents.*")),
            self.metrics_csv,
            self.metrics,
            self.config,
            self.model_meta,
            self.best_checkpoint,
            self.previous_checkpoint,
            self.last_checkpoint,
            self.model_weights,
        ]


def write_eval(run_dir: str | Path, document: dict[str, Any], markdown: str) -> None:
    """Write ``eval.json`` and ``eval.md`` atomically: a reader never sees half a report."""
    run = RunDir(Path(run_dir))
    atomic_write_json(run.eval_json, document)
    atomic_write(run.eval_md, lambda tmp: tmp.write_text(markdown))
