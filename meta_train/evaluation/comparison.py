"""Comparisons against the reference contender: speed-ups, per-task outcomes, aggregates.

- **Speed-up** over the reference (tuned Adam or AdamW): the steps the reference needs to reach
  its own final training loss over the steps the run needs to reach it, on seed-mean curves
  smoothed by a trailing moving average; only for a run that reaches that loss and is still at or
  below it at its last step ("not reached" / "lost by the end" otherwise). The VeLO /
  learned_optimization definition.
- **Outcome** per task and metric, each under its own selection criterion: better, tie or worse
  (``policy.outcome``: ties count half, not as wins).
- **Aggregates** over tasks: win rates and IQMs with 95% bootstrap intervals (``aggregate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from meta_train.evaluation import aggregate, policy
from meta_train.evaluation.policy import smooth, steps_to_reach
from meta_train.evaluation.results import (
    HEADLINE_METRICS,
    REFERENCE,
    Report,
    TaskResult,
    higher_is_better,
    horizon_label,
)


class SpeedUp(NamedTuple):
    """A run against the reference's smoothed final training loss ``target_loss``."""

    target_loss: float
    target_steps: int  # steps the reference needs to reach its own final loss
    steps: int | None  # steps the run needs to reach it (None: never)
    kept: bool  # the run's own final smoothed loss is at or below the target

    @property
    def value(self) -> float | None:
        """``target_steps / steps``, only where the loss was reached and kept."""
        return self.target_steps / self.steps if self.steps is not None and self.kept else None

    def format(self) -> str:
        if self.steps is None:
            return "not reached"
        if not self.kept:
            return "lost by the end"
        return f"{self.value:.2f}x"


def speedup(task: TaskResult, label: str, reference: str = REFERENCE) -> SpeedUp | None:
    """The speed-up of ``task.runs[label]`` over the reference (``None`` without a finite target).

    Both use the selection by training loss: the speed-up is a training-loss figure.
    """
    if reference not in task.runs:
        return None
    window = task.smoothing_window
    target_curve = smooth(task.runs[reference].train.curves.mean(axis=0), window)
    target = float(target_curve[-1])
    if not math.isfinite(target):
        return None
    curve = smooth(task.runs[label].train.curves.mean(axis=0), window)
    return SpeedUp(
        target_loss=target,
        target_steps=steps_to_reach(target_curve, target),
        steps=steps_to_reach(curve, target),
        kept=bool(curve[-1] <= target),
    )


class VeloSpeedUp(NamedTuple):
    """VeLO's speed-up: the steps the reference needs to reach the run's final training loss over
    the run's steps (seed-mean curves smoothed by a trailing moving average, as ``speedup``)."""

    target_loss: float  # the run's own final smoothed training loss
    reference_steps: int | None  # steps the reference needs to reach it (None: never)
    num_steps: int

    @property
    def censored(self) -> bool:
        """The reference never reached the run's loss: ``value`` is only a lower bound."""
        return self.reference_steps is None and math.isfinite(self.target_loss)

    @property
    def value(self) -> float:
        """``reference_steps / num_steps``; a lower bound of 1 where the reference never gets
        there (it ran as long); 0 for a diverged run (no finite loss to reach)."""
        if not math.isfinite(self.target_loss):
            return 0.0
        return (self.reference_steps or self.num_steps) / self.num_steps

    def format(self) -> str:
        return f">= {self.value:.2f}x" if self.censored else f"{self.value:.2f}x"


def velo_speedup(task: TaskResult, label: str, reference: str = REFERENCE) -> VeloSpeedUp | None:
    """The VeLO speed-up of ``task.runs[label]`` over the reference (``None`` without one)."""
    if reference not in task.runs:
        return None
    window = task.smoothing_window
    reference_curve = smooth(task.runs[reference].train.curves.mean(axis=0), window)
    target = float(smooth(task.runs[label].train.curves.mean(axis=0), window)[-1])
    steps = steps_to_reach(reference_curve, target) if math.isfinite(target) else None
    return VeloSpeedUp(target, steps, task.num_steps)


class Comparison(NamedTuple):
    """One run against the reference on one task; each metric under its own criterion."""

    task: str
    wins: dict[str, float]  # metric -> 1 better, 0.5 tie, 0 worse (metrics both runs have)
    normalized: dict[str, float]  # loss metric -> run mean / reference mean (nan: undefined)
    speedup: SpeedUp | None


def compare(task: TaskResult, label: str, reference: str = REFERENCE) -> Comparison | None:
    """``task.runs[label]`` against ``task.runs[reference]`` (``None`` if the task has none)."""
    if reference not in task.runs:
        return None
    run, ref = task.runs[label], task.runs[reference]
    wins, ratios = {}, {}
    for metric, _ in HEADLINE_METRICS:
        ours, theirs = run.for_metric(metric), ref.for_metric(metric)
        if metric not in ours.metrics or metric not in theirs.metrics:
            continue
        ours, theirs = ours.mean(metric), theirs.mean(metric)
        wins[metric] = float(policy.outcome([ours], [theirs], higher_is_better(metric))[0])
        if not higher_is_better(metric):
            ratios[metric] = float(aggregate.normalized([ours], [theirs])[0])
    return Comparison(task.task, wins, ratios, speedup(task, label, reference))


class LabelSummary(NamedTuple):
    """One optimizer at one horizon, aggregated over tasks (intervals: bootstrap over tasks)."""

    num_tasks: int
    compared: int  # tasks that have the reference
    better: dict[str, int]  # metric -> tasks where strictly better than the reference
    win_rate: dict[str, aggregate.Estimate]  # metric -> mean of 1 / 0.5 / 0 over tasks
    normalized_iqm: dict[str, aggregate.Estimate]  # loss metric -> IQM of run / reference
    speedup_iqm: aggregate.Estimate  # over the tasks where the loss was reached and kept
    diverged_runs: int
    total_runs: int
    tasks_with_divergence: int


def summarize(
    report: Report, reference: str | None = None, seed: int = aggregate.DEFAULT_SEED
) -> dict[str, dict[str, LabelSummary]]:
    """``{horizon label: {run label: LabelSummary}}`` for every run but the reference's
    (default: ``report.reference``)."""
    reference = reference or report.reference
    summary = {}
    for horizon in report.horizons:
        results = [task for task in report.tasks if task.horizon == horizon]
        labels = [label for label in results[0].runs if label != reference]
        summary[horizon_label(horizon)] = {
            label: _summarize_label(results, label, reference, seed) for label in labels
        }
    return summary


def _summarize_label(
    results: Sequence[TaskResult], label: str, reference: str, seed: int
) -> LabelSummary:
    comparisons = [c for c in (compare(task, label, reference) for task in results) if c]
    metrics = [m for m, _ in HEADLINE_METRICS if any(m in c.wins for c in comparisons)]
    wins = {m: [c.wins[m] for c in comparisons if m in c.wins] for m in metrics}
    ratios = {
        m: [c.normalized[m] for c in comparisons if not np.isnan(c.normalized.get(m, np.nan))]
        for m in metrics
        if not higher_is_better(m)
    }
    speedups = [c.speedup.value for c in comparisons if c.speedup and c.speedup.value is not None]
    selections = [task.runs[label].train for task in results if label in task.runs]
    return LabelSummary(
        num_tasks=len(results),
        compared=len(comparisons),
        better={m: int(sum(w == 1.0 for w in values)) for m, values in wins.items()},
        win_rate={m: aggregate.estimate(v, aggregate.mean, seed=seed) for m, v in wins.items()},
        normalized_iqm={m: aggregate.estimate(v, seed=seed) for m, v in ratios.items()},
        speedup_iqm=aggregate.estimate(speedups, seed=seed),
        diverged_runs=sum(s.num_diverged for s in selections),
        total_runs=sum(s.num_seeds for s in selections),
        tasks_with_divergence=sum(s.num_diverged > 0 for s in selections),
    )
