"""Aggregates over tasks: interquartile mean, percentile-bootstrap intervals, wins, ratios.

The statistics of the learned-optimizer literature (Agarwal et al. 2021's ``rliable``; Celo): the
interquartile mean (IQM) is robust to a few outlying tasks yet uses half of them, and a
percentile bootstrap over *tasks* (resampled with replacement, fixed seed) gives its 95%
confidence interval. Everything here is plain numpy on per-task numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0


class Estimate(NamedTuple):
    """A statistic of ``count`` per-task values and its bootstrap confidence interval."""

    value: float
    low: float
    high: float
    count: int

    def format(self, digits: int = 3, suffix: str = "") -> str:
        """``"1.23x [0.98, 1.51] (n=12)"``-style text; ``"n/a (n=0)"`` without values."""
        if self.count == 0:
            return "n/a (n=0)"
        value, low, high = (f"{v:.{digits}g}{suffix}" for v in (self.value, self.low, self.high))
        return f"{value} [{low}, {high}] (n={self.count})"


def iqm(values: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: the mean after dropping ``floor(n / 4)`` sorted values at each end.

    Equals ``scipy.stats.trim_mean(values, 0.25)``. ``+inf`` (a diverged task's ratio) sorts last,
    so it is trimmed unless it is in the middle half, where the IQM becomes ``inf``, as it should.
    """
    x = np.sort(_as_values(values))
    if x.size == 0:
        return float("nan")
    k = x.size // 4
    return float(np.mean(x[k : x.size - k]))


def mean(values: Sequence[float] | np.ndarray) -> float:
    """The plain mean (``nan`` for no values); the statistic of win rates."""
    x = _as_values(values)
    return float(np.mean(x)) if x.size else float("nan")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = iqm,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    num_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic`` over the values (each value one task).

    Draws ``num_resamples`` resamples of size n with replacement (``numpy`` generator ``seed``) and
    returns the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the statistic,
    each an actually resampled statistic (``inverted_cdf``, so infinite ones do not turn into
    ``nan`` by interpolation).
    """
    x = _as_values(values)
    if x.size == 0:
        return float("nan"), float("nan")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    resamples = x[rng.integers(0, x.size, size=(num_resamples, x.size))]
    with np.errstate(invalid="ignore"):  # inf - inf inside a statistic of diverged tasks
        stats = np.array([statistic(sample) for sample in resamples])
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail], method="inverted_cdf")
    return float(low), float(high)


def estimate(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = iqm,
    **bootstrap_options: float,
) -> Estimate:
    """``statistic`` of the values with its bootstrap interval (options of ``bootstrap_ci``)."""
    x = _as_values(values)
    low, high = bootstrap_ci(x, statistic, **bootstrap_options)
    return Estimate(statistic(x), low, high, int(x.size))


def stratified_estimate(
    scores: Sequence[Sequence[float] | np.ndarray],
    statistic: Callable[[np.ndarray], float] = iqm,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    num_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Estimate:
    """``statistic`` of every run's score and its stratified-bootstrap interval (rliable's).

    ``scores[t]`` holds task ``t``'s runs (seeds); each resample redraws the runs of every task
    with replacement within that task (the strata), so every task keeps its weight. ``count`` is
    the number of tasks.
    """
    strata = [_as_values(task) for task in scores if len(task)]
    if not strata:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    stats = np.empty(num_resamples)
    with np.errstate(invalid="ignore"):
        for i in range(num_resamples):
            sample = [task[rng.integers(0, task.size, task.size)] for task in strata]
            stats[i] = statistic(np.concatenate(sample))
        value = statistic(np.concatenate(strata))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail], method="inverted_cdf")
    return Estimate(value, float(low), float(high), len(strata))


def wins(
    subject: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    higher_is_better: bool = False,
) -> np.ndarray:
    """Per task: 1 where ``subject`` is better than ``reference``, 0.5 for a tie, 0 otherwise.

    A non-finite value (a diverged run's mean) is worse than any finite one; two non-finite values
    tie.
    """
    a, b = np.asarray(subject, np.float64), np.asarray(reference, np.float64)
    if higher_is_better:
        a, b = -a, -b
    a = np.where(np.isfinite(a), a, np.inf)
    b = np.where(np.isfinite(b), b, np.inf)
    return np.where(a < b, 1.0, np.where(a == b, 0.5, 0.0))


def normalized(
    subject: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray
) -> np.ndarray:
    """``subject / reference`` per task (< 1: the subject is better); ``inf`` where the subject is
    not finite, ``nan`` where the reference is not positive and finite (no meaningful ratio)."""
    a, b = np.asarray(subject, np.float64), np.asarray(reference, np.float64)
    valid = np.isfinite(b) & (b > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isfinite(a), a / np.where(valid, b, 1.0), np.inf)
    return np.where(valid, ratio, np.nan)


def _as_values(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """A 1-D float array; ``nan`` entries are an error (drop undefined values first)."""
    x = np.asarray(values, np.float64).ravel()
    if np.isnan(x).any():
        raise ValueError("aggregate values contain nan: drop undefined entries before aggregating")
    return x
