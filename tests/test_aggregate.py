"""Aggregate statistics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from meta_train.evaluation import aggregate


def test_iqm_drops_a_quarter_at_each_end():
    assert aggregate.iqm([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5  # mean of 3, 4, 5, 6
    assert aggregate.iqm([10, 1, 100, 2, 3]) == 5.0  # n=5 drops one each end: mean of 2, 3, 10
    assert aggregate.iqm([1, 2, 3]) == 2.0  # n < 4 drops nothing
    assert aggregate.iqm([1, 2, 3, np.inf]) == 2.5  # one diverged task of four is trimmed
    assert aggregate.iqm([1, np.inf, np.inf]) == np.inf  # ... but not when it is the middle
    assert np.isnan(aggregate.iqm([]))
    with pytest.raises(ValueError, match="nan"):
        aggregate.iqm([1.0, np.nan])


def test_iqm_matches_scipy_trim_mean():
    scipy_stats = pytest.importorskip("scipy.stats")
    values = np.random.default_rng(0).lognormal(size=13)
    assert aggregate.iqm(values) == pytest.approx(scipy_stats.trim_mean(values, 0.25))


def test_bootstrap_of_two_values_spans_both():
    # Resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4.
    low, high = aggregate.bootstrap_ci([0.0, 1.0], aggregate.mean, seed=3)
    assert (low, high) == (0.0, 1.0)
    assert aggregate.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert np.isnan(aggregate.bootstrap_ci([])[0])


def test_bootstrap_is_seeded_and_covers_the_mean():
    values = np.random.default_rng(1).normal(loc=1.0, size=40)
    first = aggregate.bootstrap_ci(values, aggregate.mean, seed=0)
    assert first == aggregate.bootstrap_ci(values, aggregate.mean, seed=0)
    assert first != aggregate.bootstrap_ci(values, aggregate.mean, seed=1)
    low, high = first
    # The standard error is 1 / sqrt(40) = 0.158: the interval is about +-1.96 of them wide.
    assert low < np.mean(values) < high
    assert 0.45 < high - low < 0.8
    assert low < 1.0 < high


def test_bootstrap_with_a_diverged_task_stays_ordered():
    low, high = aggregate.bootstrap_ci([1.0, 2.0, np.inf])
    assert low == 1.0 and high == np.inf  # resamples hold 0 to 3 copies of inf


def test_estimate_formats_value_interval_and_count():
    result = aggregate.estimate([1.0, 1.0, 1.0, 1.0])
    assert result == aggregate.Estimate(1.0, 1.0, 1.0, 4)
    assert result.format(suffix="x") == "1x [1x, 1x] (n=4)"
    assert aggregate.estimate([]).format() == "n/a (n=0)"


def test_wins_ties_and_non_finite():
    subject = [1.0, 2.0, np.nan, np.inf, 3.0]
    reference = [2.0, 2.0, 1.0, np.nan, 1.0]
    np.testing.assert_array_equal(aggregate.wins(subject, reference), [1, 0.5, 0, 0.5, 0])
    np.testing.assert_array_equal(
        aggregate.wins([0.9, 0.5], [0.8, 0.6], higher_is_better=True), [1, 0]
    )


def test_normalized_ratios():
    ratio = aggregate.normalized([1.0, np.inf, 2.0, 1.0, np.nan], [2.0, 1.0, 0.0, np.nan, 4.0])
    np.testing.assert_array_equal(ratio, [0.5, np.inf, np.nan, np.nan, np.inf])
