"""The stratified bootstrap (rliable's): runs are resampled within each task, never across."""

from __future__ import annotations

import numpy as np
import pytest

from meta_train.evaluation import aggregate


def test_runs_are_resampled_within_tasks_only():
    # Constant within each task: every resample is the same set, so the interval is one point; a
    # bootstrap over all runs pooled would mix tasks and spread.
    scores = [np.full(3, 1.0), np.full(3, 2.0), np.full(3, 10.0)]
    estimate = aggregate.stratified_estimate(scores)
    assert (
        estimate.value
        == estimate.low
        == estimate.high
        == pytest.approx(aggregate.iqm([1, 1, 1, 2, 2, 2, 10, 10, 10]))
    )
    assert estimate.count == 3


def test_spread_within_tasks_gives_an_interval_around_the_iqm():
    rng = np.random.default_rng(1)
    scores = [rng.normal(loc, 0.1, size=5) for loc in (1.0, 1.5, 2.0, 2.5)]
    estimate = aggregate.stratified_estimate(scores)
    assert estimate.low < estimate.value < estimate.high
    assert estimate.value == pytest.approx(aggregate.iqm(np.concatenate(scores)))
    assert aggregate.stratified_estimate([]).count == 0
