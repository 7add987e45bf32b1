"""Pure tensor functions behind dynamic network rewiring (irregular, per-weight mode).

Everything here is a function of tensors and plain numbers: no modules, no optimizer, no
global state, so each step of REWIRE (docs/method.md) is unit-testable on its own. How
many weights each layer gets lives in ``budgets.py``; ``Masking`` (``masking.py``) strings
both together.

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

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dnr.sparsity.budgets import exact_float_dtype, redistribute
from dnr.sparsity.selection import select_k

__all__ = [
    "RewireStats",
    "channel_keepers",
    "normalized_momentum",
    "prune_counts",
    "magnitude_prune",
    "regrowth_shares",
    "rewire_counts",
    "momentum_regrow",
]


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
    s = torch.stack(
        [
            torch.where(k, m.detach().abs(), zero).sum(dtype=torch.float32)
            / torch.count_nonzero(k).clamp_min(1).to(torch.float32)
            for m, k in zip(momenta, masks)
        ]
    )
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
    x = nnz.to(exact_float_dtype(nnz.device)) * rate
    r = torch.ceil(x - 1e-12 * x.clamp_min(1.0)).to(torch.long)
    return torch.minimum(r.clamp_min(0), nnz.to(torch.long))


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
    drop = select_k(score, k, largest=False)
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
    grow = select_k(score, k, largest=True)
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


def rewire_counts(
    s_hat: Tensor,
    protected: Tensor,
    nnz: Tensor,
    numel: Tensor,
    prune_rate: float,
    *,
    regrow_pruned: bool,
    redistribution: float,
) -> tuple[Tensor, Tensor]:
    """How many entries each layer loses and regrows in one REWIRE(p) (host tensors).

    Pruned: ``r_l = min(ceil(p · nnz_l), nnz_l − protected_l)``; regrown: ``R = Σ r_l``
    split by :func:`regrowth_shares` over the room left in each layer (the just-pruned
    positions included unless ``regrow_pruned`` is false).
    """
    r = torch.minimum(prune_counts(nnz, float(prune_rate)), nnz - protected)
    capacity = numel - nnz + r if regrow_pruned else numel - nnz
    shares = regrowth_shares(s_hat.to(torch.float64), r, redistribution)
    return r, redistribute(int(r.sum()), shares, capacity)


@dataclass
class RewireStats:
    """What one rewiring did, as plain Python numbers (ready for metrics.jsonl).

    ``lost`` / ``regrown`` are per-layer counts of pruned / regrown weights,
    ``layer_density`` the per-layer density afterwards, ``normalized_momentum`` the ŝ_l that
    drove redistribution.
    """

    prune_rate: float
    total_active: int
    density: float
    lost: dict[str, int] = field(default_factory=dict)
    regrown: dict[str, int] = field(default_factory=dict)
    layer_density: dict[str, float] = field(default_factory=dict)
    normalized_momentum: dict[str, float] = field(default_factory=dict)

    @property
    def total_lost(self) -> int:
        return sum(self.lost.values())

    @property
    def total_regrown(self) -> int:
        return sum(self.regrown.values())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
