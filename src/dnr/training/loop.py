"""The training loop: set up, then per epoch train, validate, select, hand over to the method.

At the end of every epoch: validate (clean + PGD on the held-out split), keep the best
checkpoint by validation PGD accuracy, let the sparsity method act (DNR rewires), save
resume state. The loop never names a sparsity method: it calls the method's hooks.

Reproducibility: every epoch reseeds the global RNG, the batch order and the attack's random
starts from ``(train.seed, epoch)`` (``dnr.seeding``), so resuming from the checkpoint of
epoch ``k`` replays epochs ``k+1...`` exactly as an uninterrupted run would; within an
epoch, :class:`~dnr.training.cursor.EpochCursor` keeps what a step checkpoint needs.

Under torchrun the same loop runs on every rank (``dnr.distributed``): each trains on its
slice of every global batch through DDP, validation is split between the ranks and summed,
only rank 0 logs and writes, and the masks and weights are checksummed across ranks after
every epoch's sparsity hook.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dnr.attacks import start_noise
from dnr.config import Config, normalize_names, validate
from dnr.data import DatasetSplits, SourceData
from dnr.distributed import Distributed
from dnr.plots import write_training_curves
from dnr.robustness import clean_accuracy, pgd_accuracy
from dnr.seeding import derive_seed
from dnr.sparsity import Progress, SparsityMethod
from dnr.training.cursor import EpochCursor, EpochTotals
from dnr.training.display import EpochBar, percent
from dnr.training.guards import FiniteWatch, TrainingStopped
from dnr.training.loggers import Event, RunLoggers, epoch_event, open_loggers, say_to, stage_event
from dnr.training.run import TrainingRun, open_run
from dnr.training.schedule import step_learning_rate
from dnr.training.setup import model_meta
from dnr.training.step import (
    StepOutput,
    attacks_in_training,
    clean_logits_in_training,
    train_mode,
    train_step,
)
from dnr.training.writer import RunWriter

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    """What a training run leaves in Python: its directory, its deployed model and method."""

    run_dir: Path
    model: nn.Module
    sparsity: SparsityMethod
    best_epoch: int
    best_val_pgd: float
    history: list[dict[str, Any]] = field(default_factory=list)
    # False on torchrun ranks other than 0: they wrote nothing, and their ``model`` is the
    # last epoch's (rank 0 holds the selected one, as the run directory does)
    is_main: bool = True


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    show_progress: bool | None = None,
    log: Callable[[Event], None] = print,
    data: DatasetSplits | SourceData | None = None,
) -> TrainResult:
    """Train per ``cfg`` into ``out_dir``; writes every artifact listed in ``dnr.rundir``.

    ``log`` receives the run's structured records (:class:`~dnr.training.loggers.Event`:
    dicts with a ``kind``; an epoch's carries its ``metrics.jsonl`` fields); ``str()`` of
    one is its console line, so ``print`` shows what ``dnr train`` shows.

    ``show_progress``: a progress bar per epoch (default: when stderr is a terminal); not to
    be confused with the :class:`~dnr.sparsity.Progress` the method's hooks receive.
    ``data``: a dataset built in Python (:func:`dnr.data.from_datasets`), split per
    ``cfg.data``, or ready splits; by default the one ``cfg.data`` names is read.
    """
    # a Config built in Python has not been through load_config's normalisation and checks
    normalize_names(cfg)
    validate(cfg)
    dist, device = Distributed.setup(cfg.train.device, cfg.train.dist_backend)
    try:
        return _train(cfg, out_dir, dist, device, resume, show_progress, log, data)
    finally:
        dist.close()


def _train(
    cfg: Config,
    out_dir: str | Path,
    dist: Distributed,
    device: torch.device,
    resume: bool,
    show_progress: bool | None,
    log: Callable[[Event], None],
    data: DatasetSplits | SourceData | None,
) -> TrainResult:
    """Open the run, count progress where it stands, run the epochs, deploy the best one."""
    show = (sys.stderr.isatty() if show_progress is None else show_progress) and dist.is_main
    if not dist.is_main:
        log = _silent
    writer = RunWriter(out_dir, enabled=dist.is_main)  # warnings to stderr, also with --quiet
    # before any data is read: a logger whose package is missing fails at once
    loggers = open_loggers(cfg.train.loggers, writer.path, enabled=dist.is_main)
    run = open_run(cfg, writer, dist, device, resume, data, say_to(log))
    loggers.start(run.state.history)
    t, state = cfg.train, run.state
    prog = Progress(
        step=state.step,
        epoch=state.epochs_done,
        epochs=t.epochs,
        steps_per_epoch=len(run.loader) * train_mode(cfg).replays(cfg),
        batches=run.loader.epoch,
        log=say_to(log),
        seed=t.seed,
    )
    try:
        with run.stop.installed():
            _epochs(run, prog, show, log, loggers)
    finally:
        loggers.close()
    if dist.is_main:
        write_training_curves(writer.path)
    return _finish(run)


def _silent(_event: Event) -> None:
    """The log of ranks other than 0."""


def _epochs(
    run: TrainingRun,
    prog: Progress,
    show: bool,
    log: Callable[[Event], None],
    loggers: RunLoggers,
) -> None:
    """Every epoch still to do: train, then close it (validate, select, the method's hook),
    save, log; stop early on a catastrophic overfitting or a signal."""
    state, epochs = run.state, run.cfg.train.epochs
    staged = len({s for s, _ in run.plan}) > 1
    for epoch in range(state.epochs_done, epochs):
        if state.stopped_at:  # (a resumed run that had stopped at a collapse)
            break
        started = time.perf_counter()
        _enter_epoch(run, prog, epoch, staged, log)
        record = _train_epoch(run, prog, show)
        if staged:
            record["stage"] = run.plan[epoch][0].name
        _close_epoch(run, prog, record, epoch)
        record["wall_seconds"] = time.perf_counter() - started + record.pop("resumed_seconds")
        state.epochs_done, state.step = epoch + 1, prog.step
        event = epoch_event(record, epochs)
        loggers.log(event)  # metrics.jsonl (and csv...) before the checkpoint that counts it
        state.history.append(record)
        run.writer.save_last(run.resume_state())
        log(event)
        if _collapsed(run, record) and epoch < epochs - 1:
            _stop_collapsed(run, record, epoch, say_to(log))
            break
        if run.dist.agree(run.stop.signum is not None) and epoch < epochs - 1:
            _stopped(run, f"the end of epoch {epoch + 1}")


def _enter_epoch(
    run: TrainingRun, prog: Progress, epoch: int, staged: bool, log: Callable[[Event], None]
) -> None:
    """Point ``prog`` at ``epoch``; the first epoch of a stage begins the stage."""
    prog.epoch = epoch
    prog.stage, prog.stage_start = run.plan[epoch]
    # (a run resumed mid-epoch began its stage before the checkpoint)
    if epoch == prog.stage_start and run.state.batch == 0:
        if staged:
            end = prog.stage_start + prog.stage.epochs
            log(stage_event(prog.stage.name, prog.stage_start + 1, end))
        run.method.begin_stage(prog.stage, prog)


def _train_epoch(run: TrainingRun, prog: Progress, show: bool) -> dict[str, Any]:
    """One pass over the training data; returns the epoch's training metrics.

    The cursor keeps the bookkeeping: a run resumed mid-epoch goes on from the saved batch
    with the saved RNG states and partial sums, and ends the epoch as an uninterrupted one.
    """
    t, cursor = run.cfg.train, _open_cursor(run, prog)
    run.trained.train()  # the DDP wrapper too, where there is one
    watch = FiniteWatch(run.device)
    bar = EpochBar(prog.epoch, t.epochs, cursor.start, cursor.steps, t.batch_size, show)
    draws_start = attacks_in_training(run.cfg) and train_mode(run.cfg).draws_start(run.cfg)
    lr = t.lr
    for i, (x, y) in cursor.batches(run.loader):
        lr = _set_lr(run, prog, i)
        out = _step(run, prog, cursor, x, y, draws_start)
        cursor.add(out, y)
        watch.update(out.loss, i)
        if bar.advance(i):
            if not run.dist.enabled:  # .item() syncs here anyway (rank 0 alone shows a bar)
                _check_loss_finite(run, watch, prog.epoch)
            bar.figures(i, out.loss, lr)
        stop = run.dist.agree(run.stop.signum is not None)
        if cursor.save_due(i, prog.step, stop):
            _save_mid_epoch(run, cursor, watch, i + 1, prog.step)
            if stop:
                _stopped(run, f"epoch {prog.epoch + 1}, after batch {i + 1}/{cursor.steps}")
    bar.close()
    _check_loss_finite(run, watch, prog.epoch)
    return _train_record(run, prog, cursor.close(), lr)


def _open_cursor(run: TrainingRun, prog: Progress) -> EpochCursor:
    """The epoch's cursor, from the run's state (mid-epoch after a step checkpoint)."""
    t = run.cfg.train
    return EpochCursor(
        run.state,
        prog.epoch,
        prog.step,
        seed=t.seed,
        every=t.checkpoint_every,
        steps=len(run.loader),
        dist=run.dist,
        device=run.device,
        checkpoint=run.writer.run.last_checkpoint,
    )


def _set_lr(run: TrainingRun, prog: Progress, batch: int) -> float:
    """Set the learning rate of the epoch's ``batch``-th step (the caller's job in
    ``train_step``) and return it."""
    lr = step_learning_rate(run.cfg, prog, batch, len(run.loader))
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    return lr


def _step(
    run: TrainingRun, prog: Progress, cursor: EpochCursor, x: Tensor, y: Tensor, draws: bool
) -> StepOutput:
    """One training step. A random start is drawn for the global batch: each rank attacks
    its images as one process would."""
    noise = None
    if draws:
        global_shape = (len(y) * run.dist.world, *x.shape[1:])
        noise = run.dist.shard(start_noise(global_shape, cursor.attack_gen))
    return train_step(
        run.trained,
        run.optimizer,
        x,
        y,
        run.cfg,
        run.method,
        prog,
        cursor.attack_gen,
        noise=noise,
        state=cursor.step_state,
    )


def _save_mid_epoch(
    run: TrainingRun, cursor: EpochCursor, watch: FiniteWatch, batches: int, step: int
) -> None:
    """A step checkpoint after ``batches`` batches of the epoch (never of a non-finite loss)."""
    _check_loss_finite(run, watch, cursor.epoch)
    cursor.park(batches, step)
    # Rank 0's BN statistics on every rank, as a resume will have them: a resumed
    # run goes on exactly as this one does
    run.dist.broadcast_buffers(run.model)
    run.writer.save_last(run.resume_state())


def _train_record(
    run: TrainingRun, prog: Progress, totals: EpochTotals, lr: float
) -> dict[str, Any]:
    """The epoch's training metrics, as metrics.jsonl records them."""
    cfg, count = run.cfg, totals.count
    attacked = attacks_in_training(cfg)
    return {
        "epoch": prog.epoch + 1,
        "step": prog.step,
        "lr": lr,
        "lr_first": step_learning_rate(
            cfg, prog, 0, len(run.loader)
        ),  # a stage's warm-up (or none)
        "train_loss": totals.loss_sum / count,
        "train_clean_acc": totals.clean_sum / count if clean_logits_in_training(cfg) else None,
        "train_adv_acc": totals.adv_sum / count if attacked else None,
        "train_images": count,  # examples trained on this epoch (for equal-budget comparisons)
        "images_per_sec": count / totals.seconds,
        "train_seconds": totals.seconds,
        "resumed_seconds": totals.resumed_seconds,  # (popped by the caller into wall_seconds)
    }


def _close_epoch(run: TrainingRun, prog: Progress, record: dict[str, Any], epoch: int) -> None:
    """Validate, keep the best checkpoint, let the method act; adds to ``record``."""
    dist = run.dist
    dist.broadcast_buffers(run.model)  # rank 0's BN statistics are the run's
    record.update(_validate(run, epoch))
    # The deployed model comes from the last stage (e.g. not from a dense pretraining).
    if prog.stage is run.plan[-1][0] and run.state.select(
        _selection_value(run, record, epoch), epoch + 1
    ):
        run.writer.save_best(run.best_state(epoch, record))
    prog.metrics = dict(record)  # the epoch's figures, for methods that react to them
    record.update(run.method.on_epoch_end(prog))
    dist.broadcast_buffers(run.model)  # a rewiring's BN refresh saw each rank's batches
    if run.cfg.train.check_ranks and dist.enabled:
        dist.check_same(run.rank_checksum(), f"masks or weights after epoch {epoch + 1}")


def _collapsed(run: TrainingRun, record: dict[str, Any]) -> bool:
    """A single-step training mode's catastrophic overfitting, seen on validation.

    Robust accuracy under PGD falls to under half of the best epoch's (and by at least 2
    points) within an epoch or two when FGSM-trained networks overfit catastrophically
    (Wong et al. 2020); multi-step PGD training does not, so it is never stopped.
    """
    value, best = record.get("val_pgd_acc"), run.state.best_val
    if not train_mode(run.cfg).single_step or value is None or best <= 0:
        return False
    return bool(value < 0.5 * best and best - value >= 0.02)


def _stop_collapsed(
    run: TrainingRun, record: dict[str, Any], epoch: int, log: Callable[[str], None]
) -> None:
    """Save that the run stopped (a resume stays stopped) and say which epoch is kept."""
    state = run.state
    state.stopped_at = epoch + 1
    run.writer.save_last(run.resume_state())
    log(
        f"validation PGD accuracy collapsed to {percent(record['val_pgd_acc'])} (best "
        f"{percent(state.best_val)}, epoch {state.best_epoch}): catastrophic overfitting "
        f"of {run.cfg.attack.train_mode} training; stopping, epoch {state.best_epoch} is kept"
    )


def _check_loss_finite(run: TrainingRun, watch: FiniteWatch, epoch: int) -> None:
    """Stop before a non-finite loss's state is saved."""
    watch.check(run.dist, epoch, run.writer.run.last_checkpoint)


def _stopped(run: TrainingRun, where: str) -> None:
    """The state at ``where`` is saved: stop with how to continue."""
    raise TrainingStopped.saved_at(run.stop.signum, where, run.writer.path)


def _validate(run: TrainingRun, epoch: int) -> dict[str, float]:
    """Clean and PGD accuracy on the validation split, when due (and on the last epoch)."""
    cfg, val = run.cfg, run.data.val
    t, a = cfg.train, cfg.attack
    if len(val.y) == 0 or ((epoch + 1) % t.val_every != 0 and epoch != t.epochs - 1):
        return {}
    return {
        "val_clean_acc": clean_accuracy(
            run.model, val.x, val.y, batch_size=t.eval_batch_size, dist=run.dist
        ),
        "val_pgd_acc": pgd_accuracy(
            run.model,
            val.x,
            val.y,
            eps=a.eps,
            step_size=a.step_size if a.val_steps is None else 2.5 * a.eps / a.val_steps,
            steps=a.steps if a.val_steps is None else a.val_steps,
            batch_size=t.eval_batch_size,
            generator=torch.Generator().manual_seed(derive_seed(t.seed, "validation")),
            dist=run.dist,
        ),
    }


def _selection_value(run: TrainingRun, record: dict[str, Any], epoch: int) -> float | None:
    """Select on validation PGD accuracy; without a validation split, keep the last epoch."""
    if "val_pgd_acc" in record:
        return record["val_pgd_acc"]
    if len(run.data.val.y) == 0 and epoch == run.cfg.train.epochs - 1:
        return float("inf")
    return None


def _finish(run: TrainingRun) -> TrainResult:
    """The deployed model is the best epoch on validation PGD accuracy.

    Rank 0 selects and saves it; other torchrun ranks keep the last epoch's model (the run
    directory may not be on their file system).
    """
    state = run.state
    if run.dist.is_main:
        best = run.writer.load_best(map_location=run.device)
        run.model.load_state_dict(best["model"])
        run.method.load_state_dict(best["sparsity"])
        selection = {"by": "val_pgd_acc", "epoch": state.best_epoch, "value": state.best_val}
        run.writer.save_model(
            run.model, model_meta(run.cfg, run.data, run.method, {"selection": selection})
        )
    return TrainResult(
        run.writer.path,
        run.model.eval(),
        run.method,
        state.best_epoch,
        state.best_val,
        state.history,
        is_main=run.dist.is_main,
    )
