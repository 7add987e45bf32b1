"""ℓ∞ adversarial attacks (FGSM, FGSM-RS, PGD, TRADES's KL-PGD) in [0,1] pixel space.

The attacks are used inside training (crafting x̂ for the training objective) and in evaluation,
so they must leave the model exactly as they found it:

* only the gradient w.r.t. the input is computed (``torch.autograd.grad``, never
  ``.backward()``), with parameters temporarily frozen, so no weight ``.grad`` is created
  or accumulated and no weight-gradient work is done;
* BatchNorm runs in eval mode, so running statistics are never updated;
* every submodule's ``training`` flag and every parameter's ``requires_grad`` are restored
  exactly (see :func:`attack_mode`);
* they run in fp32 even inside an outer (bf16) autocast region (training may ask for bf16
  passes with ``amp=True``), and work under ``torch.no_grad()``.

The step loop has no host synchronisation; with ``restarts > 1`` there is one sync per
restart (to stop early once every example is already misclassified).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LossName = Literal["ce", "cw"]

__all__ = [
    "attack_mode",
    "attack_loss",
    "fgsm",
    "fgsm_rs",
    "gaussian_start",
    "kl_pgd",
    "pgd",
    "small_start_pgd",
    "start_noise",
]


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the duration of an attack; restored exactly.

    Each submodule's own ``training`` flag is recorded and written back (not
    ``model.train(flag)``, which would flatten a mixed-mode model), and each parameter's
    ``requires_grad`` likewise. Restoration happens even if the body raises.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in grads:
            p.requires_grad_(requires_grad)


def attack_loss(logits: Tensor, y: Tensor, loss: LossName = "ce") -> Tensor:
    """Per-example loss the attacker maximises.

    ``"ce"``: cross-entropy. ``"cw"``: CW margin, max other logit − true logit (positive
    iff misclassified); it does not saturate like CE, which matters for strong evaluation.
    """
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "cw":
        true = logits.gather(1, y[:, None]).squeeze(1)
        is_true = F.one_hot(y, logits.shape[1]).bool()
        other = logits.masked_fill(is_true, float("-inf")).amax(dim=1)
        return other - true
    raise ValueError(f"loss must be 'ce' or 'cw', got {loss!r}")


def _work_dtype(x: Tensor) -> torch.dtype:
    """fp32 for half/bf16/fp32 inputs (fp64 stays fp64)."""
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point image tensor in [0,1], got {x.dtype}")
    return torch.promote_types(x.dtype, torch.float32)


def _input_grad(model: nn.Module, x_adv: Tensor, y: Tensor, loss: LossName) -> Tensor:
    """d(sum of per-example losses)/d(input); no graph kept, no weight gradients."""
    x_adv = x_adv.detach().requires_grad_(True)
    per_example = attack_loss(model(x_adv), y, loss)
    (grad,) = torch.autograd.grad(per_example.sum(), x_adv)
    return grad


def _check_eps(eps: float) -> float:
    """``eps`` as a float, refusing a negative (or NaN) radius before any work is done."""
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return eps


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, loss: LossName = "ce") -> Tensor:
    """Fast gradient sign method: one step of size ``eps``, clamped to [0,1].

    Returns a detached tensor with the dtype of ``x``. ``eps`` may also be positional
    (architecture contract) or keyword.
    """
    eps = _check_eps(eps)
    if eps == 0:
        return x.detach().clone()
    dtype = _work_dtype(x)
    with (
        attack_mode(model),
        torch.enable_grad(),
        torch.autocast(device_type=x.device.type, enabled=False),
    ):
        x0 = x.detach().to(dtype)
        grad = _input_grad(model, x0, y, loss)
        x_adv = (x0 + eps * grad.sign()).clamp_(0.0, 1.0)
    return x_adv.detach().to(x.dtype)


def start_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """The uniform [0, 1) draws of one PGD random start, on the generator's device.

    Drawn on the generator's device (CPU by default) so results don't depend on the
    accelerator. Distributed training draws them for the global batch and hands each rank
    its slice (``pgd(noise=)``), so the ranks attack exactly as one process would.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float32)


# ------------------------------------------------------------ projected sign steps (PGD, FGSM-RS)


def _check_noise(x: Tensor, noise: Tensor | None, restarts: int) -> None:
    """Given draws stand for one restart's start and must cover ``x`` exactly."""
    if noise is not None and (restarts > 1 or noise.shape != x.shape):
        raise ValueError("noise: one restart's draws, shaped like x")


@contextlib.contextmanager
def _attacking(model: nn.Module, x: Tensor, amp: bool) -> Iterator[None]:
    """What every projected attack runs under: :func:`attack_mode`, input gradients on (even
    inside ``torch.no_grad()``), and bf16 autocast only when ``amp`` asks for it."""
    with (
        attack_mode(model),
        torch.enable_grad(),
        torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp),
    ):
        yield


def _box(x0: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The ε-ball around ``x0`` intersected with [0,1], as per-pixel bounds."""
    lo = (x0 - eps).clamp_(min=0.0)
    hi = (x0 + eps).clamp_(max=1.0)
    return lo, hi


def _random_start(
    x0: Tensor,
    bounds: tuple[Tensor, Tensor],
    eps: float,
    generator: torch.Generator | None,
    noise: Tensor | None,
) -> Tensor:
    """A uniform point of the ε-ball around ``x0`` (fresh draws, or ``noise``), in the box."""
    draws = start_noise(x0.shape, generator) if noise is None else noise
    x_adv = x0 + (2 * draws - 1).to(device=x0.device, dtype=x0.dtype) * eps
    return torch.clamp(x_adv, *bounds)


def _signed_step(
    model: nn.Module,
    x_adv: Tensor,
    y: Tensor,
    loss: LossName,
    step_size: float,
    bounds: tuple[Tensor, Tensor],
) -> Tensor:
    """One ascent step along the sign of the input gradient, projected back into the box."""
    grad = _input_grad(model, x_adv, y, loss)
    return torch.clamp(x_adv + step_size * grad.sign(), *bounds)


def fgsm_rs(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    amp: bool = False,
) -> Tensor:
    """FGSM from a random start (Wong, Rice & Kolter 2020, "Fast is better than free").

    A uniform start in the ε-ball, one signed step of ``step_size`` (default 1.25·ε, the
    paper's α), projected back to the ε-ball and [0, 1]: one forward and one input-gradient
    pass, for training. It is :func:`pgd` with one step and one restart (same draws, same
    arithmetic), so it shares :func:`pgd`'s guarantees.
    """
    step_size = float(1.25 * eps if step_size is None else step_size)
    eps = _check_eps(eps)
    _check_noise(x, noise, restarts=1)
    if eps == 0:
        return x.detach().clone()
    dtype = _work_dtype(x)
    with _attacking(model, x, amp):
        x0 = x.detach().to(dtype)
        bounds = _box(x0, eps)
        x_adv = _random_start(x0, bounds, eps, generator, noise)
        x_adv = _signed_step(model, x_adv, y, "ce", step_size, bounds)
    return x_adv.detach().to(x.dtype)


class _Candidate(NamedTuple):
    """One restart's adversarial examples with, per example, success and final loss."""

    x: Tensor
    success: Tensor
    loss: Tensor


def _judge(model: nn.Module, x_adv: Tensor, y: Tensor, loss: LossName) -> _Candidate:
    """Score a finished restart (no gradients): did it misclassify, and at what loss."""
    with torch.no_grad():
        logits = model(x_adv)
        success = logits.argmax(dim=1) != y
        final_loss = attack_loss(logits, y, loss)
    return _Candidate(x_adv, success, final_loss)


def _keep_better(best: _Candidate | None, new: _Candidate) -> _Candidate:
    """Per example: keep a success; otherwise take a success or a higher loss."""
    if best is None:
        return new
    take = ~best.success & (new.success | (new.loss > best.loss))
    return _Candidate(
        x=torch.where(take[:, None, None, None], new.x, best.x),
        loss=torch.where(take, new.loss, best.loss),
        success=best.success | new.success,
    )


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    restarts: int = 1,
    loss: LossName = "ce",
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    amp: bool = False,
) -> Tensor:
    """Projected gradient descent (ℓ∞, sign steps) within ``eps`` of ``x`` and inside [0,1].

    ``random_start`` draws a uniform start in the ε-ball (:func:`start_noise` from
    ``generator``, or the given ``noise`` of ``x``'s shape; one restart only). With
    ``restarts > 1`` each example keeps the first restart that misclassifies it, otherwise
    the one with the highest final loss; with the same seed the first restart equals the
    ``restarts=1`` result, so restarts never weaken the attack. Returns a detached tensor
    with the dtype of ``x``. ``amp`` runs the model's passes in bf16 autocast (training
    attacks only; an evaluation stays in fp32).
    """
    eps = _check_eps(eps)
    step_size = float(step_size)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if loss not in ("ce", "cw"):
        raise ValueError(f"loss must be 'ce' or 'cw', got {loss!r}")
    _check_noise(x, noise, restarts)
    if eps == 0 or (steps == 0 and not random_start):
        return x.detach().clone()

    dtype = _work_dtype(x)
    with _attacking(model, x, amp):
        x0 = x.detach().to(dtype)
        bounds = _box(x0, eps)
        best: _Candidate | None = None
        for _ in range(restarts):
            x_adv = _random_start(x0, bounds, eps, generator, noise) if random_start else x0.clone()
            for _ in range(steps):
                x_adv = _signed_step(model, x_adv, y, loss, step_size, bounds)
            if restarts == 1:
                break  # a single restart needs no judging: it is the result
            best = _keep_better(best, _judge(model, x_adv, y, loss))
            if bool(best.success.all()):  # one sync per restart: nothing left to attack
                break
    result = x_adv if best is None else best.x
    return result.detach().to(x.dtype)


# ------------------------------------------------- the TRADES / MART releases' attacks


def gaussian_start(
    x0: Tensor, scale: float, generator: torch.Generator | None, noise: Tensor | None
) -> Tensor:
    """``x0 + scale * N(0, 1)``, unclamped, as the TRADES and MART releases start.

    The normal draws are the inverse normal CDF of uniform [0, 1) draws (:func:`start_noise`
    from ``generator``, or the given ``noise``), so that distributed ranks, which receive
    their slice of the global batch's uniform draws, start exactly as one process would.
    """
    draws = start_noise(x0.shape, generator) if noise is None else noise
    tiny = torch.finfo(torch.float32).eps  # keep erfinv finite at a draw of exactly 0
    u = draws.to(device=x0.device, dtype=torch.float32).clamp(tiny, 1.0 - tiny)
    normal = torch.special.erfinv(2.0 * u - 1.0) * math.sqrt(2.0)
    return x0 + scale * normal.to(x0.dtype)


Objective = Callable[[Tensor, Tensor], Tensor]


def _ce_sum(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), y, reduction="sum")


def _kl_from_clean(model: nn.Module, x0: Tensor) -> Objective:
    """TRADES's attack objective: the batch's summed KL(f(x) || f(x_adv)); f(x) is fixed
    (BN in eval mode makes it the same at every step, as the release recomputes it)."""
    with torch.no_grad():
        clean = F.softmax(model(x0).float(), dim=1)

    def kl(logits: Tensor, _y: Tensor) -> Tensor:
        return F.kl_div(F.log_softmax(logits.float(), dim=1), clean, reduction="sum")

    return kl


def _release_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    objective: Callable[[nn.Module, Tensor], Objective],
    settings: tuple[float, float, int, float],
    generator: torch.Generator | None,
    noise: Tensor | None,
    amp: bool,
) -> Tensor:
    """The releases' loop: from ``x + scale * N(0, 1)`` (unclamped), ``steps`` signed
    ascent steps, each projected into the ε-ball and [0, 1]."""
    eps, step_size, steps, scale = settings
    eps = _check_eps(eps)
    _check_noise(x, noise, restarts=1)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if eps == 0:
        return x.detach().clone()
    with _attacking(model, x, amp):
        x0 = x.detach().to(_work_dtype(x))
        loss = objective(model, x0)
        bounds = _box(x0, eps)
        x_adv = gaussian_start(x0, scale, generator, noise)
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss(model(x_adv), y), x_adv)
            x_adv = torch.clamp(x_adv.detach() + float(step_size) * grad.sign(), *bounds)
        x_adv = x_adv.clamp(0.0, 1.0)
    return x_adv.detach().to(x.dtype)


def kl_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    start_scale: float = 0.001,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    amp: bool = False,
) -> Tensor:
    """TRADES's attack (Zhang et al. 2019, released ``trades_loss``): maximise
    KL(f(x) || f(x_adv)) by signed steps from ``x + start_scale * N(0, 1)``.

    ``y`` plays no part. The start must be random: at ``x_adv == x`` the KL's gradient is
    zero. Same guarantees as :func:`pgd` (BN in eval mode, input gradient only).
    """
    settings = (eps, step_size, steps, start_scale)
    return _release_pgd(model, x, y, _kl_from_clean, settings, generator, noise, amp)


def small_start_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    start_scale: float = 0.001,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    amp: bool = False,
) -> Tensor:
    """MART's attack (Wang et al. 2020, released ``mart_loss``): PGD on cross-entropy from
    ``x + start_scale * N(0, 1)`` instead of :func:`pgd`'s uniform start in the ε-ball."""
    settings = (eps, step_size, steps, start_scale)
    return _release_pgd(model, x, y, lambda _m, _x: _ce_sum, settings, generator, noise, amp)
