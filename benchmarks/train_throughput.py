"""Training throughput of our DNR adversarial-training pipeline, next to dense AT and a
reference-style loop; achieved FLOP/s; where a step's time goes.

Measures our public step, ``dnr.training.train_step`` (attack, hybrid loss, SGD, the sparsity
method's after-step hook), fed by our device-resident ``dnr.data.BatchLoader`` (augmented,
shuffled), with the loop's on-device metric sums -- i.e. the training loop without its
progress bar and checkpoints -- for

* methods: dense AT, DNR irregular (``sparsity.method=dnr``, density 0.05) and DNR channel
  (``sparsity.granularity=channel``, density 0.1);
* models: VGG16 and ResNet-18 (``--width 0.25`` on a CPU, ``--width 1.0`` on a GPU);
* training modes (``attack.train_mode``): ``pgd`` (PGD-7), ``fgsm_rs`` and ``free``
  (``attack.replays`` optimizer steps per batch);
* with ``--reference``: ``reference_loop.py``, the way the released DNR/HYDRA code trains
  (DataLoader + per-image PIL transforms, ``loss.backward()`` inside PGD with
  eval/train toggles, fp32, masks multiplied into the weights with host-side bookkeeping,
  ``.item()`` every step) on the same model, data, batch and attack: our speed-up over it.

Per-image cost: each repeat times a short and a long slice of an epoch (``--short`` and
``--long`` batches, each from the start of a fresh epoch, after ``--warmup`` untimed
steps) and takes the difference, so fixed costs (epoch start, DataLoader workers, the final
sync) cancel; the median over ``--repeats`` is reported. All cases of a model are built
first and measured interleaved, so drift of the machine hits every row alike; every ratio
compares figures from this one process.

Achieved FLOP/s: MACs of one forward (``dnr.costs.model_costs``; Conv2d/Linear only, dense
counts since masked weights are still multiplied) x 2 x passes (rule in the output) per
image, divided by the measured per-image time, as a fraction of the same process's best
large square ``torch.mm``. The profile times each phase of a few steps (forward/backward
of the attack and of the update, optimizer, masking hook, data) and groups the
``torch.profiler`` operator self-times.

    python benchmarks/train_throughput.py --reference            # full CPU table, ~10 min
    python benchmarks/train_throughput.py --reference --quick    # VGG16, dense + DNR, ~1 min
    python benchmarks/train_throughput.py --device cuda --width 1.0 --batch-size 128,512 \\
        --reference --workers 8                                  # on a GPU
    python benchmarks/train_throughput.py --bf16 --channels-last # optimisations (if present)

Writes ``results/train_throughput_<device>.{json,md}`` (``--name``/``--out`` to change).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchutil import (
    RESULTS,
    load_images,
    machine_info,
    machine_lines,
    now,
    spread,
    sync,
    write_results,
)
from dnr.config import load_config
from dnr.costs import model_costs
from dnr.data.loader import BatchLoader, Split
from dnr.devices import resolve_device
from dnr.markdown import markdown_table
from dnr.models import create_model, init_weights
from dnr.sparsity import Progress
from dnr.training import build_optimizer, build_training_parts, train_step
from dnr.training.step import StepState, accumulate, train_mode
from reference_loop import ReferenceTrainer, make_loader, reference_masks

METHODS: dict[str, list[str]] = {
    "dense": ["sparsity.method=dense"],
    "dnr": ["sparsity.method=dnr", "sparsity.density=0.05"],
    "dnr_channel": ["sparsity.method=dnr", "sparsity.granularity=channel", "sparsity.density=0.1"],
}
METHOD_LABELS = {
    "dense": "dense AT",
    "dnr": "DNR irregular d=0.05",
    "dnr_channel": "DNR channel d=0.1",
}


def mode_overrides(mode: str, replays: int) -> list[str]:
    """Config overrides of a training mode (``attack.train_mode``)."""
    if mode == "free":
        return ["attack.train_mode=free", f"attack.replays={replays}"]
    return [f"attack.train_mode={mode}"]


def optional_overrides(args: argparse.Namespace) -> list[str]:
    """Overrides for --bf16/--channels-last/--compile."""
    flags = ("bf16", "channels_last", "compile")
    return [f"train.{flag}=true" for flag in flags if getattr(args, flag)]


def forward_passes(cfg: Any) -> dict[str, float]:
    """Forward-pass equivalents of one ``train_step`` call, by two counting rules.

    ``conventional``: every backward costs 2 forwards (input and weight gradients), so a
    forward+backward is 3 -- the usual "3x forward" count, and exactly the work of the
    reference loop, whose attack calls ``loss.backward()``. ``needed``: a backward to the
    input only (our attack: parameters frozen, ``autograd.grad`` w.r.t. the input) costs 1
    forward, since the weight-gradient half is skipped.
    PGD-k hybrid: k attack forward+backward, then 2 forwards (clean, adversarial) and one
    backward through both: conventional 3k + 6, needed 2k + 6. FGSM-RS: k = 1. Free with m
    replays: m hybrid updates (2 forwards + backward, whose input gradient moves the
    perturbation): 6m by both rules.
    """
    beta = cfg.train.beta
    train_fwd = 2 if 0 < beta < 1 else 1
    update = 3 * train_fwd
    mode = cfg.attack.train_mode
    if beta >= 1 or cfg.attack.eps <= 0:
        return {"conventional": float(train_fwd * 3), "needed": float(train_fwd * 3)}
    if mode == "free":
        m = train_mode(cfg).replays(cfg)
        return {"conventional": float(update * m), "needed": float(update * m)}
    k = 1 if mode == "fgsm_rs" else int(cfg.attack.steps)
    return {"conventional": float(3 * k + update), "needed": float(2 * k + update)}


# ---------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One row: a pipeline (ours or the reference) for one method and mode of one model."""

    pipeline: str  # "ours" | "reference"
    method: str
    mode: str
    cfg: Any
    model: nn.Module
    run: Callable[[int, int], float]  # (batches, epoch) -> seconds
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # profiling: data ...
    train_one: Callable[[torch.Tensor, torch.Tensor], None]  # ... and one step on it
    hooks: dict[str, Any] = field(default_factory=dict)  # what the phase timer wraps
    per_image: list[float] = field(default_factory=list)
    slices: list[tuple[float, float]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.pipeline}/{self.method}/{self.mode}"


def endless(epoch: Callable[[int], Iterator]) -> Callable[[], Any]:
    """``next`` over consecutive epochs (for profiling steps outside the timed slices)."""
    state = {"epoch": 0, "it": epoch(0)}

    def next_batch() -> Any:
        try:
            return next(state["it"])
        except StopIteration:
            state["epoch"] += 1
            state["it"] = epoch(state["epoch"])
            return next(state["it"])

    return next_batch


def build_model(name: str, width: float, init: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # every case of a model starts from the same weights
    model = create_model(name, num_classes=10, width=width)  # CIFAR mean/std by default
    return init_weights(model, init)


def ours_case(
    name: str,
    method: str,
    mode: str,
    overrides: list[str],
    split: Split,
    batch: int,
    device: torch.device,
    seed: int,
) -> Case:
    """Our pipeline as the training loop sets it up (dnr.training.build_training_parts)."""
    cfg = load_config(None, overrides)
    t = cfg.train
    model = build_model(name, cfg.model.width, cfg.model.init, seed)
    parts = build_training_parts(cfg, model, device, masks_seed=seed)
    model, optimizer, sparsity = parts.model, parts.optimizer, parts.method
    loader = BatchLoader(split, batch, device, shuffle=True, augment=True, seed=seed)
    if t.compile:
        model.compile()
    steps = train_mode(cfg).replays(cfg)
    # rewiring happens at epoch ends (rewire_every=0), outside the measured steps
    progress = Progress(step=0, epoch=0, epochs=1, steps_per_epoch=len(loader) * steps)
    gen = torch.Generator(device=device).manual_seed(seed)
    state = StepState()  # free training's perturbation, carried between steps
    sums = torch.zeros(4, device=device)
    model.train()

    def one(x: torch.Tensor, y: torch.Tensor) -> None:
        for group in optimizer.param_groups:  # the loop sets the LR every step
            group["lr"] = t.lr
        out = train_step(model, optimizer, x, y, cfg, sparsity, progress, gen, state=state)
        accumulate(sums, out, y)  # the loop's on-device sums (no host sync per step)

    def run(batches: int, epoch: int) -> float:
        start = now(device)
        it = loader.epoch(epoch)
        for _ in range(batches):
            one(*next(it))
        sums.tolist()  # the loop reads its sums once per epoch: a sync, so timing is honest
        return time.perf_counter() - start

    hooks = {"optimizer": optimizer, "method": sparsity}
    batches = endless(lambda epoch: loader.epoch(100_000 + epoch))
    return Case("ours", method, mode, cfg, model, run, batches, one, hooks)


def reference_case(
    name: str,
    method: str,
    overrides: list[str],
    x: np.ndarray,
    y: np.ndarray,
    batch: int,
    device: torch.device,
    seed: int,
    workers: int,
) -> Case:
    """reference_loop.py on the same model (weights), data, batch and attack."""
    cfg = load_config(None, overrides)
    a = cfg.attack
    model = build_model(name, cfg.model.width, cfg.model.init, seed).to(device)
    optimizer = build_optimizer(cfg, model)  # the same SGD settings
    masks = None
    if method != "dense":
        masks = reference_masks(model, cfg.sparsity.density, torch.Generator().manual_seed(seed))
    trainer = ReferenceTrainer(
        model,
        optimizer,
        device,
        masks=masks,
        eps=a.eps,
        step_size=a.step_size,
        steps=a.steps,
        beta=cfg.train.beta,
    )
    loader = make_loader(x, y, batch, workers, pin_memory=device.type == "cuda", seed=seed)

    def run(batches: int, epoch: int) -> float:
        start = now(device)
        it = iter(loader)  # a new epoch: the released code starts its workers here
        for _ in range(batches):
            trainer.step(*next(it))
        sync(device)
        elapsed = time.perf_counter() - start
        del it  # worker shutdown outside the clock
        return elapsed

    hooks = {"optimizer": optimizer, "trainer": trainer}
    batches = endless(lambda _epoch: iter(loader))
    return Case("reference", method, "pgd", cfg, model, run, batches, trainer.step, hooks)


# ---------------------------------------------------------------------------- peak FLOP/s


def matmul_flops(device: torch.device, dtype: torch.dtype, sizes: list[int], repeats: int) -> dict:
    """Best FLOP/s of square ``torch.mm`` over ``sizes`` (2 n^3 per product)."""
    best: dict[str, Any] = {"flops": 0.0}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        torch.mm(a, b)  # warm-up
        for _ in range(repeats):
            start = now(device)
            torch.mm(a, b)
            seconds = now(device) - start
            if 2 * n**3 / seconds > best["flops"]:
                best = {"flops": 2 * n**3 / seconds, "n": n, "seconds": seconds}
        del a, b
    return best


def matmul_peaks(device: torch.device, quick: bool, bf16: bool) -> dict[str, dict]:
    sizes = [2048] if quick else [2048, 4096]
    repeats = 2 if quick else 3
    peaks: dict[str, dict] = {}
    if device.type == "cuda":
        sizes = [4096, 8192]
        saved = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            peaks["fp32"] = matmul_flops(device, torch.float32, sizes, repeats + 5)
            torch.backends.cuda.matmul.allow_tf32 = True
            peaks["tf32"] = matmul_flops(device, torch.float32, sizes, repeats + 5)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
        peaks["bf16"] = matmul_flops(device, torch.bfloat16, sizes, repeats + 5)
    else:
        peaks["fp32"] = matmul_flops(device, torch.float32, sizes, repeats)
        if bf16:  # small: CPUs without native bf16 (no AVX512-BF16/AMX) run it at ~1 GFLOP/s
            peaks["bf16"] = matmul_flops(device, torch.bfloat16, [512], 2)
    return peaks


def compute_precision(device: torch.device, bf16: bool) -> str:
    """The matmul precision the training convolutions effectively run in."""
    if bf16:
        return "bf16"
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "fp32"


# ---------------------------------------------------------------------------- profile


class PhaseTimer:
    """Wall time per phase of a training step, by hooks (synchronising at every boundary).

    A forward of the model is the attack's when the model is in eval mode or has no
    parameter requiring a gradient (our attack freezes them; the reference toggles eval);
    the next ``backward``/``autograd.grad`` belongs to the same phase. ``optimizer.step``,
    the masking hook (our ``method.after_step``, the reference's ``apply_mask``) and the
    data (``next`` of the loader) are wrapped; the rest of the step is "other" (the
    attack's sign/clamp updates, losses, zero_grad, metric sums, Python).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.phase = "train"
        self._start = 0.0

    def clock(self) -> float:
        return now(self.device)

    def wrap(self, label: str | Callable[[], str], fn: Callable) -> Callable:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                name = label() if callable(label) else label
                self.seconds[name] += self.clock() - start

        return wrapped

    @contextlib.contextmanager
    def installed(self, case: Case) -> Iterator[None]:
        model, restore = case.model, []

        def pre(module: nn.Module, _inputs: Any) -> None:
            frozen = not any(p.requires_grad for p in module.parameters())
            self.phase = "attack" if (frozen or not module.training) else "train"
            self._start = self.clock()

        def post(module: nn.Module, _inputs: Any, _out: Any) -> None:
            self.seconds[f"{self.phase} forward"] += self.clock() - self._start

        handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
        backward_label = lambda: f"{self.phase} backward"  # noqa: E731
        grad, backward = torch.autograd.grad, torch.Tensor.backward
        torch.autograd.grad = self.wrap(backward_label, grad)
        torch.Tensor.backward = self.wrap(backward_label, backward)  # type: ignore[method-assign]
        h = case.hooks
        targets = [(h["optimizer"], "step", "optimizer step")]
        if "method" in h:
            targets.append((h["method"], "after_step", "masking hook (after_step)"))
        if "trainer" in h and h["trainer"].masks is not None:
            targets.append((h["trainer"], "apply_mask", "masking hook (after_step)"))
        for obj, attr, label in targets:
            setattr(obj, attr, self.wrap(label, getattr(obj, attr)))
            restore.append((obj, attr))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            torch.autograd.grad, torch.Tensor.backward = grad, backward  # type: ignore
            for obj, attr in restore:
                delattr(obj, attr)  # back to the class's method


def profile_phases(case: Case, device: torch.device, steps: int) -> dict[str, float]:
    """Mean seconds per phase of one ``train_step`` call (data included)."""
    timer = PhaseTimer(device)

    def step() -> None:
        start = timer.clock()
        x, y = case.next_batch()
        timer.seconds["data"] += timer.clock() - start
        case.train_one(x, y)

    with timer.installed(case):
        step()  # untimed: a fresh iterator (workers), and any first-call effects
        timer.seconds.clear()
        start = timer.clock()
        for _ in range(steps):
            step()
        total = timer.clock() - start
    phases = {k: v / steps for k, v in timer.seconds.items()}
    phases["other"] = max(total / steps - sum(phases.values()), 0.0)
    phases["total"] = total / steps
    return phases


OP_GROUPS = (
    ("convolution", ("conv", "mkldnn_convolution", "cudnn_convolution", "_convolution")),
    ("matmul (linear)", ("addmm", "aten::mm", "aten::bmm", "matmul", "linear")),
    ("batch norm", ("batch_norm", "native_batch_norm")),
    ("pooling", ("pool",)),
    ("relu / threshold", ("relu", "threshold")),
    ("optimizer (SGD)", ("sgd", "_foreach", "add_", "mul_")),
    ("copies / layout", ("copy_", "contiguous", "to_copy", "clone", "empty", "as_strided")),
)


def op_group(name: str) -> str:
    low = name.lower()
    for group, needles in OP_GROUPS:
        if any(n in low for n in needles):
            return group
    return "other elementwise / loss / indexing"


def profile_ops(case: Case, device: torch.device, top: int = 10) -> dict[str, Any]:
    """torch.profiler over one step: operator self-times, top ops and groups."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    case.train_one(*case.next_batch())
    sync(device)
    with profile(activities=activities) as prof:
        case.train_one(*case.next_batch())
        sync(device)
    events = prof.key_averages()

    def self_time(evt: Any) -> float:
        if device.type == "cuda":
            return float(
                getattr(evt, "self_device_time_total", getattr(evt, "self_cuda_time_total", 0))
            )
        return float(evt.self_cpu_time_total)

    rows = [(e.key, self_time(e), e.count) for e in events if self_time(e) > 0]
    total = sum(t for _, t, _ in rows) or 1.0
    rows.sort(key=lambda r: -r[1])
    groups: dict[str, float] = defaultdict(float)
    for name, t, _ in rows:
        groups[op_group(name)] += t
    return {
        "clock": "device self time" if device.type == "cuda" else "CPU self time",
        "total_ms": total / 1e3,
        "top": [{"op": n, "ms": t / 1e3, "share": t / total, "calls": c} for n, t, c in rows[:top]],
        "groups": {g: t / total for g, t in sorted(groups.items(), key=lambda kv: -kv[1])},
    }


# ---------------------------------------------------------------------------- measuring


def measure(cases: list[Case], args: argparse.Namespace, batch: int) -> None:
    for case in cases:  # warm-up (allocator, kernel selection, compile)
        case.run(args.warmup, 10_000)
    for r in range(args.repeats):
        order = cases[r % len(cases) :] + cases[: r % len(cases)]  # rotate the order
        for case in order:
            short = case.run(args.short, 2 * r)
            long = case.run(args.long, 2 * r + 1)
            case.slices.append((short, long))
            case.per_image.append(max(long - short, 1e-9) / ((args.long - args.short) * batch))
        print(
            f"  repeat {r + 1}/{args.repeats}: "
            + ", ".join(f"{c.key} {1 / c.per_image[-1]:.0f}" for c in cases)
            + " img/s",
            flush=True,
        )


def conv_channels(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def limits_note(
    model_name: str, width: float, channels: list[int], ops: dict | None, device: torch.device
) -> str:
    parts = [
        f"conv widths {min(channels)}-{max(channels)} channels at width {width:g}"
        + (" (small GEMMs: low arithmetic intensity per call)" if max(channels) <= 128 else "")
    ]
    if ops:
        g = ops["groups"]
        conv = g.get("convolution", 0.0) + g.get("matmul (linear)", 0.0)
        parts.append(
            f"conv/linear kernels {100 * conv:.0f} % of operator time, batch norm "
            f"{100 * g.get('batch norm', 0.0):.0f} %, ReLU/pool/elementwise/copies "
            f"{100 * (1 - conv - g.get('batch norm', 0.0)):.0f} %"
        )
    if device.type == "cpu":
        parts.append("oneDNN 3x3 convs reach only a fraction of GEMM peak on 32x32 maps")
    return "; ".join(parts)


def bench_model(
    name: str,
    batch: int,
    args: argparse.Namespace,
    setup: dict[str, Any],
    out: dict[str, list[dict[str, Any]]],
) -> None:
    """Measure every case of one model at one batch size; append to ``out``'s tables."""
    methods, modes, extra = setup["methods"], setup["modes"], setup["extra"]
    split, x_np, y_np = setup["split"], setup["x"], setup["y"]
    device, peaks, precision = setup["device"], setup["peaks"], setup["precision"]
    rows, refs, flops_rows, profiles = (
        out["results"],
        out["reference"],
        out["flops"],
        out["profiles"],
    )
    base = [
        f"model.name={name}",
        f"model.width={args.width}",
        f"attack.steps={args.steps}",
        f"train.batch_size={batch}",
        f"train.device={device}",
        f"train.seed={args.seed}",
    ]
    print(f"{name} width {args.width:g}, batch {batch}: building cases", flush=True)
    cases = [
        ours_case(
            name,
            method,
            mode,
            base + METHODS[method] + mode_overrides(mode, args.replays) + extra,
            split,
            batch,
            device,
            args.seed,
        )
        for method in methods
        for mode in modes
    ]
    if args.reference:
        for method in args.reference_methods.split(","):
            case = reference_case(
                name,
                method,
                base + METHODS[method],
                x_np,
                y_np,
                batch,
                device,
                args.seed,
                args.workers,
            )
            cases.append(case)
    measure(cases, args, batch)
    plain = build_model(name, args.width, "pytorch", args.seed)  # uncompiled, on the CPU
    costs = model_costs(plain, 32)

    def find(pipeline: str, method: str, mode: str) -> Case | None:
        for c in cases:
            if (c.pipeline, c.method, c.mode) == (pipeline, method, mode):
                return c
        return None

    for c in cases:
        if c.pipeline != "ours":
            continue
        cost = statistics.median(c.per_image)
        dense = find("ours", "dense", c.mode)
        pgd = find("ours", c.method, "pgd")
        steps = train_mode(c.cfg).replays(c.cfg)
        passes = forward_passes(c.cfg)
        rows.append(
            {
                "model": name,
                "width": args.width,
                "batch_size": batch,
                "method": c.method,
                "mode": c.mode,
                "optimizer_steps_per_batch": steps,
                "images_per_sec": 1 / cost,
                "seconds_per_image": cost,
                "spread": spread(c.per_image),
                "per_image_repeats": c.per_image,
                "slices_seconds": c.slices,
                "cost_vs_dense_same_mode": (
                    cost / statistics.median(dense.per_image) if dense else None
                ),
                # free trains epochs/replays passes over the data: a PGD-recipe epoch
                # of free costs 1/replays of a pass over the data
                "recipe_epoch_cost_vs_pgd": (
                    cost / steps / statistics.median(pgd.per_image) if pgd else None
                ),
                "forward_passes": passes,
                "achieved_flops": {k: v * 2 * costs.macs / cost for k, v in passes.items()},
                "weights_finite": bool(
                    torch.isfinite(
                        torch.stack([p.detach().float().sum() for p in c.model.parameters()])
                    ).all()
                ),
            }
        )
    for c in cases:
        if c.pipeline != "reference":
            continue
        ours = find("ours", c.method, "pgd")
        ref_cost = statistics.median(c.per_image)
        refs.append(
            {
                "model": name,
                "width": args.width,
                "batch_size": batch,
                "method": c.method,
                "num_workers": args.workers,
                "reference_images_per_sec": 1 / ref_cost,
                "reference_spread": spread(c.per_image),
                "reference_per_image_repeats": c.per_image,
                "ours_images_per_sec": 1 / statistics.median(ours.per_image) if ours else None,
                "speedup": ref_cost / statistics.median(ours.per_image) if ours else None,
            }
        )

    # FLOP/s of dense AT with PGD (ours), and of the reference
    dense_pgd = find("ours", "dense", "pgd") or find("ours", methods[0], modes[0])
    ops = None
    if args.profile and not args.compile:
        targets = [
            c
            for c in (dense_pgd, find("ours", "dnr", "pgd"), find("ours", "dnr_channel", "pgd"))
            if c
        ]
        targets += [c for c in cases if c.pipeline == "reference"]
        entry: dict[str, Any] = {
            "model": name,
            "batch_size": batch,
            "phases": {},
            "ops": {},
        }
        for c in targets:
            entry["phases"][c.key] = profile_phases(c, device, args.profile_steps)
            entry["ops"][c.key] = profile_ops(c, device)
        profiles.append(entry)
        if dense_pgd is not None:
            ops = entry["ops"].get(dense_pgd.key)
    if dense_pgd is not None:
        cost = statistics.median(dense_pgd.per_image)
        passes = forward_passes(dense_pgd.cfg)
        ref = find("reference", "dense", "pgd") or find("reference", "dnr", "pgd")
        ref_cost = statistics.median(ref.per_image) if ref else None
        flops_rows.append(
            {
                "model": name,
                "width": args.width,
                "batch_size": batch,
                "case": dense_pgd.key,
                "macs_per_image": costs.macs,
                "forward_passes": passes,
                "achieved_flops": {k: v * 2 * costs.macs / cost for k, v in passes.items()},
                "fraction_of_matmul_fp32": {
                    k: v * 2 * costs.macs / cost / peaks["fp32"]["flops"] for k, v in passes.items()
                },
                "precision": precision,
                "fraction_of_matmul_same_precision": {
                    k: v * 2 * costs.macs / cost / peaks[precision]["flops"]
                    for k, v in passes.items()
                }
                if precision in peaks
                else None,
                "reference_case": ref.key if ref else None,
                "reference_achieved_flops_conventional": (
                    passes["conventional"] * 2 * costs.macs / ref_cost if ref_cost else None
                ),
                "note": limits_note(name, args.width, conv_channels(plain), ops, device),
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="default vgg16,resnet18 (quick: vgg16)")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument(
        "--methods", default=None, help=f"{', '.join(METHODS)} (default all; quick: dense,dnr)"
    )
    parser.add_argument("--modes", default="pgd,fgsm_rs,free", help="attack.train_mode values")
    parser.add_argument("--steps", type=int, default=7, help="PGD steps (attack.steps)")
    parser.add_argument("--replays", type=int, default=4, help="free mode: attack.replays")
    parser.add_argument("--batch-size", default="128", help="comma list, e.g. 128,512")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per case")
    parser.add_argument("--short", type=int, default=2, help="batches of the short slice")
    parser.add_argument("--long", type=int, default=6, help="batches of the long slice")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="also the reference loop")
    parser.add_argument("--reference-methods", default="dnr", help="dense and/or dnr")
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--data", default="auto", help="auto | cifar | random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--bf16", action="store_true", help="train.bf16=true")
    parser.add_argument("--channels-last", action="store_true", help="train.channels_last=true")
    parser.add_argument("--compile", action="store_true", help="train.compile=true")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="VGG16, dense + DNR, one short repeat (~1 min)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--name", default=None, help="results file name (default by device)")
    args = parser.parse_args()
    if args.quick:
        args.models = args.models or "vgg16"
        args.methods = args.methods or "dense,dnr"
        args.warmup, args.short, args.long, args.repeats = 1, 1, 3, 1
        args.profile_steps = 1
    args.models = args.models or "vgg16,resnet18"
    args.methods = args.methods or ",".join(METHODS)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.long <= args.short:
        parser.error("--long must be larger than --short")
    device = resolve_device(args.device)
    models = [m for m in args.models.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    batches = [int(b) for b in args.batch_size.split(",")]
    extra, notes = optional_overrides(args), []  # (notes: for the report; none yet)
    modes = [mode for mode in args.modes.split(",") if mode]

    info = machine_info(device)
    print(f"{info['cpu']}; torch {info['torch']}, {info['threads']} threads; {device}")
    peaks = matmul_peaks(device, args.quick, args.bf16)
    print(
        "matmul peak: " + ", ".join(f"{k} {v['flops'] / 1e9:.1f} GFLOP/s" for k, v in peaks.items())
    )
    n_images = max(args.long, args.warmup) * max(batches)  # one epoch holds every slice
    x_np, y_np, origin = load_images(n_images, args.data, args.seed)
    split = Split(torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y_np))

    out: dict[str, list[dict[str, Any]]] = {
        "results": [],
        "reference": [],
        "flops": [],
        "profiles": [],
    }
    setup = {
        "methods": methods,
        "modes": modes,
        "extra": extra,
        "split": split,
        "x": x_np,
        "y": y_np,
        "device": device,
        "peaks": peaks,
        "precision": compute_precision(device, args.bf16),
    }
    for batch in batches:
        for name in models:
            bench_model(name, batch, args, setup, out)

    result = info | {
        "data": origin,
        "images": n_images,
        "settings": {
            k: getattr(args, k)
            for k in (
                "models",
                "width",
                "methods",
                "steps",
                "replays",
                "batch_size",
                "warmup",
                "short",
                "long",
                "repeats",
                "reference",
                "workers",
                "bf16",
                "channels_last",
                "compile",
            )
        }
        | {"modes": modes},
        "notes": notes,
        "matmul_peak": peaks,
        **out,
    }
    md = render_markdown(result, args)
    print(md)
    write_results(args.out, args.name or f"train_throughput_{device.type}", result, md)


# ---------------------------------------------------------------------------- report


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def times(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def ms_share(phases: dict[str, float], phase: str) -> str:
    value = phases.get(phase, 0.0)
    return f"{1e3 * value:.1f} ({100 * value / phases['total']:.0f} %)"


def render_markdown(r: dict[str, Any], args: argparse.Namespace) -> str:
    s = r["settings"]
    lines = [
        "# Training throughput: our DNR adversarial-training pipeline",
        "",
        *machine_lines(r),
        f"- data: {r['images']:,} {r['data']} images, augmented and shuffled by our "
        "device-resident `BatchLoader`; step: `dnr.training.train_step` (attack, hybrid loss "
        "beta 0.5, SGD, the method's after-step hook) plus the loop's on-device metric sums",
        f"- attack eps 8/255; PGD: {s['steps']} steps of 2/255, random start; FGSM-RS: one "
        f"1.25 eps step from a random start; free: {s['replays']} replays per batch "
        f"(optimizer steps), epochs divided by {s['replays']}",
        f"- per-image cost = (t({s['long']} batches) - t({s['short']} batches)) / "
        f"({s['long'] - s['short']} x batch), each slice from a fresh epoch, after "
        f"{s['warmup']} warm-up steps; median of {s['repeats']} interleaved repeats; "
        f"± = half the range of the repeats",
        f"- options: bf16 {s['bf16']}, channels_last {s['channels_last']}, compile {s['compile']}",
    ]
    lines += [f"- {n}" for n in r["notes"]]
    lines += [
        "",
        "## Throughput",
        "",
        "images/s = images of training data per second (a `free` batch is replayed, i.e. "
        "trained on, `replays` times); `× dense` = cost per image relative to dense AT in the "
        "same mode; `recipe epoch × PGD` = cost of one epoch of the PGD recipe relative to "
        "PGD with the same method (for `free`, whose run has epochs/replays passes: per-image "
        "cost / replays).",
        "",
        markdown_table(
            ["model", "batch", "method", "mode", "images/s", "±", "× dense", "recipe epoch × PGD"],
            [
                [
                    row["model"],
                    row["batch_size"],
                    METHOD_LABELS.get(row["method"], row["method"]),
                    row["mode"],
                    f"{row['images_per_sec']:.1f}",
                    pct(row["spread"]),
                    times(row["cost_vs_dense_same_mode"]),
                    times(row["recipe_epoch_cost_vs_pgd"]),
                ]
                for row in r["results"]
            ],
        ),
    ]
    if r["reference"]:
        lines += [
            "",
            "## Ours vs. the reference-style loop (`reference_loop.py`)",
            "",
            "Same model and initial weights, data, batch, attack (PGD, eps 8/255, step 2/255, "
            "random start), hybrid loss and SGD. Reference: DataLoader with per-image PIL "
            f"transforms ({s['workers']} workers, started each epoch), `loss.backward()` in "
            "every attack step (weight gradients too) with eval/train toggles, fp32, masks "
            "multiplied into the weights after every step from a Python dict, `.item()` twice "
            "per step. Ours: as in the table above.",
            "",
            markdown_table(
                [
                    "model",
                    "batch",
                    "method",
                    "reference images/s",
                    "±",
                    "ours images/s",
                    "speed-up",
                ],
                [
                    [
                        f["model"],
                        f["batch_size"],
                        METHOD_LABELS.get(f["method"], f["method"]),
                        f"{f['reference_images_per_sec']:.1f}",
                        pct(f["reference_spread"]),
                        "-"
                        if f["ours_images_per_sec"] is None
                        else f"{f['ours_images_per_sec']:.1f}",
                        "-" if f["speedup"] is None else f"{f['speedup']:.2f}×",
                    ]
                    for f in r["reference"]
                ],
            ),
        ]
    peaks = r["matmul_peak"]
    lines += [
        "",
        "## Achieved FLOP/s",
        "",
        "FLOPs per image = 2 × MACs of one forward (Conv2d + Linear, `dnr.costs.model_costs`; "
        "dense counts, since masked weights are still multiplied) × forward-pass equivalents. "
        "Pass-counting rules: *conventional*: every backward = 2 forwards (input + weight "
        "gradients), so PGD-k hybrid = 3k + 6 (k attack forward+backward, then clean and "
        "adversarial forwards and one backward through both); *needed*: a backward to the "
        "input only = 1 forward (our attack skips weight gradients), so PGD-k hybrid = "
        "2k + 6. Peak: best square `torch.mm` of this process ("
        + ", ".join(
            f"{k} {v['flops'] / 1e9:,.1f} GFLOP/s at n={v.get('n')}" for k, v in peaks.items()
        )
        + "). The reference does the conventional count's work for real.",
        "",
        markdown_table(
            [
                "model",
                "batch",
                "MACs / image",
                "passes (conv. / needed)",
                "ours GFLOP/s (conv. / needed)",
                "fraction of fp32 matmul (conv. / needed)",
                "reference GFLOP/s (conv.)",
                "what limits it",
            ],
            [
                [
                    f["model"],
                    f["batch_size"],
                    f"{f['macs_per_image'] / 1e6:,.1f} M",
                    f"{f['forward_passes']['conventional']:g} / {f['forward_passes']['needed']:g}",
                    f"{f['achieved_flops']['conventional'] / 1e9:,.1f} / "
                    f"{f['achieved_flops']['needed'] / 1e9:,.1f}",
                    f"{pct(f['fraction_of_matmul_fp32']['conventional'])} / "
                    f"{pct(f['fraction_of_matmul_fp32']['needed'])}",
                    "-"
                    if f["reference_achieved_flops_conventional"] is None
                    else f"{f['reference_achieved_flops_conventional'] / 1e9:,.1f}",
                    f["note"],
                ]
                for f in r["flops"]
            ],
        ),
    ]
    if any(f["precision"] != "fp32" for f in r["flops"]):
        lines += [
            "",
            "Against the matmul peak of the precision the convolutions run in: "
            + "; ".join(
                f"{f['model']} batch {f['batch_size']} ({f['precision']}): "
                f"{pct((f['fraction_of_matmul_same_precision'] or {}).get('conventional'))}"
                for f in r["flops"]
            ),
        ]
    if r["profiles"]:
        lines += [
            "",
            "## Where a step's time goes",
            "",
            "Milliseconds per training step (one batch), by phase, timed with hooks that "
            "synchronise at every boundary: forwards of the model (attack: model frozen or in "
            "eval mode), the backward/`autograd.grad` that follows each, `optimizer.step`, the "
            "masking hook, the data (`next` of the loader). *other*: the attack's sign/clamp "
            "updates, losses, `zero_grad`, metric sums, host syncs and Python.",
        ]
        for p in r["profiles"]:
            keys = list(p["phases"])
            phase_names = [
                "data",
                "attack forward",
                "attack backward",
                "train forward",
                "train backward",
                "optimizer step",
                "masking hook (after_step)",
                "other",
                "total",
            ]
            lines += [
                "",
                f"### {p['model']}, batch {p['batch_size']}",
                "",
                markdown_table(
                    ["phase", *keys],
                    [
                        [
                            ph,
                            *(ms_share(p["phases"][k], ph) for k in keys),
                        ]
                        for ph in phase_names
                    ],
                ),
                "",
                "Operator self-time by group (`torch.profiler`, one step):",
                "",
                markdown_table(
                    ["group", *keys],
                    [
                        [g, *(pct(p["ops"][k]["groups"].get(g)) for k in keys)]
                        for g in dict.fromkeys(g for k in keys for g in p["ops"][k]["groups"])
                    ],
                ),
                "",
                f"Top operators of `{keys[0]}`:",
                "",
                markdown_table(
                    ["operator", "ms", "share", "calls"],
                    [
                        [o["op"], f"{o['ms']:.1f}", pct(o["share"]), o["calls"]]
                        for o in p["ops"][keys[0]]["top"]
                    ],
                ),
            ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
