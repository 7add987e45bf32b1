"""dnr.stats: the t quantile against published values, paired intervals, verdicts."""

from __future__ import annotations

import math

import pytest

from dnr.stats import mean_sd, paired_by_key, paired_difference, t_cdf, t_quantile


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [  # two-sided 95 % and 99 % critical values of Student's t (standard tables)
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 3, 3.1824),
        (0.975, 4, 2.7764),
        (0.975, 5, 2.5706),
        (0.975, 9, 2.2622),
        (0.975, 30, 2.0423),
        (0.975, 120, 1.9799),
        (0.995, 2, 9.9248),
        (0.995, 10, 3.1693),
        (0.95, 6, 1.9432),
    ],
)
def test_t_quantile_matches_the_tables(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=5e-5)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, abs=5e-5)  # symmetric


def test_t_quantile_tends_to_the_normal_and_inverts_the_cdf() -> None:
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)
    assert t_quantile(0.5, 3) == 0.0
    assert t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    for df in (1, 2, 7):
        assert t_cdf(t_quantile(0.9, df), df) == pytest.approx(0.9, abs=1e-10)
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\), got 1.0"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="degrees of freedom must be positive, got 0"):
        t_quantile(0.9, 0)


def test_paired_interval_of_known_differences() -> None:
    d = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert d.n == 3
    assert d.mean == pytest.approx(2.0)
    assert d.sd == pytest.approx(1.0)
    half = 4.3027 / math.sqrt(3)  # t(0.975, 2) · sd / sqrt(n) = 2.484
    assert d.half_width == pytest.approx(half, abs=1e-4)
    assert (d.lo, d.hi) == pytest.approx((2.0 - half, 2.0 + half), abs=1e-4)
    assert d.verdict == "no difference shown"  # the interval [-0.48, 4.48] holds 0
    assert d.says("dnr", "static") == "no difference shown"


def test_verdicts_follow_the_sign_of_an_interval_that_excludes_zero() -> None:
    ahead = paired_difference([0.50, 0.52, 0.51, 0.53], [0.40, 0.41, 0.40, 0.42])
    assert ahead.lo is not None
    assert ahead.lo > 0
    assert ahead.verdict == "A ahead"
    assert ahead.says("dnr", "static") == "dnr ahead"
    behind = paired_difference([0.40, 0.41, 0.40, 0.42], [0.50, 0.52, 0.51, 0.53])
    assert behind.hi is not None
    assert behind.hi < 0
    assert behind.verdict == "B ahead"
    assert behind.says("dnr", "static") == "static ahead"
    # per-seed figures far apart but the pairs move together: pairing shows the difference
    paired = paired_difference([0.30, 0.50, 0.70, 0.40], [0.29, 0.48, 0.69, 0.38])
    assert paired.verdict == "A ahead"
    assert paired.mean == pytest.approx(0.015)


def test_identical_differences_give_no_verdict() -> None:
    d = paired_difference([0.6, 0.7, 0.5], [0.5, 0.6, 0.4])  # +0.1 every seed
    assert d.half_width == pytest.approx(0.0, abs=1e-9)
    assert d.verdict == "no difference shown"


def test_one_pair_gives_no_interval() -> None:
    d = paired_difference([0.6], [0.5])
    assert d.n == 1
    assert d.mean == pytest.approx(0.1)
    assert d.lo is d.hi is d.half_width is d.sd is None
    assert d.verdict == "no difference shown"
    assert d.to_dict()["diffs"] == [pytest.approx(0.1)]
    empty = paired_difference([], [])
    assert empty.n == 0
    assert empty.mean is None
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])


def test_pairing_by_key_drops_unpaired_and_missing_figures() -> None:
    keys, d = paired_by_key({0: 0.5, 1: 0.6, 2: None, 3: 0.7}, {1: 0.5, 0: 0.4, 2: 0.3})
    assert keys == [0, 1]
    assert d.n == 2
    assert d.diffs == pytest.approx((0.1, 0.1))


def test_mean_sd() -> None:
    s = mean_sd([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.mean, s.sd) == (4, 2.5, pytest.approx(math.sqrt(5 / 3)))
    assert mean_sd([2.0]).sd is None
    assert mean_sd([]).mean is None
