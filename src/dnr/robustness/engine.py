"""The batched attack engine: fp32 evaluation context, clean/attack loops, subsets.

Everything runs in fp32 (autocast disabled, TF32 off on CUDA); a model whose parameters are
not fp32, or live on another device, is evaluated as an fp32 copy, and the caller's model is
left exactly as it was (modes and ``requires_grad`` restored). PGD restarts run only on the
examples that survived the earlier restarts (as AutoAttack does), and each attack draws its
random starts from a CPU generator seeded by ``derive_seed(seed, attack name)``, so results
do not depend on the accelerator.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dnr.attacks import attack_mode, fgsm, pgd, start_noise
from dnr.robustness.context import EvalContext
from dnr.robustness.protocols import AttackSpec
from dnr.robustness.results import AttackResult, mean
from dnr.seeding import derive_seed

__all__ = [
    "EvaluationError",
    "attack_correct",
    "batches",
    "check_images",
    "default_batch_size",
    "fp32_eval",
    "model_device",
    "predict_correct",
    "progress_bar",
    "progress_enabled",
    "run_attack",
    "select_subset",
    "spec_settings",
    "to_float",
]


class EvaluationError(ValueError):
    """A request that cannot be evaluated as asked (bad option, missing extra, no data)."""


# ----------------------------------------------------------------------------- inputs


def select_subset(num_items: int, subset: int | None, seed: int) -> list[int] | None:
    """Sorted indices of a seeded random subset (None: use all ``num_items``).

    A random subset rather than the first ``subset`` rows: test sets may be sorted by
    class, and a prefix would then contain only a few classes.
    """
    if subset is None or subset >= num_items:
        return None
    if subset <= 0:
        raise EvaluationError(f"subset must be a positive number of examples, got {subset}")
    g = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(num_items, generator=g)[:subset].tolist())


def to_float(x: Tensor) -> Tensor:
    """uint8 images -> float [0,1]; float images are checked to be in [0,1] already."""
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 or float in [0,1], got {x.dtype}")
    return x.float()


def check_images(x: Tensor, y: Tensor) -> None:
    """Refuse malformed inputs up front, before an attack would fail on them mid-run."""
    if x.dim() != 4:
        raise EvaluationError(f"images must be NCHW, got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise EvaluationError(f"labels must be ({x.shape[0]},), got shape {tuple(y.shape)}")
    if x.is_floating_point() and x.numel() and (x.min() < 0 or x.max() > 1):
        raise EvaluationError(
            "float images must lie in [0,1] (models normalize internally); "
            f"got range [{float(x.min()):.3g}, {float(x.max()):.3g}]"
        )


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of ``batch_size`` rows covering ``n`` (the last may be short)."""
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def model_device(model: nn.Module) -> torch.device:
    """Where the model lives (its first parameter or buffer; CPU for a stateless model)."""
    for param in model.parameters():
        return param.device
    for buf in model.buffers():
        return buf.device
    return torch.device("cpu")


def progress_enabled(progress: bool) -> bool:
    """Bars only on a terminal: logs and CI output stay clean."""
    return bool(progress) and sys.stderr.isatty()


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar over batches (a silent one when disabled); tqdm imported only when used."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="batch")


# ----------------------------------------------------------------------------- fp32


@contextlib.contextmanager
def fp32_eval(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """The model in fp32, eval mode, frozen, on ``device``, with autocast and TF32 off.

    A model with non-fp32 floating tensors (bf16 training) or on another device is
    evaluated as a converted copy, so the caller's model is never modified; otherwise the
    model itself is used and its modes / ``requires_grad`` flags are restored afterwards.
    """
    tensors = list(model.parameters()) + list(model.buffers())
    needs_copy = any(
        (t.is_floating_point() and t.dtype != torch.float32) or t.device != device for t in tensors
    )
    m = copy.deepcopy(model).to(device=device, dtype=torch.float32) if needs_copy else model
    with _ieee_fp32(device), attack_mode(m), contextlib.ExitStack() as stack:
        for device_type in sorted({"cpu", device.type}):
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield m


@contextlib.contextmanager
def _ieee_fp32(device: torch.device) -> Iterator[None]:
    """TF32 off for CUDA convolutions and matmuls (restored afterwards).

    Uses the ``fp32_precision`` API where torch has it (mixing it with the legacy
    ``allow_tf32`` flags raises), and the legacy flags on older torch.
    """
    saved: list[tuple[Any, str, Any]] = []
    if device.type == "cuda":
        backends: list[Any] = [
            getattr(torch.backends.cudnn, "conv", None),
            getattr(torch.backends.cuda, "matmul", None),
        ]
        if all(b is not None and hasattr(b, "fp32_precision") for b in backends):
            saved = [(b, "fp32_precision", b.fp32_precision) for b in backends]
            value: Any = "ieee"
        else:
            saved = [
                (torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32),
                (torch.backends.cuda.matmul, "allow_tf32", torch.backends.cuda.matmul.allow_tf32),
            ]
            value = False
        for obj, attr, _ in saved:
            setattr(obj, attr, value)
    try:
        yield
    finally:
        for obj, attr, old in saved:
            setattr(obj, attr, old)


def default_batch_size(
    model: nn.Module, example_shape: Sequence[int], device: torch.device | str
) -> int:
    """A batch size that fits: activation memory of one example (measured with forward
    hooks) × 3 for the backward pass, within half the free GPU memory (2 GiB on CPU),
    clamped to [8, 512]. Override with ``batch_size=`` when it guesses wrong."""
    device = torch.device(device)
    elements = 0

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal elements
        if isinstance(output, Tensor):
            elements += output.numel()

    # TorchScript modules take no hooks: a scripted model from elsewhere is measured by
    # what its non-scripted parts produce, or not at all (then the batch is 512)
    leaves = [
        m
        for m in model.modules()
        if not list(m.children()) and not isinstance(m, torch.jit.ScriptModule)
    ]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with fp32_eval(model, device) as m, torch.no_grad():
            m(torch.zeros(1, *example_shape, device=device))
    finally:
        for h in handles:
            h.remove()
    per_example = max(1, elements) * 4 * 3
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = free // 2
    else:
        budget = 2 * 1024**3
    return int(min(512, max(8, budget // per_example)))


# ----------------------------------------------------------------------------- attacks


def spec_settings(spec: AttackSpec, norm: str, seed: int, batch_size: int) -> dict[str, Any]:
    """The settings recorded next to an attack's accuracy (eval.json, eval.md)."""
    if spec.kind == "clean":
        return {"batch_size": batch_size}
    if spec.kind == "fgsm":
        return {
            "attack": "fgsm",
            "norm": norm,
            "eps": spec.eps,
            "loss": spec.loss,
            "batch_size": batch_size,
        }
    if spec.kind == "pgd":
        return {
            "attack": "pgd",
            "norm": norm,
            "eps": spec.eps,
            "step_size": spec.step_size,
            "steps": spec.steps,
            "restarts": spec.restarts,
            "random_start": spec.random_start,
            "loss": spec.loss,
            "seed": derive_seed(seed, spec.name),
            "batch_size": batch_size,
        }
    raise AssertionError(spec.kind)


@torch.no_grad()
def predict_correct(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> Tensor:
    """Bool (CPU) per example: is the clean input classified correctly.

    ``shard=(rank, world)`` does only batches ``rank, rank + world, ...`` (others stay
    False): summed over the ranks, the result is the single-process one.
    """
    out = torch.zeros(len(y), dtype=torch.bool)
    rank, world = shard
    with progress_bar(math.ceil(len(y) / batch_size), "clean", progress) as bar:
        for b, s in enumerate(batches(len(y), batch_size)):
            if b % world != rank:
                continue
            xb = to_float(x[s].to(device, non_blocking=True))
            out[s] = model(xb).argmax(1).cpu() == y[s].cpu()
            bar.update(1)
    return out


def attack_correct(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    spec: AttackSpec,
    *,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator | None,
    attack_mask: Tensor,
    progress: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> Tensor:
    """Bool (CPU) per example: still correct after ``spec`` (only ``attack_mask`` examples
    are attacked; the rest count as incorrect). Restarts run on survivors only.

    ``shard=(rank, world)``: as in :func:`predict_correct`; a skipped batch still draws its
    random start from ``generator``, so every batch gets the start it gets in one process
    (one restart only: later restarts' sizes depend on other ranks' results).
    """
    rank, world = shard
    if world > 1 and spec.restarts > 1:
        raise ValueError("a sharded attack runs one restart")
    correct = torch.zeros(len(y), dtype=torch.bool)
    idx = attack_mask.nonzero().flatten()
    with progress_bar(math.ceil(len(idx) / batch_size), spec.name, progress) as bar:
        for b, s in enumerate(batches(len(idx), batch_size)):
            rows = idx[s]
            if b % world != rank:
                if spec.kind == "pgd" and spec.random_start and spec.eps > 0:
                    start_noise((len(rows), *x.shape[1:]), generator)
                continue
            xb = to_float(x[rows].to(device, non_blocking=True))
            yb = y[rows].to(device, non_blocking=True)
            alive = torch.ones(len(rows), dtype=torch.bool, device=device)
            for _ in range(spec.restarts):
                live = alive.nonzero().flatten()
                if live.numel() == 0:
                    break
                if spec.kind == "fgsm":
                    x_adv = fgsm(model, xb[live], yb[live], eps=spec.eps)
                else:
                    x_adv = pgd(
                        model,
                        xb[live],
                        yb[live],
                        eps=spec.eps,
                        step_size=spec.step_size,
                        steps=spec.steps,
                        random_start=spec.random_start,
                        restarts=1,
                        loss=spec.loss,
                        generator=generator,
                    )
                with torch.no_grad():
                    hit = model(x_adv).argmax(1) != yb[live]
                alive[live[hit]] = False
            correct[rows] = alive.cpu()
            bar.update(1)
    return correct


def run_attack(ctx: EvalContext, spec: AttackSpec, clean: Tensor) -> AttackResult:
    """One FGSM/PGD attack on the ``clean``-correct examples, as an :class:`AttackResult`."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(derive_seed(ctx.seed, spec.name))
    correct = attack_correct(
        ctx.model,
        ctx.x,
        ctx.y,
        spec,
        batch_size=ctx.batch_size,
        device=ctx.device,
        generator=generator,
        attack_mask=clean,
        progress=ctx.progress,
    )
    correct &= clean
    return AttackResult(
        spec.name,
        mean(correct),
        correct,
        spec_settings(spec, ctx.norm, ctx.seed, ctx.batch_size),
        seconds=time.perf_counter() - started,
    )
