"""Where a training step's time goes: per-phase wall time by hooks, operator groups by
``torch.profiler``.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from benchlib.machine import now, sync
from benchlib.throughput.cases import Case


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
        """Seconds, once the device is done (a phase boundary)."""
        return now(self.device)

    def wrap(self, label: str | Callable[[], str], fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` that adds its wall time to ``label`` (a name, or a function naming it)."""

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
        """The hooks and wrappers on ``case``'s model, step parts and autograd, then removed."""
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
    """The ``OP_GROUPS`` group an operator belongs to (by name)."""
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
