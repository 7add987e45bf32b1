"""Unit tests of the pure rewiring functions and the prune-rate schedule."""

from __future__ import annotations

import math
import random

import pytest
import torch

from dnr.sparsity import (
    channel_keepers,
    cosine_prune_rate,
    layer_budgets,
    magnitude_prune,
    momentum_regrow,
    normalized_momentum,
    prune_counts,
    random_mask,
    redistribute,
    regrowth_shares,
)

DENSITIES = [0.001, 0.0371, 0.05, 0.1, 0.3333, 0.5, 0.9, 1.0]


# --------------------------------------------------------------------------- layer_budgets


@pytest.mark.parametrize("density", DENSITIES)
def test_uniform_budgets_exact_total_and_close_per_layer(density: float) -> None:
    rng = random.Random(int(density * 1e4))
    for _ in range(20):
        numels = [rng.randint(0, 5000) for _ in range(rng.randint(1, 15))]
        budgets = layer_budgets(numels, density)
        assert sum(budgets) == round(density * sum(numels))
        for b, n in zip(budgets, numels):
            assert 0 <= b <= n
            assert abs(b - density * n) < 1.0


def test_uniform_budgets_known_answer() -> None:
    # targets 3.71, 1.3727, 37.1 (sum 42.18 -> 42); floors 3, 1, 37 = 41; the one missing
    # unit goes to the largest fractional part (0.71, layer 0).
    assert layer_budgets([100, 37, 1000], 0.0371) == [4, 1, 37]


def _erk_expected(shapes: list[tuple[int, ...]], density: float) -> list[float]:
    """Reference ERK densities, written independently (dense-layer fixed point)."""
    numels = [math.prod(s) for s in shapes]
    raw = [sum(s) / math.prod(s) for s in shapes]
    dense = [False] * len(shapes)
    while True:
        eps = (density * sum(numels) - sum(n for n, d in zip(numels, dense) if d)) / sum(
            r * n for r, n, d in zip(raw, numels, dense) if not d
        )
        newly = [not d and eps * r > 1 for r, d in zip(raw, dense)]
        if not any(newly):
            return [1.0 if d else eps * r for r, d in zip(raw, dense)]
        dense = [d or x for d, x in zip(dense, newly)]


VGGISH = [(64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3), (256, 128, 3, 3), (10, 256)]


@pytest.mark.parametrize("density", [0.0371, 0.05, 0.2, 0.5])
def test_erk_budgets(density: float) -> None:
    numels = [math.prod(s) for s in VGGISH]
    budgets = layer_budgets(numels, density, "erk", shapes=VGGISH)
    assert sum(budgets) == round(density * sum(numels))
    expected = _erk_expected(VGGISH, density)
    for b, n, d in zip(budgets, numels, expected):
        assert 0 <= b <= n
        assert abs(b - d * n) < 1.0
    # ERK makes small layers denser than big ones.
    dens = [b / n for b, n in zip(budgets, numels)]
    assert dens[0] > dens[3]


def test_erk_sets_overfull_layers_dense() -> None:
    numels = [math.prod(s) for s in VGGISH]
    budgets = layer_budgets(numels, 0.5, "erk", shapes=VGGISH)
    # raw density of the 3->64 stem is ~11x that of the 128->256 conv: at d=0.5 it is dense.
    assert budgets[0] == numels[0]
    assert budgets[-1] == numels[-1]  # the small classifier too
    assert sum(budgets) == round(0.5 * sum(numels))


def test_erk_density_one_is_all_dense() -> None:
    numels = [math.prod(s) for s in VGGISH]
    assert layer_budgets(numels, 1.0, "erk", shapes=VGGISH) == numels


def test_budget_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"density must be in \[0, 1\], got 1.5"):
        layer_budgets([10], 1.5)
    with pytest.raises(ValueError, match="needs one shape per layer"):
        layer_budgets([10], 0.5, "erk")  # shapes missing
    with pytest.raises(ValueError, match=r"shape \(3, 3\) does not have 10 elements"):
        layer_budgets([10], 0.5, "erk", shapes=[(3, 3)])  # 9 != 10
    with pytest.raises(ValueError, match="init must be .*got 'nope'"):
        layer_budgets([10], 0.5, "nope")


# --------------------------------------------------------------------------- random_mask


def test_random_mask_exact_count_and_reproducible() -> None:
    for k in (0, 1, 17, 60):
        m = random_mask((3, 4, 5), k, torch.Generator().manual_seed(1))
        assert m.dtype == torch.bool
        assert m.shape == (3, 4, 5)
        assert int(m.sum()) == k
    a = random_mask(1000, 50, torch.Generator().manual_seed(7))
    b = random_mask(1000, 50, torch.Generator().manual_seed(7))
    c = random_mask(1000, 50, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    with pytest.raises(ValueError, match=r"k=11 must be in \[0, 10\]"):
        random_mask(10, 11)


# --------------------------------------------------------------------------- statistics


def test_normalized_momentum_uses_active_entries_only() -> None:
    mask_a = torch.tensor([True, True, False, False])
    mom_a = torch.tensor([1.0, -1.0, 100.0, 100.0])  # inactive 100s must be ignored
    mask_b = torch.tensor([True, False, False])
    mom_b = torch.tensor([-3.0, 50.0, 50.0])
    mask_c = torch.zeros(2, dtype=torch.bool)  # no active entries -> s = 0
    mom_c = torch.tensor([9.0, 9.0])
    s = normalized_momentum([mom_a, mom_b, mom_c], [mask_a, mask_b, mask_c])
    torch.testing.assert_close(s, torch.tensor([0.25, 0.75, 0.0]))


def test_normalized_momentum_all_zero_is_uniform() -> None:
    masks = [torch.ones(3, dtype=torch.bool), torch.ones(5, dtype=torch.bool)]
    s = normalized_momentum([torch.zeros(3), torch.zeros(5)], masks)
    torch.testing.assert_close(s, torch.tensor([0.5, 0.5]))


def test_prune_counts() -> None:
    nnz = torch.tensor([10, 3, 0, 30, 1])
    assert prune_counts(nnz, 0.1).tolist() == [1, 1, 0, 3, 1]  # 0.1*30 is 3, not 4
    assert prune_counts(nnz, 0.5).tolist() == [5, 2, 0, 15, 1]
    assert prune_counts(nnz, 0.0).tolist() == [0, 0, 0, 0, 0]
    assert prune_counts(nnz, 1.0).tolist() == nnz.tolist()
    assert prune_counts(nnz, 0.5).dtype == torch.long


# --------------------------------------------------------------------------- selection


def test_magnitude_prune_removes_smallest_active() -> None:
    w = torch.tensor([[0.5, -0.1, 3.0], [0.01, -2.0, 0.2]])
    mask = torch.tensor([[True, True, True], [False, True, True]])  # 0.01 is inactive
    new = magnitude_prune(w, mask, 2)
    # smallest active |w|: 0.1 (index 1) and 0.2 (index 5); the inactive 0.01 is not counted.
    assert new.tolist() == [[True, False, True], [False, True, False]]
    assert torch.equal(magnitude_prune(w, mask, 0), mask)
    assert not magnitude_prune(w, mask, 5).any()


def test_magnitude_prune_ties_lower_index_first() -> None:
    w = torch.tensor([1.0, 0.5, 0.5, 0.5, 2.0])
    mask = torch.ones(5, dtype=torch.bool)
    assert magnitude_prune(w, mask, 2).tolist() == [True, False, False, True, True]


def test_momentum_regrow_picks_largest_inactive() -> None:
    m = torch.tensor([[9.0, 0.3, -5.0], [0.1, 4.0, -0.2]])
    mask = torch.tensor([[True, False, False], [False, False, True]])  # 9.0 active: excluded
    new = momentum_regrow(m, mask, 2)
    # inactive |m|: 0.3, 5.0, 0.1, 4.0 -> grow 5.0 (index 2) and 4.0 (index 4)
    assert new.tolist() == [[True, False, True], [False, True, True]]
    assert torch.equal(momentum_regrow(m, mask, 0), mask)


def test_momentum_regrow_ties_lower_index_first() -> None:
    m = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0])
    mask = torch.tensor([True, False, False, False, False])
    assert momentum_regrow(m, mask, 2).tolist() == [True, True, True, False, False]


def test_selection_large_random_exact_counts() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, 3, 3, generator=g)
    mask = random_mask(w.shape, 3000, g)
    for k in (0, 1, 1234, 3000):
        new = magnitude_prune(w, mask, k)
        assert int(new.sum()) == 3000 - k
        assert not (new & ~mask).any()
        if 0 < k < 3000:  # every survivor is at least as large as every pruned weight
            assert w.abs()[new].min() >= w.abs()[mask & ~new].max()
        grown = momentum_regrow(w, mask, k)
        assert int(grown.sum()) == 3000 + k
        assert not (mask & ~grown).any()
        if k:
            assert w.abs()[grown & ~mask].min() >= w.abs()[~grown].max()


# --------------------------------------------------------------------------- redistribute


def _t(xs: list[float]) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def test_redistribute_proportional() -> None:
    g = redistribute(10, _t([0.6, 0.3, 0.1]), torch.tensor([100, 100, 100]))
    assert g.tolist() == [6, 3, 1]
    # Equal thirds of 10: 3.33 each; the extra unit goes to the lowest index.
    assert redistribute(10, _t([1, 1, 1]), torch.tensor([9, 9, 9])).tolist() == [4, 3, 3]


def test_redistribute_largest_score_gets_most() -> None:
    g = redistribute(1000, _t([0.1, 0.7, 0.2]), torch.tensor([10**6] * 3))
    assert g.tolist() == [100, 700, 200]
    assert int(g.argmax()) == 1


def test_redistribute_cap_and_overflow() -> None:
    # layer 0 wants 50 but holds 20; its 30 overflow splits 3:2 -> 48, 32.
    assert redistribute(100, _t([0.5, 0.3, 0.2]), torch.tensor([20, 100, 100])).tolist() == [
        20,
        48,
        32,
    ]


def test_redistribute_cascading_overflow() -> None:
    # round 1: 70 > 10 caps layer 0; round 2: 90 split 2:1 -> 60 > 30 caps layer 1;
    # round 3: the remaining 60 all go to layer 2.
    assert redistribute(100, _t([0.7, 0.2, 0.1]), torch.tensor([10, 30, 100])).tolist() == [
        10,
        30,
        60,
    ]


def test_redistribute_zero_scores_spread_by_capacity() -> None:
    assert redistribute(10, _t([0, 0, 0]), torch.tensor([1, 3, 6])).tolist() == [1, 3, 6]
    assert redistribute(5, _t([0, 0, 0]), torch.tensor([5, 5, 0])).tolist() == [3, 2, 0]
    # layer 0 capped at 2; the other layers have zero score -> the rest by free capacity.
    assert redistribute(6, _t([1, 0, 0]), torch.tensor([2, 4, 4])).tolist() == [2, 2, 2]


def test_redistribute_errors() -> None:
    with pytest.raises(ValueError, match="cannot place 11 entries into a total capacity of 10"):
        redistribute(11, _t([0.5, 0.5]), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="cannot place -1 entries"):
        redistribute(-1, _t([0.5, 0.5]), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match=r"scores \(2,\) and capacity \(3,\) must be equal 1-D"):
        redistribute(1, _t([0.5, 0.5]), torch.tensor([5, 5, 5]))


def test_redistribute_property_exact_sum_and_caps() -> None:
    for seed in range(400):
        rng = random.Random(seed)
        n = rng.randint(1, 16)
        caps = [rng.choice([0, rng.randint(0, 30), rng.randint(0, 100_000)]) for _ in range(n)]
        if sum(caps) == 0:
            caps[0] = 1
        scores = [rng.choice([0.0, rng.random(), rng.random() * 1e-6]) for _ in range(n)]
        total = rng.randint(0, sum(caps))
        g = redistribute(total, torch.tensor(scores, dtype=torch.float32), torch.tensor(caps))
        assert g.dtype == torch.long
        assert int(g.sum()) == total, (seed, g.tolist(), total)
        assert all(0 <= a <= c for a, c in zip(g.tolist(), caps)), seed
        if sum(scores) > 0 and all(c >= total for c in caps):  # nothing binds: proportional
            ideal = [s / sum(scores) * total for s in scores]
            assert all(abs(a - b) < 1 for a, b in zip(g.tolist(), ideal)), seed


# --------------------------------------------------------------------------- schedule


def test_cosine_prune_rate_endpoints_and_monotone() -> None:
    total = 1000
    assert cosine_prune_rate(0, total) == pytest.approx(0.5)
    assert cosine_prune_rate(total, total) == pytest.approx(0.005)
    assert cosine_prune_rate(total // 2, total) == pytest.approx((0.5 + 0.005) / 2)
    rates = [cosine_prune_rate(s, total) for s in range(total + 1)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert cosine_prune_rate(-5, total) == pytest.approx(0.5)  # clamped
    assert cosine_prune_rate(5 * total, total) == pytest.approx(0.005)
    assert cosine_prune_rate(0, 10, p0=0.3, p_min=0.01) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="total_steps must be >= 1, got 0"):
        cosine_prune_rate(0, 0)


# --------------------------------------------------------------------------- no dead channel


def test_random_mask_cover_rows_gives_every_row_an_entry() -> None:
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        m = random_mask((16, 3, 3, 3), 22, g, cover_rows=True)  # VGG16 w0.25 first conv at 5 %
        assert int(m.sum()) == 22
        assert bool(m.reshape(16, -1).any(1).all())
    # Without covering, the same budget leaves rows empty (the failure this option prevents).
    empty = [
        int(
            (
                ~random_mask((16, 3, 3, 3), 22, torch.Generator().manual_seed(s))
                .reshape(16, -1)
                .any(1)
            ).sum()
        )
        for s in range(5)
    ]
    assert max(empty) > 0
    # Fewer entries than rows: k distinct rows, one entry each.
    m = random_mask((10, 20), 4, torch.Generator().manual_seed(0), cover_rows=True)
    assert int(m.sum()) == 4
    assert int(m.any(1).sum()) == 4
    a = random_mask((10, 20), 30, torch.Generator().manual_seed(3), cover_rows=True)
    b = random_mask((10, 20), 30, torch.Generator().manual_seed(3), cover_rows=True)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("init", "shapes", "density"),
    [
        ("uniform", [(16, 3, 3, 3), (16, 16, 3, 3), (64, 16, 3, 3), (10, 64)], 0.02),
        ("erk", [(16, 3, 3, 3), (512, 64, 3, 3), (64, 64, 3, 3), (10, 64)], 0.002),
    ],
)
def test_layer_budgets_respect_per_layer_minimums(init: str, shapes, density: float) -> None:
    numels = [math.prod(s) for s in shapes]
    floors = [s[0] for s in shapes]
    plain = layer_budgets(numels, density, init, shapes)
    assert any(p < f for p, f in zip(plain, floors))  # without floors some layer is starved
    got = layer_budgets(numels, density, init, shapes, min_counts=floors)
    assert sum(got) == round(density * sum(numels)) == sum(plain)
    assert all(g >= f for g, f in zip(got, floors))
    assert all(0 <= g <= n for g, n in zip(got, numels))
    with pytest.raises(ValueError, match="protect_channels=false"):
        layer_budgets(numels, 0.001, init, shapes, min_counts=floors)


def test_channel_keepers_pick_each_rows_largest_active_weight() -> None:
    w = torch.tensor([[0.1, -0.9, 0.5], [0.3, 0.2, 0.0], [0.7, 0.7, 0.1], [1.0, 2.0, 3.0]])
    mask = torch.tensor(
        [[True, True, True], [False, True, False], [True, True, False], [False, False, False]]
    )
    keep = channel_keepers(w, mask)
    expected = torch.tensor(
        [[False, True, False], [False, True, False], [True, False, False], [False, False, False]]
    )  # tie -> lower index; empty row: none
    assert torch.equal(keep, expected)


def test_magnitude_prune_never_takes_protected_entries() -> None:
    w = torch.tensor([0.05, 0.01, 0.3, 0.02, 0.4, 0.03])
    mask = torch.ones(6, dtype=torch.bool)
    protect = torch.tensor([False, True, False, False, False, False])
    out = magnitude_prune(w, mask, 3, protect=protect)
    assert out.tolist() == [False, True, True, False, True, False]  # 0.01 survives


def test_regrowth_shares_interpolate_between_frozen_and_paper() -> None:
    s_hat = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    r = torch.tensor([10, 30, 60])
    assert torch.allclose(
        regrowth_shares(s_hat, r, 0.0), torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    )
    assert torch.allclose(regrowth_shares(s_hat, r, 1.0), s_hat)
    half = regrowth_shares(s_hat, r, 0.5)
    assert torch.allclose(half, torch.tensor([0.4, 0.25, 0.35], dtype=torch.float64))
    assert float(half.sum()) == pytest.approx(1.0)
    # Frozen shares put back exactly what each layer lost.
    assert redistribute(
        100, regrowth_shares(s_hat, r, 0.0), torch.tensor([50, 50, 80])
    ).tolist() == [10, 30, 60]
    with pytest.raises(ValueError, match=r"redistribution must be in \[0, 1\], got 1.5"):
        regrowth_shares(s_hat, r, 1.5)
