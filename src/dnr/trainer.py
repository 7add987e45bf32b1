"""The training loop: DNR hybrid loss, SGD with momentum, masks, rewiring, checkpoints.

One readable loop, no framework in the way. Per step::

    x_adv = PGD(model, x, y)                        # BN frozen, input gradient only
    loss  = beta * CE(model(x), y) + (1 - beta) * CE(model(x_adv), y)
    loss.backward(); optimizer.step(); masking.apply_()   # masked weights back to 0

At the end of every epoch: validate (clean + PGD on the held-out split), keep the best
checkpoint by validation PGD accuracy, rewire and refresh the BatchNorm statistics (only
before ``sparsity.rewire_until`` of the run), save resume state.

Reproducibility: every epoch reseeds the global RNG and the batch order from
``(train.seed, epoch)``, so resuming from the checkpoint of epoch ``k`` replays epochs
``k+1...`` exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dnr.artifacts import RunDir, load_checkpoint, save_checkpoint, save_model
from dnr.attacks import pgd
from dnr.config import Config, ConfigError, resolve_device, save_config
from dnr.data import BatchLoader, DatasetSplits, load_dataset
from dnr.evaluate import clean_accuracy, pgd_accuracy
from dnr.fileio import append_jsonl, atomic_write_text, read_jsonl
from dnr.models import create_model, init_weights, refresh_batchnorm_stats
from dnr.sparsity import Masking, cosine_prune_rate

CHECKPOINT_VERSION = 1


class RunExistsError(ConfigError):
    """The output directory already holds a run and --resume was not given."""


def milestone_epochs(cfg: Config) -> list[float]:
    """The multistep milestones in epochs: fractions (< 1) scale with the run's length."""
    t = cfg.train
    return [m * t.epochs if m < 1 else float(m) for m in t.milestones]


def learning_rate(cfg: Config, epoch_progress: float, step_epochs: float = 0.0) -> float:
    """LR at a fractional epoch; a pure function, so resume needs no scheduler state.

    The cosine or multistep value is scaled by a linear warm-up over ``train.warmup_epochs``
    that counts the step being taken (``step_epochs`` = one step's length in epochs), so the
    first step already moves the weights.
    """
    t = cfg.train
    if t.schedule == "cosine":
        lr = 0.5 * t.lr * (1.0 + math.cos(math.pi * min(epoch_progress / t.epochs, 1.0)))
    else:
        passed = sum(1 for m in milestone_epochs(cfg) if epoch_progress >= m - 1e-9)
        lr = t.lr * (t.gamma**passed)
    if t.warmup_epochs > 0:
        lr *= min(1.0, (epoch_progress + step_epochs) / t.warmup_epochs)
    return lr


def schedule_warning(cfg: Config) -> str | None:
    """A message if the learning rate never decays within the run (a silent recipe bug).

    (Milestones outside the run are already rejected by the config's validation.)
    """
    t = cfg.train
    if t.schedule == "multistep" and (t.gamma == 1 or not t.milestones):
        return (
            f"warning: the learning rate never decays in this {t.epochs}-epoch run "
            f"(train.milestones={t.milestones}, train.gamma={t.gamma}); "
            "fractions such as [0.5, 0.75] or train.schedule=cosine scale with the run"
        )
    return None


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


@dataclass
class TrainResult:
    run_dir: Path
    model: nn.Module
    masking: Masking | None
    best_epoch: int
    best_val_pgd: float
    history: list[dict[str, Any]] = field(default_factory=list)


def model_for(cfg: Config, data: DatasetSplits) -> nn.Module:
    """The configured architecture sized for the dataset (classes, image size, statistics)."""
    meta = data.meta
    try:
        model = create_model(
            cfg.model.name,
            num_classes=meta.num_classes,
            input_size=meta.image_size,
            width=cfg.model.width,
            mean=meta.mean,
            std=meta.std,
        )
    except ValueError as err:  # e.g. images of a size the architectures are not defined for
        raise ConfigError(f"model.name={cfg.model.name} on data.name={cfg.data.name}: {err}") from None
    return init_weights(model, cfg.model.init)


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.SGD:
    t = cfg.train
    return torch.optim.SGD(
        model.parameters(),
        lr=t.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        nesterov=t.nesterov,
    )


def build_masking(
    cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer
) -> Masking | None:
    s = cfg.sparsity
    if s.method == "dense":
        return None
    generator = torch.Generator().manual_seed(epoch_seed(cfg.train.seed, -1))
    try:
        return Masking(
            model,
            optimizer,
            density=s.density,
            init=s.init,
            exclude=tuple(s.exclude),
            generator=generator,
            method=s.method,
            regrow_pruned=s.regrow_pruned,
            keep_regrown_values=s.keep_regrown_values,
            protect_channels=s.protect_channels,
            redistribution=s.redistribution,
            grow_momentum=s.grow_momentum,
        )
    except ValueError as err:  # e.g. exclude patterns that leave nothing to prune
        raise ConfigError(f"sparsity: {err}") from None


def _hybrid_loss(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor | None, y: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """beta * CE(clean) + (1 - beta) * CE(adv); plain CE(clean) when there is no attack.

    A forward pass whose weight is 0 is skipped.
    """
    loss = torch.zeros((), device=x.device)
    logits_clean = logits_adv = None
    if x_adv is None:
        logits_clean = model(x)
        return F.cross_entropy(logits_clean, y), logits_clean, None
    if beta > 0:
        logits_clean = model(x)
        loss = loss + beta * F.cross_entropy(logits_clean, y)
    if x_adv is not None:
        logits_adv = model(x_adv)
        loss = loss + (1.0 - beta) * F.cross_entropy(logits_adv, y)
    return loss, logits_clean, logits_adv


def _model_meta(cfg: Config, data: DatasetSplits, masking: Masking | None, extra: dict) -> dict:
    sparsity: dict[str, Any] = {"method": cfg.sparsity.method, "mode": "irregular"}
    if masking is None:
        sparsity.update(target_density=1.0, achieved_density=1.0)
    else:
        sparsity.update(
            target_density=cfg.sparsity.density,
            achieved_density=masking.density(),
            num_prunable=masking.num_prunable,
            num_active=masking.num_active,
            prunable="weights of Conv2d and Linear layers"
            + (f", except {cfg.sparsity.exclude}" if cfg.sparsity.exclude else ""),
            layers={
                name: {
                    "shape": list(masking.layer_shapes[name]),
                    "density": dens,
                    "active": masking.layer_counts()[name],
                }
                for name, dens in masking.layer_densities().items()
            },
        )
    return {
        "classes": data.meta.classes,
        "dataset": {
            "name": cfg.data.name,
            "root": cfg.data.root,
            "train": cfg.data.train,
            "test": cfg.data.test,
        },
        "sparsity": sparsity,
        "training": {
            "beta": cfg.train.beta,
            "epochs": cfg.train.epochs,
            "attack": {
                "eps": cfg.attack.eps,
                "step_size": cfg.attack.step_size,
                "steps": cfg.attack.steps,
                "random_start": cfg.attack.random_start,
            },
        },
        **extra,
    }


def _prepare_run_dir(run: RunDir, cfg: Config, resume: bool) -> dict[str, Any] | None:
    """Return the resume checkpoint, or None for a fresh run; never overwrite a run silently."""
    has_run = run.last_checkpoint.exists() or run.model_weights.exists()
    if not resume:
        if has_run:
            raise RunExistsError(
                f"{run.path} already holds a run; pass --resume to continue it "
                "or choose another --out"
            )
        return None
    if not run.last_checkpoint.exists():
        raise ConfigError(f"--resume: no checkpoint to resume in {run.path / 'checkpoints'}")
    state = load_checkpoint(run.last_checkpoint)
    saved = state.get("config")
    if saved != cfg.to_dict():
        raise ConfigError(
            f"--resume: the configuration differs from the one {run.path} was started with "
            f"({_config_difference(saved, cfg.to_dict())}); see {run.config}"
        )
    return state


def _config_difference(saved: Any, current: dict[str, Any]) -> str:
    """The keys that differ, e.g. for a run started by a version without some options."""
    if not isinstance(saved, dict):
        return "no configuration in the checkpoint"
    keys = []
    for section in sorted(set(saved) | set(current)):
        a, b = saved.get(section) or {}, current.get(section) or {}
        for name in sorted(set(a) | set(b)):
            if name not in a:
                keys.append(f"{section}.{name} is new since that run started")
            elif a.get(name) != b.get(name):
                keys.append(f"{section}.{name}")
    return "differs in " + ", ".join(keys[:6]) + (" ..." if len(keys) > 6 else "")


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    data: DatasetSplits | None = None,
) -> TrainResult:
    """Train per ``cfg`` into ``out_dir``; writes every artifact listed in ``dnr.artifacts``."""
    run = RunDir(Path(out_dir))
    resume_state = _prepare_run_dir(run, cfg, resume)
    if progress is None:
        progress = sys.stderr.isatty()
    device = resolve_device(cfg.train.device)
    t = cfg.train

    torch.manual_seed(epoch_seed(t.seed, -2))
    data = data if data is not None else load_dataset(cfg.data)
    if len(data.train.y) == 0:
        raise ConfigError(f"data: no training images in {cfg.data.name} (data.train is empty?)")
    model = model_for(cfg, data).to(device)
    optimizer = build_optimizer(cfg, model)
    masking = build_masking(cfg, model, optimizer)
    initial_layer_density = masking.layer_densities() if masking is not None else None

    run.path.mkdir(parents=True, exist_ok=True)
    start_epoch, best_val, best_epoch, step = 0, -1.0, -1, 0
    history: list[dict[str, Any]] = []
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if masking is not None:
            masking.load_state_dict(resume_state["masking"])
        start_epoch = int(resume_state["epoch"]) + 1
        best_val, best_epoch = float(resume_state["best_val_pgd"]), int(resume_state["best_epoch"])
        step = int(resume_state["step"])
        torch.set_rng_state(resume_state["rng_cpu"])
        history = _read_history(run.metrics, start_epoch)
        if start_epoch < t.epochs:
            log(f"resuming {run.path} at epoch {start_epoch + 1}/{t.epochs}")
        else:
            log(f"{run.path}: all {t.epochs} epochs were done; writing the final artifacts")
    else:
        save_config(cfg, run.config)
        run.metrics.unlink(missing_ok=True)
        warning = schedule_warning(cfg)
        if warning:
            log(warning)
        if t.val_every > 0 and len(data.val.y) == 0:
            log("note: no validation split (data.val_size=0); the last epoch is kept as best")

    train_loader = BatchLoader(
        data.train, t.batch_size, device, shuffle=True, augment=cfg.data.augment, seed=t.seed
    )
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * t.epochs
    s = cfg.sparsity
    # Masks move only before rewire_until (exclusive); the prune rate anneals over that window.
    rewire_steps = max(1, int(round(s.rewire_until * total_steps)))
    rewiring = masking is not None and s.method == "dnr"
    if rewiring and resume_state is None:
        every = s.rewire_every or steps_per_epoch
        if every >= rewire_steps:
            log(f"warning: no rewiring falls before sparsity.rewire_until={s.rewire_until} of "
                f"this {total_steps}-step run, so DNR trains its initial mask like "
                "sparsity.method=static; rewire more often (sparsity.rewire_every) or later")

    def rewire(step: int, epoch: int) -> dict[str, Any]:
        assert masking is not None
        rate = cosine_prune_rate(step, rewire_steps, s.prune_rate, s.prune_rate_min)
        record = _rewire_record(masking.rewire(rate))
        if s.bn_refresh_batches > 0:  # clean batches of the next epoch: seeded, no RNG drawn
            batches = (x for x, _ in train_loader.epoch(epoch + 1))
            refresh_batchnorm_stats(model, itertools.islice(batches, s.bn_refresh_batches))
        return record

    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if t.bf16
        else contextlib.nullcontext()
    )
    a = cfg.attack
    attack_on = t.beta < 1.0 and a.steps > 0 and a.eps > 0

    for epoch in range(start_epoch, t.epochs):
        torch.manual_seed(epoch_seed(t.seed, epoch))
        # On the training device: random starts need no host-to-device copy per step.
        attack_gen = torch.Generator(device=device).manual_seed(epoch_seed(t.seed, epoch) + 1)
        model.train()
        sums = torch.zeros(4, device=device)  # loss*n, clean correct, adv correct, n
        started = time.perf_counter()
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{t.epochs}",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        rewire_stats: list[dict[str, Any]] = []
        for i, (x, y) in enumerate(train_loader.epoch(epoch)):
            lr = learning_rate(cfg, epoch + i / steps_per_epoch, 1 / steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x_adv = None
            if attack_on:
                x_adv = pgd(
                    model,
                    x,
                    y,
                    eps=a.eps,
                    step_size=a.step_size,
                    steps=a.steps,
                    random_start=a.random_start,
                    generator=attack_gen,
                )
            with autocast:
                loss, logits_clean, logits_adv = _hybrid_loss(model, x, x_adv, y, t.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if masking is not None:
                masking.apply_()
            step += 1

            with torch.no_grad():  # accumulate on the device: no host sync per step
                sums[0] += loss.detach().float() * y.numel()
                sums[3] += y.numel()
                if logits_clean is not None:
                    sums[1] += (logits_clean.argmax(1) == y).sum()
                if logits_adv is not None:
                    sums[2] += (logits_adv.argmax(1) == y).sum()
            if (
                rewiring
                and s.rewire_every > 0
                and step % s.rewire_every == 0
                and step < rewire_steps
            ):
                rewire_stats.append(rewire(step, epoch))
            bar.update(1)
            if progress and (i % 10 == 0 or i == steps_per_epoch - 1):
                rate = (i + 1) * t.batch_size / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4f}", img_s=f"{rate:.0f}")
        bar.close()
        loss_sum, clean_sum, adv_sum, count = sums.tolist()  # syncs: the timing is honest
        train_seconds = time.perf_counter() - started

        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "lr": lr,
            "train_loss": loss_sum / count,
            "train_clean_acc": clean_sum / count if (t.beta > 0 or not attack_on) else None,
            "train_adv_acc": adv_sum / count if attack_on else None,
            "images_per_sec": count / train_seconds,
            "train_seconds": train_seconds,
        }
        last_epoch = epoch == t.epochs - 1
        if len(data.val.y) > 0 and ((epoch + 1) % t.val_every == 0 or last_epoch):
            record["val_clean_acc"] = clean_accuracy(
                model, data.val.x, data.val.y, batch_size=t.eval_batch_size
            )
            record["val_pgd_acc"] = pgd_accuracy(
                model, data.val.x, data.val.y, eps=a.eps, step_size=a.step_size,
                steps=a.steps, batch_size=t.eval_batch_size,
                generator=torch.Generator().manual_seed(t.seed),
            )
        # Select on validation PGD accuracy; without a validation split, keep the last epoch.
        selection = record.get("val_pgd_acc")
        if selection is None and last_epoch and len(data.val.y) == 0:
            selection = float("inf")
        if selection is not None and selection > best_val:
            best_val, best_epoch = selection, epoch + 1
            save_checkpoint(run.best_checkpoint, _best_state(model, masking, epoch, record))

        if masking is not None:
            if epoch == 0:
                record["layer_density_init"] = initial_layer_density
            record["density"] = masking.density()
            if rewiring and s.rewire_every == 0 and step < rewire_steps:
                rewire_stats.append(rewire(step, epoch))
            record["layer_density"] = masking.layer_densities()
            record["density_after_rewire"] = masking.density()
            if rewire_stats:
                record["rewire"] = rewire_stats
        record["wall_seconds"] = time.perf_counter() - started
        append_jsonl(run.metrics, record)
        history.append(record)
        save_checkpoint(
            run.last_checkpoint,
            {
                "version": CHECKPOINT_VERSION,
                "config": cfg.to_dict(),
                "epoch": epoch,
                "step": step,
                "best_val_pgd": best_val,
                "best_epoch": best_epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "masking": masking.state_dict() if masking is not None else None,
                "rng_cpu": torch.get_rng_state(),
            },
        )
        log(_epoch_line(record, t.epochs))

    # The deployed model is the best epoch on validation PGD accuracy.
    best = load_checkpoint(run.best_checkpoint, map_location=device)
    model.load_state_dict(best["model"])
    if masking is not None:
        masking.load_state_dict(best["masking"])
    save_model(
        run.path,
        model,
        _model_meta(
            cfg,
            data,
            masking,
            {"selection": {"by": "val_pgd_acc", "epoch": best_epoch, "value": best_val}},
        ),
    )
    return TrainResult(run.path, model.eval(), masking, best_epoch, best_val, history)


def _best_state(model: nn.Module, masking: Masking | None, epoch: int, record: dict) -> dict:
    return {
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "model": model.state_dict(),
        "masking": masking.state_dict() if masking is not None else None,
        "val_clean_acc": record.get("val_clean_acc"),
        "val_pgd_acc": record.get("val_pgd_acc"),
    }


def _rewire_record(stats: Any) -> dict[str, Any]:
    return {
        "prune_rate": stats.prune_rate,
        "lost": stats.lost,
        "regrown": stats.regrown,
    }


def _read_history(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    """Metrics of the epochs already done; lines of epochs to be replayed are dropped."""
    kept = [r for r in read_jsonl(path) if r.get("epoch", 0) <= upto_epoch]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


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
