"""Pure tensor functions behind dynamic network rewiring (irregular, per-weight mode).

Everything here is a function of tensors and plain numbers: no modules, no optimizer, no
global state, so each step of REWIRE (docs/method.md) is unit-testable on its own. The
``Masking`` class in ``masking.py`` strings them together.

Conventions shared by all functions:

* Masks are boolean tensors shaped like the weight they mask; ``True`` = active.
* Per-layer vectors (``Tensor[L]``) are 1-D, one entry per prunable tensor, in a fixed
  layer order chosen by the caller.
* Ties are broken deterministically by flat (row-major) index: among equal candidates the
  one with the **lower** flat index is chosen first, both when pruning and when regrowing.
  This makes rewiring reproducible bit-for-bit for a given input, independent of how the
  backend's selection kernel orders equal elements.
* Integer counts are made exact with largest-remainder rounding (ties → lower layer index),
  so budgets never drift by one per rewiring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "layer_budgets",
    "random_mask",
    "channel_keepers",
    "normalized_momentum",
    "prune_counts",
    "magnitude_prune",
    "redistribute",
    "regrowth_shares",
    "momentum_regrow",
]


def _float_dtype(device: torch.device) -> torch.dtype:
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
    add = can_add & (ranks(torch.where(can_add, frac, torch.full_like(frac, -1.0)), True)
                     < deficit)
    can_cut = base > 0
    cut = can_cut & (ranks(torch.where(can_cut, frac, torch.full_like(frac, 2.0)), False)
                     < -deficit)
    return base + add.to(torch.long) - cut.to(torch.long)


# --------------------------------------------------------------------------- budgets


def _erk_densities(numels: Sequence[int], shapes: Sequence[Sequence[int]], density: float
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
    ``shapes``). Both round with largest remainders, so each count lies in [0, numel_l] and
    the total is exact. ``round`` is Python's (half to even); it is applied once to the
    total, never per layer, so the global budget is the same for both inits.

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
    if init == "uniform":
        per_layer = [density] * len(numels)
    elif init == "erk":
        if shapes is None or len(shapes) != len(numels):
            raise ValueError("init='erk' needs one shape per layer")
        for s, n in zip(shapes, numels):
            if math.prod(s) != n:
                raise ValueError(f"shape {tuple(s)} does not have {n} elements")
        per_layer = _erk_densities(numels, shapes, density)
    else:
        raise ValueError(f"init must be 'uniform' or 'erk', got {init!r}")
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
    # Water-fill: layers whose target is below their floor are pinned there; the rest share
    # what is left in proportion to their targets, until no target falls below its floor.
    pinned = targets < floors.to(targets.dtype)
    for _ in range(len(numels) + 1):
        free_total = total - float(floors[pinned].sum())
        free_sum = float(targets[~pinned].sum())
        scale = free_total / free_sum if free_sum > 0 else 0.0
        scaled_t = torch.where(pinned, floors.to(targets.dtype), targets * scale)
        newly = ~pinned & (scaled_t < floors.to(targets.dtype))
        if not bool(newly.any()):
            break
        pinned |= newly
    extra = _largest_remainder(scaled_t - floors.to(targets.dtype), total - int(floors.sum()),
                               caps - floors)
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
        cols = torch.randint(0, per_row, (len(chosen_rows),), generator=generator,
                             device=gen_device)
        flat[chosen_rows * per_row + cols] = True
        k -= len(chosen_rows)
        perm = torch.randperm(numel, generator=generator, device=gen_device)
        idx = perm[~flat[perm]][:k]
    else:
        idx = torch.randperm(numel, generator=generator, device=gen_device)[:k]
    flat[idx] = True
    out = flat.view(shape)
    return out.to(device) if device is not None else out


def channel_keepers(weight: Tensor, mask: Tensor) -> Tensor:
    """Per output channel (row 0 of the shape), its active entry with the largest ``|w|``.

    These are the entries a rewiring may not prune, so that no channel (and hence no layer)
    loses its last active weight: an all-zero conv filter feeds BatchNorm a zero variance
    and its gradient explodes. Rows with no active entry get none. Ties → lower index.
    No host synchronisation.
    """
    if weight.shape != mask.shape:
        raise ValueError(f"weight {tuple(weight.shape)} and mask {tuple(mask.shape)} differ")
    rows = weight.shape[0] if weight.dim() > 1 else 1
    w = weight.detach().reshape(rows, -1).abs().float()
    m = mask.reshape(rows, -1)
    score = torch.where(m, w, torch.full_like(w, -1.0))
    best = score.argmax(dim=1, keepdim=True)  # first maximum: the lower index on ties
    keep = torch.zeros_like(m)
    keep.scatter_(1, best, True)
    return (keep & m).view(mask.shape)


# --------------------------------------------------------------------------- statistics


def normalized_momentum(momenta: Sequence[Tensor], masks: Sequence[Tensor]) -> Tensor:
    """ŝ_l = s_l / Σ_j s_j with s_l = mean |momentum_l| over layer l's ACTIVE entries.

    A layer with no active entries has s_l = 0. If every s_l is 0 (e.g. before the first
    optimizer step) the result is uniform, 1/L, so redistribution degrades to "spread
    evenly" instead of dividing by zero. Float32 result on the momenta's device; no host
    synchronisation.
    """
    if len(momenta) != len(masks):
        raise ValueError(f"{len(momenta)} momenta but {len(masks)} masks")
    if not momenta:
        return torch.zeros(0)
    zero = torch.zeros((), dtype=momenta[0].dtype, device=momenta[0].device)
    s = torch.stack([
        torch.where(k, m.detach().abs(), zero).sum(dtype=torch.float32)
        / torch.count_nonzero(k).clamp_min(1).to(torch.float32)
        for m, k in zip(momenta, masks)
    ])
    z = s.sum()
    uniform = torch.full_like(s, 1.0 / s.numel())
    return torch.where(z > 0, s / torch.where(z > 0, z, torch.ones_like(z)), uniform)


def prune_counts(nnz: Tensor, rate: float) -> Tensor:
    """r_l = ceil(rate · nnz_l), clamped to [0, nnz_l].

    A relative 1e-12 slack is subtracted before the ceiling so that products that are
    integers in exact arithmetic (0.1 · 30) do not round up by float error (to 4 instead of 3).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"prune rate must be in [0, 1], got {rate}")
    nnz = torch.as_tensor(nnz)
    x = nnz.to(_float_dtype(nnz.device)) * rate
    r = torch.ceil(x - 1e-12 * x.clamp_min(1.0)).to(torch.long)
    return torch.minimum(r.clamp_min(0), nnz.to(torch.long))


# --------------------------------------------------------------------------- selection


def _select(score: Tensor, k: int, *, largest: bool) -> Tensor:
    """Boolean mask of the ``k`` smallest (or largest) entries of a flat ``score``.

    Ties at the threshold go to the lower index. O(n) — one ``kthvalue`` plus a cumulative
    sum over the tied entries — instead of a full sort (a stable sort of a 2.4M-entry VGG
    layer costs several times more on CPU); no host synchronisation for a given ``k``.
    """
    n = score.numel()
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(score, dtype=torch.bool)
    thr = torch.kthvalue(score, n - k + 1 if largest else k).values
    strict = score > thr if largest else score < thr
    equal = score == thr
    need = k - torch.count_nonzero(strict)
    return strict | (equal & (equal.cumsum(0) <= need))


def _as_count(k: int | Tensor, numel: int) -> int:
    k = int(k)  # a tensor count costs one host sync here; Masking passes Python ints
    if not 0 <= k <= numel:
        raise ValueError(f"count {k} must be in [0, {numel}]")
    return k


def _active_indices(flat: Tensor, num_active: int | None) -> Tensor:
    """Sorted flat indices of the ``True`` entries.

    ``nonzero`` must read the count back to the host on an accelerator; given the exact
    count (Masking keeps it on the host) ``nonzero_static`` avoids that sync. On CPU plain
    ``nonzero`` is faster and syncs are free.
    """
    if num_active is not None and flat.device.type != "cpu" and hasattr(torch, "nonzero_static"):
        try:
            return torch.nonzero_static(flat, size=int(num_active)).squeeze(1)
        except (NotImplementedError, RuntimeError):  # backend without the kernel
            pass
    return flat.nonzero().squeeze(1)


def magnitude_prune(
    weight: Tensor,
    mask: Tensor,
    k: int | Tensor,
    *,
    num_active: int | None = None,
    protect: Tensor | None = None,
) -> Tensor:
    """Deactivate the ``k`` active entries with the smallest ``|weight|`` (ties → lower index).

    Works on the compacted active entries only (5 % of the layer at d = 0.05), which makes
    pruning ~10× cheaper than selecting over the whole tensor. ``num_active``, if given,
    must be the exact number of ``True`` entries in ``mask`` (it lets accelerators skip a
    host sync). ``protect`` (a mask like ``mask``) marks entries that are never pruned, e.g.
    :func:`channel_keepers`. Precondition (not checked, to avoid a sync): ``k`` ≤ number of
    active, unprotected entries. Returns a new mask.
    """
    if weight.shape != mask.shape:
        raise ValueError(f"weight {tuple(weight.shape)} and mask {tuple(mask.shape)} differ")
    k = _as_count(k, mask.numel())
    flat = mask.reshape(-1)
    out = flat.clone()
    if k == 0:
        return out.view(mask.shape)
    idx = _active_indices(flat, num_active)
    score = weight.detach().reshape(-1).index_select(0, idx).abs().float()
    if protect is not None:
        score.masked_fill_(protect.reshape(-1).index_select(0, idx), float("inf"))
    drop = _select(score, k, largest=False)
    out.index_put_((idx,), ~drop)  # idx holds every active entry: keep = not dropped
    return out.view(mask.shape)


def momentum_regrow(momentum: Tensor, mask: Tensor, k: int | Tensor) -> Tensor:
    """Activate the ``k`` inactive entries with the largest ``|momentum|`` (ties → lower index).

    Active entries score −1 (below any |momentum|) so they are never chosen. Precondition
    (not checked, to avoid a host sync): ``k`` ≤ number of inactive entries. Returns a new
    mask.
    """
    if momentum.shape != mask.shape:
        raise ValueError(f"momentum {tuple(momentum.shape)} and mask {tuple(mask.shape)} differ")
    k = _as_count(k, mask.numel())
    flat = mask.reshape(-1)
    if k == 0:
        return flat.clone().view(mask.shape)
    score = momentum.detach().reshape(-1).abs().float().masked_fill_(flat, -1.0)
    grow = _select(score, k, largest=True)
    return (flat | grow).view(mask.shape)


# --------------------------------------------------------------------------- redistribution


def regrowth_shares(s_hat: Tensor, pruned: Tensor, redistribution: float) -> Tensor:
    """Share of the regrowth each layer aims for: ``(1 − λ)·r_l/R + λ·ŝ_l``.

    λ = ``redistribution`` damps how far a rewiring moves the budget between layers:
    λ = 1 is the paper (all R pruned weights are re-split by normalized momentum), λ = 0
    regrows in every layer exactly what it lost (counts frozen, only positions move), and
    in between a layer's count changes by λ·(ŝ_l·R − r_l). Sums to 1 when R > 0.
    """
    if not 0.0 <= redistribution <= 1.0:
        raise ValueError(f"redistribution must be in [0, 1], got {redistribution}")
    r = pruned.to(s_hat.dtype)
    total = r.sum()
    own = r / torch.where(total > 0, total, torch.ones_like(total))
    return (1.0 - redistribution) * own + redistribution * s_hat


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
    fdt = _float_dtype(scores.device)
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
