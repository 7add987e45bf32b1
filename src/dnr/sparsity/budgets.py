"""Budgets: how many active weights each layer gets, and which ones, at initialisation.

Pure functions of counts, shapes and tensors (see ``rewiring.py`` for the conventions):
per-layer budgets (uniform, ERK or IGQ, with per-channel floors), random masks, and the
water-filling split of a total over capacity-limited layers that rewiring also uses.
Integer counts are made exact with largest-remainder rounding (ties → lower layer index).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["exact_float_dtype", "layer_budgets", "random_mask", "redistribute"]


def exact_float_dtype(device: torch.device) -> torch.dtype:
    """float64 where the backend has it (exact integer arithmetic up to 2**53), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def _largest_remainder(targets: Tensor, total: int | Tensor, caps: Tensor) -> Tensor:
    """Round real ``targets`` (each clamped to [0, cap]) to integers summing to ``total``.

    Every entry starts at ``floor(target)``. Missing units go one each to the entries with
    the largest fractional parts that are still below their cap; surplus units (possible
    only through float error in the targets) come off the entries with the smallest
    fractional parts. Ties → lower index. Runs without host synchronisation.
    Precondition: ``0 <= total <= caps.sum()`` and the targets sum to ``total`` up to
    rounding error, so the deficit never exceeds the number of entries that can take a unit.
    """
    caps = caps.to(torch.long)
    targets = torch.minimum(targets.clamp_min(0), caps.to(targets.dtype))
    base = torch.minimum(targets.floor().to(torch.long).clamp(min=0), caps)
    frac = targets - base.to(targets.dtype)
    deficit = torch.as_tensor(total, device=base.device, dtype=torch.long) - base.sum()
    idx = torch.arange(base.numel(), device=base.device)

    def ranks(key: Tensor, descending: bool) -> Tensor:
        order = torch.sort(key, descending=descending, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = idx
        return rank

    can_add = base < caps
    add = can_add & (ranks(torch.where(can_add, frac, torch.full_like(frac, -1.0)), True) < deficit)
    can_cut = base > 0
    cut = can_cut & (
        ranks(torch.where(can_cut, frac, torch.full_like(frac, 2.0)), False) < -deficit
    )
    return base + add.to(torch.long) - cut.to(torch.long)


# --------------------------------------------------------------------------- budgets


def _erk_densities(
    numels: Sequence[int], shapes: Sequence[Sequence[int]], density: float
) -> list[float]:
    """Erdős–Rényi-kernel densities (Evci et al., RigL, 2020).

    density_l = eps · (Σ dims_l / Π dims_l), with eps solved so that Σ density_l·numel_l equals
    density·N. A layer whose density would exceed 1 is made dense and eps is re-solved for
    the others; repeat until no layer exceeds 1. (For a Linear layer the kernel dims are
    absent, which is the plain Erdős–Rényi rule.)
    """
    raw = [sum(s) / math.prod(s) for s in shapes]
    total = density * sum(numels)
    dense: set[int] = set()
    while True:
        budget = total - sum(numels[i] for i in dense)
        denom = sum(raw[i] * numels[i] for i in range(len(numels)) if i not in dense)
        if denom <= 0:  # everything dense (density == 1, or rounding at the top)
            return [1.0] * len(numels)
        eps = budget / denom
        over = {i for i in range(len(numels)) if i not in dense and eps * raw[i] > 1.0}
        if not over:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(numels))]
        dense |= over


def _igq_densities(numels: Sequence[int], density: float) -> list[float]:
    """Ideal-gas-quota densities (IGQ, Vysogorets & Kempe 2021), FlyingBird's released init.

    density_l = 1 / (f · numel_l + 1): one "force" f >= 0 shared by all layers, solved so
    that Σ density_l · numel_l = density · N (f = 0 keeps everything; larger layers are
    sparser, small ones stay nearly dense). The release (``sparselearning/igq.py``) finds f
    by bisection to a tolerance of one weight and truncates each layer's count; here f is
    bisected to float precision and the counts are rounded to the exact total by the caller.
    """
    total = density * sum(numels)
    if density >= 1.0 or total <= 0:
        return [1.0 if density >= 1.0 else 0.0] * len(numels)

    def kept(force: float) -> float:  # decreasing in force: N at 0, < L / force beyond
        return sum(n / (force * n + 1.0) for n in numels)

    lo, hi = 0.0, len(numels) / total  # kept(hi) <= L / hi = total
    for _ in range(200):  # halves [lo, hi] down to float resolution (f may be tiny)
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if kept(mid) > total else (lo, mid)
    force = 0.5 * (lo + hi)
    return [1.0 / (force * n + 1.0) for n in numels]


def _init_densities(
    numels: list[int], density: float, init: str, shapes: Sequence[Sequence[int]] | None
) -> list[float]:
    """Per-layer target densities of ``init`` (see :func:`layer_budgets`)."""
    if init == "uniform":
        return [density] * len(numels)
    if init == "erk":
        if shapes is None or len(shapes) != len(numels):
            raise ValueError("init='erk' needs one shape per layer")
        for s, n in zip(shapes, numels):
            if math.prod(s) != n:
                raise ValueError(f"shape {tuple(s)} does not have {n} elements")
        return _erk_densities(numels, shapes, density)
    if init == "igq":
        return _igq_densities(numels, density)
    raise ValueError(f"init must be 'uniform', 'erk' or 'igq', got {init!r}")


def _floored_targets(targets: Tensor, floors: Tensor, total: int) -> Tensor:
    """Water-fill: layers whose target is below their floor are pinned there; the rest share
    what is left in proportion to their targets, until no target falls below its floor."""
    pinned = targets < floors.to(targets.dtype)
    for _ in range(len(targets) + 1):
        free_total = total - float(floors[pinned].sum())
        free_sum = float(targets[~pinned].sum())
        scale = free_total / free_sum if free_sum > 0 else 0.0
        scaled_t = torch.where(pinned, floors.to(targets.dtype), targets * scale)
        newly = ~pinned & (scaled_t < floors.to(targets.dtype))
        if not bool(newly.any()):
            break
        pinned |= newly
    return scaled_t


def layer_budgets(
    numels: Sequence[int],
    density: float,
    init: str = "uniform",
    shapes: Sequence[Sequence[int]] | None = None,
    min_counts: Sequence[int] | None = None,
) -> list[int]:
    """Per-layer active counts summing to exactly ``round(density · Σ numels)``.

    ``init="uniform"`` gives every layer ≈ ``density·numel_l``; ``init="erk"`` scales
    per-layer density with (Σ shape dims)/(Π shape dims) (small layers denser; needs
    ``shapes``); ``init="igq"`` sets density_l = 1/(f·numel_l + 1) (:func:`_igq_densities`,
    FlyingBird's released allocation; small layers denser). All round with largest
    remainders, so each count lies in [0, numel_l] and the total is exact. ``round`` is
    Python's (half to even); it is applied once to the total, never per layer, so the
    global budget is the same for every init.

    ``min_counts`` (e.g. each layer's number of output channels, so that none starts dead)
    raises a layer's count to at least ``min(min_counts_l, numel_l)``; the other layers give
    up the difference in proportion to their targets. ValueError if the floors alone exceed
    the budget.
    """
    numels = [int(n) for n in numels]
    if any(n < 0 for n in numels):
        raise ValueError(f"layer sizes must be >= 0, got {numels}")
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    if not numels:
        return []
    total = round(density * sum(numels))
    per_layer = _init_densities(numels, density, init, shapes)
    # Targets sum to d·N; round(d·N) differs by at most ½, which largest-remainder absorbs
    # (deficit ∈ [0, #fractional entries]), so every count stays within 1 of its target.
    targets = torch.tensor([d * n for d, n in zip(per_layer, numels)], dtype=torch.float64)
    caps = torch.tensor(numels, dtype=torch.long)
    if min_counts is None:
        return _largest_remainder(targets, total, caps).tolist()
    if len(min_counts) != len(numels):
        raise ValueError(f"{len(min_counts)} minimum counts for {len(numels)} layers")
    floors = torch.minimum(torch.tensor([int(m) for m in min_counts], dtype=torch.long), caps)
    if int(floors.sum()) > total:
        raise ValueError(
            f"density {density} keeps {total} weights, fewer than the {int(floors.sum())} "
            "needed to give every output channel one active weight; raise the density or "
            "set sparsity.protect_channels=false"
        )
    scaled_t = _floored_targets(targets, floors, total)
    extra = _largest_remainder(
        scaled_t - floors.to(targets.dtype), total - int(floors.sum()), caps - floors
    )
    return (floors + extra).tolist()


def random_mask(
    numel_or_shape: int | Sequence[int],
    k: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    *,
    cover_rows: bool = False,
) -> Tensor:
    """A boolean mask with exactly ``k`` ``True`` entries chosen uniformly at random.

    With ``cover_rows`` every row (output channel: index 0 of the shape) gets one entry
    first, at a random position, and the remaining ``k - rows`` are uniform over the rest,
    so no channel starts dead (if ``k < rows``, ``k`` distinct rows get one entry each).
    Drawn on the generator's device (CPU by default) so a CPU generator gives the same mask
    whatever ``device`` the result is moved to.
    """
    shape = (int(numel_or_shape),) if isinstance(numel_or_shape, int) else tuple(numel_or_shape)
    numel = math.prod(shape)
    if not 0 <= k <= numel:
        raise ValueError(f"k={k} must be in [0, {numel}]")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    flat = torch.zeros(numel, dtype=torch.bool, device=gen_device)
    rows = shape[0] if len(shape) > 1 and numel > 0 else 1
    if cover_rows and rows > 1:
        per_row = numel // rows
        chosen_rows = torch.randperm(rows, generator=generator, device=gen_device)[:k]
        cols = torch.randint(
            0, per_row, (len(chosen_rows),), generator=generator, device=gen_device
        )
        flat[chosen_rows * per_row + cols] = True
        k -= len(chosen_rows)
        perm = torch.randperm(numel, generator=generator, device=gen_device)
        idx = perm[~flat[perm]][:k]
    else:
        idx = torch.randperm(numel, generator=generator, device=gen_device)[:k]
    flat[idx] = True
    out = flat.view(shape)
    return out.to(device) if device is not None else out


def redistribute(total: int | Tensor, scores: Tensor, capacity: Tensor) -> Tensor:
    """Split ``total`` regrowth slots over layers ∝ ``scores``, respecting ``capacity``.

    Water-filling: g_l = score_l · remaining / Σ_free score; any layer whose share exceeds its
    capacity is capped and its overflow is re-split over the uncapped layers in proportion to
    their scores, until nothing overflows (at most L rounds; they run as fixed tensor ops, no
    host sync). If the uncapped layers all have zero score, the remainder is spread in
    proportion to free capacity. The real-valued shares are then rounded by largest
    remainder so that Σ g_l == total exactly and 0 ≤ g_l ≤ capacity_l.

    Raises ValueError unless 0 ≤ total ≤ Σ capacity (this check reads two numbers on the host).
    """
    scores = torch.as_tensor(scores)
    capacity = torch.as_tensor(capacity, device=scores.device).to(torch.long)
    if scores.dim() != 1 or scores.shape != capacity.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and capacity {tuple(capacity.shape)} must be equal 1-D"
        )
    if bool((capacity < 0).any()):
        raise ValueError("capacity must be >= 0")
    total_i = int(total)
    cap_sum = int(capacity.sum())
    if not 0 <= total_i <= cap_sum:
        raise ValueError(f"cannot place {total_i} entries into a total capacity of {cap_sum}")
    if scores.numel() == 0:
        return capacity.clone()
    fdt = exact_float_dtype(scores.device)
    cap = capacity.to(fdt)
    s = scores.to(fdt).clamp_min(0)
    s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
    fixed = capacity <= 0
    share = torch.zeros_like(cap)
    for _ in range(scores.numel() + 1):
        free = ~fixed
        remaining = total_i - torch.where(fixed, cap, torch.zeros_like(cap)).sum()
        w = torch.where(free, s, torch.zeros_like(s))
        w = torch.where(w.sum() > 0, w, torch.where(free, cap, torch.zeros_like(cap)))
        wsum = w.sum()
        share = remaining * w / torch.where(wsum > 0, wsum, torch.ones_like(wsum))
        fixed = fixed | (free & (share > cap))
    targets = torch.where(fixed, cap, share).clamp(min=0)
    targets = torch.minimum(targets, cap)
    return _largest_remainder(targets, total_i, capacity)
