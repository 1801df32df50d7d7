"""The evaluation's rules on plain numbers: divergence, grid selection, grid edges, ties.

- **Divergence.** A run diverged when a training loss is non-finite or its final training loss
  exceeds ``factor`` times its initial one; diverged runs stay in every mean and count.
- **Selection.** A tuned contender's learning rate is chosen per criterion, fewest diverged seeds
  first, then the lowest mean final loss of that criterion (train loss for training-loss figures,
  inner-valid loss for held-out ones; the test split never chooses).
- **Grid edge.** A chosen rate at an end of its grid is flagged: the best may lie beyond.
- **Tie.** Two final values tie when both are below ``LOSS_FLOOR`` (both have fit the data; no
  headroom left to rank), or within ``TIE_RTOL`` of each other (losses, relative) or
  ``ACCURACY_TIE`` (accuracies, absolute). Ties count as ties (0.5), not as wins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_DIVERGENCE_FACTOR = 2.0
TIE_RTOL = 0.02  # losses within 2% of each other: within the seed-to-seed spread of our tasks
LOSS_FLOOR = 1e-3  # both final losses below it: both fit the data, no headroom to compare
ACCURACY_TIE = 0.005  # accuracies within half a percentage point


def diverged_runs(
    losses: np.ndarray, initial_loss: np.ndarray, final_loss: np.ndarray, factor: float
) -> np.ndarray:
    """Boolean ``[...]``: a non-finite step loss, or a final loss above ``factor`` x the initial.

    ``losses`` is ``[..., steps]``; the rest are ``[...]``. For losses that can be negative, the
    bound is ``initial + (factor - 1) * |initial|``.
    """
    bound = initial_loss + (factor - 1.0) * np.abs(initial_loss)
    return (
        ~np.all(np.isfinite(losses), axis=-1)
        | ~np.isfinite(final_loss)
        | ~np.isfinite(initial_loss)
        | (final_loss > bound)
    )


def select_grid_point(loss: np.ndarray, diverged: np.ndarray) -> int:
    """Index of the best grid point from ``[grid, seeds]`` final losses of one criterion.

    Fewest diverged seeds first, then the lowest mean loss (a point with a diverged seed has mean
    ``inf``). Ties go to the earlier (smaller) grid point.
    """
    num_diverged = diverged.sum(axis=1)
    finite = np.where(np.isfinite(loss) & ~diverged, loss, np.inf)
    return int(np.lexsort((finite.mean(axis=1), num_diverged))[0])


def at_grid_edge(grid: Sequence[float], chosen: float | None) -> bool:
    """Whether ``chosen`` is the first or last of a grid of at least three rates."""
    return chosen is not None and len(grid) >= 3 and chosen in (grid[0], grid[-1])


def smoothing_window(num_steps: int) -> int:
    """Moving-average window for training-loss curves: 5% of the run, at least one step."""
    return max(1, num_steps // 20)


def outcome(
    ours: Sequence[float] | np.ndarray,
    theirs: Sequence[float] | np.ndarray,
    higher_is_better: bool = False,
) -> np.ndarray:
    """Per task: 1 where ``ours`` is better, 0.5 for a tie (module docstring), 0 if worse.

    A non-finite value (a diverged run's mean) is worse than any finite one; two non-finite
    values tie.
    """
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    a_, b_ = np.where(finite_a, a, 0.0), np.where(finite_b, b, 0.0)
    if higher_is_better:
        close = np.abs(a_ - b_) <= ACCURACY_TIE
        better = a_ > b_
    else:
        scale = np.maximum(np.abs(a_), np.abs(b_))
        close = (np.abs(a_ - b_) <= TIE_RTOL * scale) | ((a_ < LOSS_FLOOR) & (b_ < LOSS_FLOOR))
        better = a_ < b_
    tie = np.where(finite_a & finite_b, close, ~finite_a & ~finite_b)
    win = np.where(finite_a & finite_b, better, finite_a)
    return np.where(tie, 0.5, np.where(win, 1.0, 0.0))


def tie_rule() -> str:
    """The rule in words, for reports."""
    return (
        f"tie: both final losses below {LOSS_FLOOR:g}, or within {TIE_RTOL:.0%} of each other "
        f"(accuracies within {ACCURACY_TIE * 100:g} points); ties count 0.5, not as wins"
    )


def smooth(curve: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average along the last axis; the first steps average what exists so far.

    Trailing (causal) so that the step at which a smoothed curve reaches a loss is a step that had
    already been taken. Non-finite values propagate.
    """
    curve = np.asarray(curve, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is nan: diverged stays so
        cumulative = np.cumsum(curve, axis=-1)
        shifted = np.zeros_like(cumulative)
        shifted[..., window:] = cumulative[..., :-window]
        counts = np.minimum(np.arange(1, curve.shape[-1] + 1), window)
        return (cumulative - shifted) / counts


def steps_to_reach(curve: np.ndarray, target: float) -> int | None:
    """Steps until ``curve`` (one loss per step) first is ``<= target``: index + 1, or ``None``."""
    reached = np.flatnonzero(np.asarray(curve) <= target)
    return int(reached[0]) + 1 if reached.size else None
