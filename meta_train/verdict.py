"""The verdict printed at the end of every ``lopt meta-train`` run: did meta-training help?

Two pieces of evidence, each with its noise:

* the meta-loss trend: the mean of the first and of the last tenth of the logged meta-losses
  (at least two rows each), their difference against its standard error
  ``se = sqrt(s1^2 / n1 + s2^2 / n2)``; it fell, rose, or stayed within ``2 se``;
* the end-of-run comparison on the held-out suite: the meta-trained rule against its untrained
  initialisation, paired by task and seed: ``d = log(loss_meta) - log(loss_untrained)``, their
  mean ``m`` and standard error; the ratio ``exp(m)`` with the interval ``exp(m +- 2 se)``. It
  helped when the whole interval is below 1, hurt when above, else it is within noise.

Losses and accuracies are printed in scientific notation: the built-in tasks reach losses of
1e-5, which fixed-point formats show as 0.0000.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

# How many standard errors a change must exceed to count (about a 95% interval).
NOISE_MULTIPLE = 2.0
SUBJECT, UNTRAINED = "meta-trained", "untrained"


class Trend(NamedTuple):
    """The meta-loss of the first and last tenth of a run: means, their difference's standard
    error (``nan`` with fewer than 4 rows), and how many rows each tenth holds."""

    start: float
    end: float
    noise: float
    count: int

    @property
    def change(self) -> str:
        """``"fell"``, ``"rose"``, ``"within noise"`` or ``"unknown"`` (too few rows)."""
        if not math.isfinite(self.noise):
            return "unknown"
        if self.end < self.start - NOISE_MULTIPLE * self.noise:
            return "fell"
        if self.end > self.start + NOISE_MULTIPLE * self.noise:
            return "rose"
        return "within noise"


def meta_loss_trend(losses: Sequence[float]) -> Trend | None:
    """The ``Trend`` of the logged meta-losses (non-finite ones dropped); ``None`` for none."""
    values = np.asarray([v for v in losses if v is not None and math.isfinite(v)], np.float64)
    if not len(values):
        return None
    count = max(2, len(values) // 10) if len(values) >= 4 else 1
    first, last = values[:count], values[-count:]
    noise = (
        math.sqrt(np.var(first, ddof=1) / count + np.var(last, ddof=1) / count)
        if count >= 2
        else float("nan")
    )
    return Trend(float(np.mean(first)), float(np.mean(last)), noise, count)


class Paired(NamedTuple):
    """The paired ratio of the meta-trained rule's metric over the untrained one's."""

    ratio: float  # exp(mean log ratio)
    low: float  # exp(mean - 2 se)
    high: float  # exp(mean + 2 se)
    pairs: int

    @property
    def outcome(self) -> str:
        if self.pairs < 2:
            return "too few runs to tell"
        if self.high < 1:
            return "helped"
        if self.low > 1:
            return "hurt"
        return "within noise"


def paired_ratio(subject: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> Paired | None:
    """``Paired`` over every (task, seed) pair of per-seed final losses where both are finite and
    positive; ``None`` when there is no such pair."""
    logs = []
    for a, b in zip(subject, reference, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        usable = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
        logs.extend(np.log(a[usable]) - np.log(b[usable]))
    if not logs:
        return None
    logs = np.asarray(logs)
    mean = float(np.mean(logs))
    se = float(np.std(logs, ddof=1) / math.sqrt(len(logs))) if len(logs) > 1 else float("inf")
    spread = NOISE_MULTIPLE * se
    return Paired(math.exp(mean), math.exp(mean - spread), math.exp(mean + spread), len(logs))


# (column title, the selection a figure is read from, the metric).
FIGURES = (
    ("train loss", "train", "train_loss"),
    ("test loss", "valid", "test_loss"),
    ("test accuracy", "valid", "test_accuracy"),
)


def _cell(value: float) -> str:
    return f"{value:.3e}" if math.isfinite(value) else "-"


def comparison_rows(report: Any) -> list[tuple[str, str, list[float]]]:
    """``(task, optimizer, figures)`` per task and run of an evaluation report, the figures of
    ``FIGURES`` (means over seeds; ``nan`` where a task has no such metric)."""
    rows = []
    for task in report.tasks:
        for label, run in task.runs.items():
            name = label
            if run.grid:  # a baseline at the best of its grid, per criterion
                rates = ", ".join(f"{point.learning_rate:g}" for point in run.grid)
                name = f"{label} (best of lr {rates})"
            figures = [run.selected[which].mean(metric) for _, which, metric in FIGURES]
            rows.append((f"{task.task} ({task.num_steps} steps)", name, figures))
    return rows


def _paired_lines(report: Any) -> list[str]:
    lines = []
    for title, which, metric in FIGURES[:2]:
        pairs = [
            (
                task.runs[SUBJECT].selected[which].metrics.get(metric),
                task.runs[UNTRAINED].selected[which].metrics.get(metric),
            )
            for task in report.tasks
            if SUBJECT in task.runs and UNTRAINED in task.runs
        ]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        paired = paired_ratio([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None
        if paired is None:
            continue
        lines.append(
            f"  {title}: meta-trained / untrained = {paired.ratio:.3g} (interval "
            f"{paired.low:.3g} to {paired.high:.3g}, {paired.pairs} paired runs): {paired.outcome}"
        )
    return lines


def verdict(trend: Trend | None, report: Any | None, suite: str | None, steps: int) -> str:
    """The end-of-run block: the meta-loss trend with its noise (and a warning when it rose or
    stayed within its noise), and with a comparison ``report`` on ``suite``: every optimizer's
    train loss, test loss and accuracy, and the paired meta-trained vs untrained ratios."""
    lines = [f"=== verdict after {steps} outer steps ==="]
    if trend is None:
        lines.append("meta-loss: nothing logged")
    else:
        noise = f"+-{trend.noise:.2e}" if math.isfinite(trend.noise) else "noise unknown"
        lines.append(
            f"meta-loss {trend.start:.3e} (first tenth) -> {trend.end:.3e} (last tenth), "
            f"difference's standard error {noise}: {trend.change}"
        )
        if trend.change in ("rose", "within noise"):
            lines.append(
                f"WARNING: the meta-loss {trend.change.replace('noise', 'its noise')}: "
                "meta-training did not improve the rule on its own objective; check the outer "
                "learning rate, sigma and the number of outer steps"
            )
    if report is None:
        lines.append("held-out comparison: none (comparison.num_tasks = 0)")
        return "\n".join(lines)
    lines.append(f"held-out suite {suite!r} (not meta-trained on); means over seeds:")
    rows = comparison_rows(report)
    task_width = max(len(row[0]) for row in rows)
    name_width = max(len(row[1]) for row in rows)
    header = "  ".join(f"{title:>13}" for title, _, _ in FIGURES)
    lines.append(f"  {'task':<{task_width}}  {'optimizer':<{name_width}}  {header}")
    for task, name, figures in rows:
        cells = "  ".join(f"{_cell(value):>13}" for value in figures)
        lines.append(f"  {task:<{task_width}}  {name:<{name_width}}  {cells}")
    paired = _paired_lines(report)
    if paired:
        lines.append("did meta-training help? (paired by task and seed, interval +-2 se)")
        lines += paired
    return "\n".join(lines)
