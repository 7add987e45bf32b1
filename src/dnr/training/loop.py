"""The training loop: set up, then per epoch train, validate, select, hand over to the method.

At the end of every epoch: validate (clean + PGD on the held-out split), keep the best
checkpoint by validation PGD accuracy, let the sparsity method act (DNR rewires), save
resume state. The loop never names a sparsity method: it calls the method's hooks.

Reproducibility: every epoch reseeds the global RNG, the batch order and the attack's random
starts from ``(train.seed, epoch)`` (``dnr.seeding``), so resuming from the checkpoint of
epoch ``k`` replays epochs ``k+1...`` exactly as an uninterrupted run would.

Under torchrun the same loop runs on every rank (``dnr.distributed``): each trains on its
slice of every global batch through DDP, validation is split between the ranks and summed,
only rank 0 logs and writes, and the masks and weights are checksummed across ranks after
every epoch's sparsity hook.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dnr.attacks import start_noise
from dnr.config import Config, ConfigError, normalize_names, validate
from dnr.data import BatchLoader, DatasetSplits, load_dataset
from dnr.devices import cpu_fallback_warning, describe_device
from dnr.distributed import Distributed, tensor_checksum
from dnr.robustness import clean_accuracy, pgd_accuracy
from dnr.seeding import derive_seed
from dnr.sparsity import Progress, SparsityMethod, Stage, build_sparsity
from dnr.training.guards import FiniteWatch, NonFiniteLossError, StopSignals, TrainingStopped
from dnr.training.schedule import learning_rate, schedule_warning
from dnr.training.setup import (
    build_optimizer,
    check_init_from,
    init_masks_from,
    load_init_weights,
    model_for,
    model_meta,
)
from dnr.training.state import TrainState
from dnr.training.step import (
    StepState,
    accumulate,
    attacks_in_training,
    train_mode,
    train_step,
)
from dnr.training.writer import RunWriter

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    run_dir: Path
    model: nn.Module
    sparsity: SparsityMethod
    best_epoch: int
    best_val_pgd: float
    history: list[dict[str, Any]] = field(default_factory=list)
    # False on torchrun ranks other than 0: they wrote nothing, and their ``model`` is the
    # last epoch's (rank 0 holds the selected one, as the run directory does)
    is_main: bool = True


@dataclass
class _Run:
    """What the epoch loop works on, built once by :func:`_setup`."""

    cfg: Config
    data: DatasetSplits
    device: torch.device
    dist: Distributed
    model: nn.Module
    trained: nn.Module  # what the training forward passes go through: DDP(model) or model
    optimizer: torch.optim.Optimizer
    method: SparsityMethod
    plan: list[tuple[Stage, int]]  # (stage, its first epoch) for every epoch
    loader: BatchLoader
    state: TrainState
    writer: RunWriter
    stop: StopSignals = field(default_factory=StopSignals)


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    data: DatasetSplits | None = None,
) -> TrainResult:
    """Train per ``cfg`` into ``out_dir``; writes every artifact listed in ``dnr.rundir``."""
    # a Config built in Python has not been through load_config's normalisation and checks
    normalize_names(cfg)
    validate(cfg)
    dist, device = Distributed.setup(cfg.train.device, cfg.train.dist_backend)
    try:
        return _train(cfg, out_dir, dist, device, resume, progress, log, data)
    finally:
        dist.close()


def _train(
    cfg: Config,
    out_dir: str | Path,
    dist: Distributed,
    device: torch.device,
    resume: bool,
    progress: bool | None,
    log: Callable[[str], None],
    data: DatasetSplits | None,
) -> TrainResult:
    show = (sys.stderr.isatty() if progress is None else progress) and dist.is_main
    if not dist.is_main:
        log = _silent
    writer = RunWriter(out_dir, enabled=dist.is_main)  # warnings to stderr, also with --quiet
    run = _setup(cfg, writer, dist, device, resume, data, log)
    t, state = cfg.train, run.state
    prog = Progress(
        step=state.step,
        epoch=state.epochs_done,
        epochs=t.epochs,
        steps_per_epoch=len(run.loader) * train_mode(cfg).replays(cfg),
        batches=run.loader.epoch,
        log=log,
        seed=t.seed,
    )
    with run.stop.installed():
        _epochs(run, prog, show, log)
    return _finish(run)


def _epochs(run: _Run, prog: Progress, show: bool, log: Callable[[str], None]) -> None:
    cfg, dist = run.cfg, run.dist
    t, state = cfg.train, run.state
    last_stage, staged = run.plan[-1][0], len({s for s, _ in run.plan}) > 1
    for epoch in range(state.epochs_done, t.epochs):
        if state.stopped_at:  # (a resumed run that had stopped at a collapse)
            break
        started = time.perf_counter()
        prog.epoch = epoch
        prog.stage, prog.stage_start = run.plan[epoch]
        # (a run resumed mid-epoch began its stage before the checkpoint)
        if epoch == prog.stage_start and state.batch == 0:
            if staged:
                end = prog.stage_start + prog.stage.epochs
                log(f"stage {prog.stage.name}: epochs {prog.stage_start + 1}-{end}")
            run.method.begin_stage(prog.stage, prog)
        record = _train_epoch(run, prog, show)
        if staged:
            record["stage"] = prog.stage.name
        dist.broadcast_buffers(run.model)  # rank 0's BN statistics are the run's
        record.update(_validate(run, epoch))
        # The deployed model comes from the last stage (e.g. not from a dense pretraining).
        if prog.stage is last_stage and state.select(
            _selection_value(run, record, epoch), epoch + 1
        ):
            run.writer.save_best(_best_state(run, epoch, record))
        prog.metrics = dict(record)  # the epoch's figures, for methods that react to them
        record.update(run.method.on_epoch_end(prog))
        dist.broadcast_buffers(run.model)  # a rewiring's BN refresh saw each rank's batches
        if cfg.train.check_ranks and dist.enabled:
            dist.check_same(_rank_checksum(run), f"masks or weights after epoch {epoch + 1}")
        record["wall_seconds"] = time.perf_counter() - started + record.pop("resumed_seconds")
        state.epochs_done, state.step = epoch + 1, prog.step
        run.writer.append_metrics(record)
        state.history.append(record)
        run.writer.save_last(_resume_state(run))
        log(_epoch_line(record, t.epochs))
        if _collapsed(run, record) and epoch < t.epochs - 1:
            state.stopped_at = epoch + 1
            run.writer.save_last(_resume_state(run))
            log(
                f"validation PGD accuracy collapsed to {_fmt(record['val_pgd_acc'])} (best "
                f"{_fmt(state.best_val)}, epoch {state.best_epoch}): catastrophic overfitting "
                f"of {cfg.attack.train_mode} training; stopping, epoch {state.best_epoch} is kept"
            )
            break
        if dist.agree(run.stop.signum is not None) and epoch < t.epochs - 1:
            _stopped(run, f"the end of epoch {epoch + 1}")


def stage_plan(stages: list[Stage], epochs: int) -> list[tuple[Stage, int]]:
    """``(stage, first epoch of the stage)`` for every epoch of the run."""
    if sum(s.epochs for s in stages) != epochs or any(s.epochs < 1 for s in stages):
        raise ConfigError(
            f"the sparsity method's stages ({', '.join(f'{s.name}: {s.epochs}' for s in stages)}"
            f" epochs) must each be >= 1 and add up to train.epochs={epochs}"
        )
    plan, start = [], 0
    for stage in stages:
        plan += [(stage, start)] * stage.epochs
        start += stage.epochs
    return plan


def _silent(_line: str) -> None:
    """The log of ranks other than 0."""


def _setup(
    cfg: Config,
    writer: RunWriter,
    dist: Distributed,
    device: torch.device,
    resume: bool,
    data: DatasetSplits | None,
    log: Callable[[str], None],
) -> _Run:
    """Model, optimizer, method and state: fresh, from ``train.init_from``, or resumed."""
    resume_state = writer.open(cfg, resume)
    t = cfg.train
    source = t.init_from if resume_state is None else None
    if t.batch_size % dist.world:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is the global batch: it must be a multiple of "
            f"the {dist.world} torchrun processes"
        )
    for line in (describe_device(device), cpu_fallback_warning(t.device, device)):
        if line:
            log(line)
    if dist.enabled:
        log(
            f"torchrun: {dist.world} processes ({dist.backend}), "
            f"{t.batch_size // dist.world} images per process and step"
        )
    if source:
        check_init_from(source)  # before loading data: a typo fails in a second
    torch.manual_seed(derive_seed(t.seed, "init"))
    data = data if data is not None else load_dataset(cfg.data)
    if len(data.train.y) == 0:
        raise ConfigError(f"data: no training images in {cfg.data.name} (data.train is empty?)")
    model = model_for(cfg, data)
    if source and not t.init_masks:
        load_init_weights(model, source)  # the method's initial masks then apply to them
    model.to(device)
    if t.channels_last:  # before the optimizer and masks take the parameters
        # torch < 2.14's hints lack Module.to(memory_format=...); newer ones have it
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload, unused-ignore]
    optimizer = build_optimizer(cfg, model)
    method = build_sparsity(
        cfg, model, optimizer, torch.Generator().manual_seed(derive_seed(t.seed, "masks"))
    )
    if source and t.init_masks:  # the source's weights are zero outside its masks
        load_init_weights(model, source)
        init_masks_from(method, source)
    plan = stage_plan(method.stages(), t.epochs)  # before anything is written
    state = TrainState()
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        method.load_state_dict(resume_state["sparsity"])
        state.load_state_dict(resume_state["state"])
        torch.set_rng_state(resume_state["rng_cpu"])
        state.history = writer.history(state.epochs_done)
        within = f", after batch {state.batch}" if state.batch else ""
        log(
            f"resuming {writer.path} at epoch {state.epochs_done + 1}/{t.epochs}{within}"
            if state.epochs_done < t.epochs
            else f"{writer.path}: all {t.epochs} epochs were done; writing the final artifacts"
        )
    else:
        writer.start(cfg)
        for line in (schedule_warning(cfg), _no_validation_note(cfg, data)):
            if line:
                log(line)
    loader = BatchLoader(
        data.train,
        t.batch_size,
        device,
        shuffle=True,
        augment=cfg.data.augment,
        seed=t.seed,
        rank=dist.rank,
        world=dist.world,
    )
    if t.compile:  # in place: state dicts, masks and the attack see the same module
        model.compile()
    trained = dist.wrap(model, device, sync_bn=t.sync_bn)
    return _Run(
        cfg, data, device, dist, model, trained, optimizer, method, plan, loader, state, writer
    )


def _no_validation_note(cfg: Config, data: DatasetSplits) -> str | None:
    if len(data.val.y) == 0:
        return "note: no validation split (data.val_size=0); the last epoch is kept as best"
    return None


def _train_epoch(run: _Run, prog: Progress, show: bool) -> dict[str, Any]:
    """One pass over the training data; returns the epoch's training metrics.

    A run resumed mid-epoch (``state.batch`` > 0) continues from the saved batch with the
    saved RNG states and partial sums: the epoch ends exactly as an uninterrupted one.
    """
    cfg, epoch, state = run.cfg, prog.epoch, run.state
    t, steps, start = cfg.train, len(run.loader), state.batch
    # On the training device: random starts need no host-to-device copy per step.
    attack_gen = torch.Generator(device=run.device).manual_seed(
        derive_seed(t.seed, "attack", epoch)
    )
    # loss*n, clean correct, adv correct, n; a step checkpoint holds the global partial sums,
    # which rank 0 carries on (the ranks' sums are added at the end of the epoch)
    carried = state.sums if run.dist.is_main else [0.0] * 4
    sums = torch.tensor(carried, dtype=torch.float32, device=run.device)
    if start == 0:
        torch.manual_seed(derive_seed(t.seed, "epoch", epoch))
    elif state.attack_rng is not None:  # the global RNG was restored with the checkpoint
        if state.attack_rng.numel() != attack_gen.get_state().numel():
            raise ConfigError(
                f"--resume: {run.writer.run.last_checkpoint} was saved mid-epoch on another "
                f"kind of device than {run.device.type}; resume on the device type it was "
                "trained on (train.device)"
            )
        attack_gen.set_state(state.attack_rng)
    run.trained.train()  # the DDP wrapper too, where there is one
    watch = FiniteWatch(run.device)
    every = t.checkpoint_every
    resumed_seconds = state.seconds
    started = time.perf_counter()
    bar = tqdm(
        total=steps,
        initial=start,
        desc=f"epoch {epoch + 1}/{t.epochs}",
        disable=not show,
        leave=False,
        dynamic_ncols=True,
    )
    lr = t.lr
    mode = train_mode(cfg)
    random_start = attacks_in_training(cfg) and mode.draws_start(cfg)
    # free training's perturbation (checkpoints hold it on the CPU)
    delta = None if state.delta is None else state.delta.to(run.device)
    step_state = StepState(delta=delta)
    for i, (x, y) in enumerate(run.loader.epoch(epoch, start), start):
        lr = _lr_at(cfg, prog, i, steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        # Drawn for the global batch: each rank attacks its images as one process would.
        noise = None
        if random_start:
            global_shape = (len(y) * run.dist.world, *x.shape[1:])
            noise = run.dist.shard(start_noise(global_shape, attack_gen))
        steps_before = prog.step
        out = train_step(
            run.trained,
            run.optimizer,
            x,
            y,
            cfg,
            run.method,
            prog,
            attack_gen,
            noise=noise,
            state=step_state,
        )
        accumulate(sums, out, y)
        watch.update(out.loss, i)
        bar.update(1)
        if show and (i % 10 == 0 or i == steps - 1):
            if not run.dist.enabled:  # .item() syncs here anyway (rank 0 alone shows a bar)
                _check_finite(run, watch, epoch)
            rate = (i + 1 - start) * t.batch_size / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{out.loss.item():.3f}", lr=f"{lr:.4f}", img_s=f"{rate:.0f}")
        stop = run.dist.agree(run.stop.signum is not None)
        due = every and prog.step // every > steps_before // every
        if i < steps - 1 and (stop or due):
            _check_finite(run, watch, epoch)
            state.batch, state.step = i + 1, prog.step
            partial = run.dist.all_reduce_(sums.clone())
            state.sums = partial.tolist()
            if run.dist.enabled:  # go on from the split a resume starts from (same rounding)
                sums = partial if run.dist.is_main else torch.zeros_like(sums)
            state.delta = step_state.delta
            state.seconds = resumed_seconds + time.perf_counter() - started
            state.attack_rng = attack_gen.get_state()
            # Rank 0's BN statistics on every rank, as a resume will have them: a resumed
            # run goes on exactly as this one does
            run.dist.broadcast_buffers(run.model)
            run.writer.save_last(_resume_state(run))
            if stop:
                _stopped(run, f"epoch {epoch + 1}, after batch {i + 1}/{steps}")
    bar.close()
    _check_finite(run, watch, epoch)
    run.dist.all_reduce_(sums)  # the global batch's figures
    loss_sum, clean_sum, adv_sum, count = sums.tolist()  # syncs: the timing is honest
    seconds = resumed_seconds + time.perf_counter() - started
    state.batch, state.sums, state.seconds, state.attack_rng = 0, [0.0] * 4, 0.0, None
    state.delta = step_state.delta
    attacked = attacks_in_training(cfg)
    return {
        "epoch": epoch + 1,
        "step": prog.step,
        "lr": lr,
        "lr_first": _lr_at(cfg, prog, 0, steps),  # shows a stage's warm-up (or none)
        "train_loss": loss_sum / count,
        "train_clean_acc": clean_sum / count if (t.beta > 0 or not attacked) else None,
        "train_adv_acc": adv_sum / count if attacked else None,
        "train_images": count,  # examples trained on this epoch (for equal-budget comparisons)
        "images_per_sec": count / seconds,
        "train_seconds": seconds,
        "resumed_seconds": resumed_seconds,  # (popped by the caller into wall_seconds)
    }


def _lr_at(cfg: Config, prog: Progress, batch: int, steps: int) -> float:
    """The LR of the epoch's ``batch``-th step: the stage's schedule restarted at its own
    peak, warmed up or not (``Stage.lr``, ``Stage.warmup``)."""
    stage = prog.stage
    return learning_rate(
        cfg,
        prog.epoch - prog.stage_start + batch / steps,
        1 / steps,
        prog.stage_epochs,
        peak=stage.lr if stage else None,
        warmup=stage.warmup if stage else True,
    )


def _collapsed(run: _Run, record: dict[str, Any]) -> bool:
    """A single-step training mode's catastrophic overfitting, seen on validation.

    Robust accuracy under PGD falls to under half of the best epoch's (and by at least 2
    points) within an epoch or two when FGSM-trained networks overfit catastrophically
    (Wong et al. 2020); multi-step PGD training does not, so it is never stopped.
    """
    value, best = record.get("val_pgd_acc"), run.state.best_val
    if not train_mode(run.cfg).single_step or value is None or best <= 0:
        return False
    return bool(value < 0.5 * best and best - value >= 0.02)


def _check_finite(run: _Run, watch: FiniteWatch, epoch: int) -> None:
    """Stop before a non-finite loss's state is saved (every rank, if any rank saw one)."""
    bad = watch.bad_batch()
    if run.dist.agree(bad is not None):
        where = f"batch {bad + 1}" if bad is not None else "a batch of another rank"
        last = run.writer.run.last_checkpoint
        kept = f"{last} holds the last good one" if last.exists() else "nothing was saved yet"
        raise NonFiniteLossError(
            f"the training loss became NaN or infinite at epoch {epoch + 1}, {where}; "
            f"the run stopped without saving that state ({kept}). Lower train.lr or raise "
            "train.warmup_epochs and start again (train.init_from can start from a finished run)"
        )


def _stopped(run: _Run, where: str) -> None:
    """The state at ``where`` is saved: stop with how to continue."""
    signum = run.stop.signum or signal.SIGTERM
    raise TrainingStopped(
        f"stopped by {signal.Signals(signum).name} at {where}; the state is saved. "
        f"Continue with: dnr train --resume --out {run.writer.path} "
        "(under torchrun, the same launcher with --resume)",
        signum,
    )


def _validate(run: _Run, epoch: int) -> dict[str, float]:
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


def _selection_value(run: _Run, record: dict[str, Any], epoch: int) -> float | None:
    """Select on validation PGD accuracy; without a validation split, keep the last epoch."""
    if "val_pgd_acc" in record:
        return record["val_pgd_acc"]
    if len(run.data.val.y) == 0 and epoch == run.cfg.train.epochs - 1:
        return float("inf")
    return None


def _best_state(run: _Run, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "model": run.model.state_dict(),
        "sparsity": run.method.state_dict(),
        "val_clean_acc": record.get("val_clean_acc"),
        "val_pgd_acc": record.get("val_pgd_acc"),
    }


def _resume_state(run: _Run) -> dict[str, Any]:
    return {
        "config": run.cfg.to_dict(),
        "state": run.state.state_dict(),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "sparsity": run.method.state_dict(),
        "rng_cpu": torch.get_rng_state(),
    }


def _rank_checksum(run: _Run) -> torch.Tensor:
    """Checksums of every weight and every tensor of the method's state (its masks)."""
    return tensor_checksum([*run.model.parameters(), *_tensors(run.method.state_dict())])


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for key in sorted(value, key=str) for t in _tensors(value[key])]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    return []


def _finish(run: _Run) -> TrainResult:
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


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    parts = [
        f"epoch {record['epoch']}/{epochs}",
        f"loss {record['train_loss']:.3f}",
        f"train clean {_fmt(record['train_clean_acc'])} adv {_fmt(record['train_adv_acc'])}",
    ]
    if "val_pgd_acc" in record:
        parts.append(f"val clean {_fmt(record['val_clean_acc'])} pgd {_fmt(record['val_pgd_acc'])}")
    if "density" in record:
        parts.append(f"density {record['density']:.4f}")
    parts.append(f"{record['images_per_sec']:.0f} img/s")
    return " | ".join(parts)
