"""Held-out evaluation reports: frozen results, their summary, and free render and write functions.

``meta_train.evaluation.evaluate`` builds a ``Report``; ``summarize`` applies the comparison
policy; the ``format_*`` / ``to_*`` / ``write`` functions render it. Per-seed numbers are kept
as arrays so that every rendering shows mean +- std over seeds and the count of diverged runs
(diverged runs stay in every mean: a mean that is ``inf`` or ``nan`` says so).

The policy, in one place:

- **Per criterion.** A baseline's learning rate is chosen twice from its grid: by mean final
  training loss for the training-loss comparison, and by mean final inner-valid loss for every
  held-out figure (valid/test loss and accuracy). Each column compares like with like.
- **"Tuned"** only for a grid of at least ``MIN_TUNED_POINTS`` learning rates; a smaller grid is
  named by its rates ("Adam at 1e-3 / 1e-2").
- **Speed-up** over the reference (tuned Adam): the steps the reference needs to reach its own
  final training loss over the steps the run needs to reach it, on seed-mean curves smoothed by a
  trailing moving average; only for a run that reaches that loss and is still at or below it at
  its last step ("not reached" / "lost by the end" otherwise).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from meta_train.evaluation import aggregate, policy
from meta_train.evaluation.contenders import (
    MIN_TUNED_POINTS,
    format_learning_rate,
)

# How a tuned learning rate is chosen from a grid: criterion -> the final metric it minimises.
CRITERIA = {"train": "train_loss", "valid": "inner_valid_loss"}
# Table columns: (metric key ``<split>_<metric>``, header, the criterion baselines are chosen by).
COLUMNS = (
    ("train_loss", "train loss", "train"),
    ("inner_valid_loss", "valid loss", "valid"),
    ("test_loss", "test loss", "valid"),
    ("test_accuracy", "test acc", "valid"),
)
# The metrics the headline compares with the reference, and how it names them.
HEADLINE_METRICS = (
    ("train_loss", "final train loss"),
    ("test_loss", "test loss"),
    ("test_accuracy", "test accuracy"),
)
REFERENCE = "adam"
MAX_JSON_CURVE_POINTS = 200


def criterion_of(metric: str) -> str:
    """The criterion a baseline's learning rate is chosen by when ``metric`` is compared."""
    return "train" if metric.startswith("train_") else "valid"


def higher_is_better(metric: str) -> bool:
    return metric.endswith("accuracy")


# --- Frozen results.


class GridPoint(NamedTuple):
    """One learning rate of a tuned optimizer, summarised over seeds."""

    learning_rate: float
    valid_loss: float  # mean final inner-valid loss over seeds
    train_loss: float  # mean final training loss over seeds
    num_diverged: int


@dataclasses.dataclass(frozen=True, eq=False)
class Selection:
    """The runs of one learning rate (a grid point, or an untuned optimizer's only one).

    ``curves`` is ``[seeds, steps]``: the minibatch training loss at each step, before that step's
    update. ``metrics`` maps ``<split>_<metric>`` (e.g. ``train_loss``, ``test_accuracy``) to
    ``[seeds]`` values on the whole split after the last step; ``diverged`` is ``[seeds]``.
    ``valid_curves`` is ``[seeds, V]``: the inner-valid loss on one minibatch after
    ``valid_steps[v]`` updates (empty when not measured).
    """

    learning_rate: float | None
    curves: np.ndarray
    metrics: Mapping[str, np.ndarray]
    diverged: np.ndarray
    valid_steps: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, int))
    valid_curves: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def num_seeds(self) -> int:
        return int(self.curves.shape[0])

    @property
    def num_diverged(self) -> int:
        return int(np.sum(self.diverged))

    def mean(self, metric: str) -> float:
        """Mean over seeds of a final metric (``nan`` if this task has no such metric)."""
        values = self.metrics.get(metric)
        with np.errstate(invalid="ignore", over="ignore"):
            return float("nan") if values is None else float(np.mean(values))


@dataclasses.dataclass(frozen=True, eq=False)
class RunResult:
    """One optimizer on one task at one horizon.

    ``selected`` maps each of ``CRITERIA`` to the selection made by it (the same object twice for an
    untuned optimizer). The seconds are those of the compiled trainer, which the optimizers of one
    trainer share (count them once per trainer).
    """

    label: str
    description: str
    initial_loss: np.ndarray
    selected: Mapping[str, Selection]
    grid: tuple[GridPoint, ...] = ()
    compile_seconds: float = 0.0
    run_seconds: float = 0.0

    @property
    def tuned(self) -> bool:
        return len(self.grid) >= MIN_TUNED_POINTS

    @property
    def train(self) -> Selection:
        """The selection the training-loss comparison and the speed-up use."""
        return self.selected["train"]

    @property
    def valid(self) -> Selection:
        """The selection every held-out figure (valid/test loss and accuracy) uses."""
        return self.selected["valid"]

    def for_metric(self, metric: str) -> Selection:
        return self.selected[criterion_of(metric)]

    @property
    def num_seeds(self) -> int:
        return self.train.num_seeds


@dataclasses.dataclass(frozen=True, eq=False)
class TaskResult:
    """Every optimizer on one task at one horizon; ``runs`` is ordered, the evaluated one first."""

    task: str
    num_steps: int
    horizon: float
    runs: Mapping[str, RunResult]
    smoothing_window: int


@dataclasses.dataclass(frozen=True, eq=False)
class Report:
    """A held-out evaluation: ``subject`` is the label of the evaluated optimizer's runs.

    The methods are shorthands for this module's free functions.
    """

    subject: str
    description: str
    settings: Mapping[str, Any]
    tasks: tuple[TaskResult, ...]
    reference: str = "adam"  # the contender every comparison is against

    @property
    def horizons(self) -> list[float]:
        return sorted({task.horizon for task in self.tasks})

    def summary(self) -> dict[str, dict[str, LabelSummary]]:
        return summarize(self)

    def summary_line(self) -> str:
        return summary_line(self)

    def format_table(self, horizon: float) -> str:
        return format_table(self, horizon)

    def format_console(self) -> str:
        return format_console(self)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_json(self) -> str:
        return to_json(self)

    def save(self, out_dir: str | os.PathLike, plots: bool = True) -> dict[str, str]:
        return write(self, out_dir, plots=plots)


# --- Policy: speed-ups, per-task comparisons, aggregates.


def horizon_label(horizon: float) -> str:
    return f"{horizon:g}x"


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


# --- Rendering.


def summary_line(report: Report, reference: str | None = None) -> str:
    """The headline: the evaluated optimizer against the reference, per horizon and criterion."""
    reference = reference or report.reference
    summary = summarize(report, reference)
    parts = []
    for horizon, by_label in summary.items():
        results = [task for task in report.tasks if horizon_label(task.horizon) == horizon]
        if report.subject not in by_label:  # the subject is the reference itself
            runs = [task.runs[report.subject].train for task in results]
            diverged = sum(r.num_diverged for r in runs)
            parts.append(
                f"{horizon}: {len(results)} tasks, "
                f"{diverged}/{sum(r.num_seeds for r in runs)} runs diverged"
            )
            continue
        s = by_label[report.subject]
        diverged = f"{s.diverged_runs}/{s.total_runs} runs diverged"
        if not s.compared:
            parts.append(f"{horizon}: {s.num_tasks} tasks, {diverged}")
            continue
        reference_name = _reference_description(results, reference)
        n = s.compared
        metrics = [(m, name) for m, name in HEADLINE_METRICS if m in s.better]
        by_train = [
            f"{name} on {s.better[m]}/{n}" for m, name in metrics if criterion_of(m) == "train"
        ]
        by_valid = [
            f"{name} on {s.better[m]}/{n}" for m, name in metrics if criterion_of(m) == "valid"
        ]
        text = f"{horizon}: better than {reference_name} in " + ", ".join(by_train)
        text += " (its lr chosen by train loss)"
        if by_valid:
            text += ", in " + ", ".join(by_valid) + " (its lr chosen by inner-valid loss)"
        reached = s.speedup_iqm.count
        speed = f"speed-up IQM {s.speedup_iqm.format(suffix='x')}" if reached else "no speed-up"
        text += f"; {speed}, reached and kept its final loss on {reached}/{n}; {diverged}"
        parts.append(text)
    return f"{report.description}: " + "; ".join(parts)


def _reference_description(results: Sequence[TaskResult], reference: str) -> str:
    descriptions = {task.runs[reference].description for task in results if reference in task.runs}
    return " / ".join(sorted(descriptions))


def format_table(report: Report, horizon: float, reference: str | None = None) -> str:
    """A Markdown table of every task and optimizer at one horizon (also the console table).

    Each metric column shows, for a tuned optimizer, the learning rate chosen by that column's
    criterion; "vs ref" marks each headline metric better (+), tied (=) or worse (-).
    """
    reference = reference or report.reference
    header = [
        "task",
        "steps",
        "optimizer",
        "lr (by train / by valid)",
        *(f"{name} (lr by {criterion})" for _, name, criterion in COLUMNS),
        "diverged",
        f"vs {reference} (train/test/acc)",
        f"steps to {reference} loss",
        "speed-up",
    ]
    rows = []
    for task in (task for task in report.tasks if task.horizon == horizon):
        for label, run in task.runs.items():
            comparison = compare(task, label, reference) if label != reference else None
            rows.append(
                [
                    task.task,
                    str(task.num_steps),
                    label,
                    _learning_rates(run),
                    *(_mean_std(run.for_metric(key).metrics.get(key)) for key, _, _ in COLUMNS),
                    _diverged(run),
                    _marks(comparison),
                    _steps_cell(comparison),
                    _speedup_cell(comparison),
                ]
            )
    return markdown_table(header, rows)


def format_console(report: Report) -> str:
    blocks = [f"Horizon {horizon_label(h)}\n{format_table(report, h)}" for h in report.horizons]
    return "\n\n".join([*blocks, summary_line(report)])


def to_markdown(report: Report, plots: Mapping[str, str] | None = None) -> str:
    """The report as Markdown; ``plots`` maps ``plot_name(task)`` to a PNG path to link."""
    plots = plots or {}
    lines = [f"# Held-out evaluation: {report.description}", "", f"**{summary_line(report)}**", ""]
    lines += _aggregate_lines(report)
    lines += _settings_lines(report.settings)
    for horizon in report.horizons:
        lines += ["", f"## Horizon {horizon_label(horizon)}", "", format_table(report, horizon)]
        for task in (task for task in report.tasks if task.horizon == horizon):
            if plot_name(task) in plots:
                name = f"{task.task} at {horizon_label(horizon)}"
                lines += ["", f"![{name}]({plots[plot_name(task)]})"]
    lines += [
        "",
        "## Learning-rate grids (mean final train loss / inner-valid loss, diverged seeds)",
        "",
    ]
    for task in report.tasks:
        for run in task.runs.values():
            if run.grid:
                points = ", ".join(_grid_point(p, run) for p in run.grid)
                lines.append(f"- {task.task} {horizon_label(task.horizon)} {run.label}: {points}")
    return "\n".join(lines) + "\n"


def _aggregate_lines(report: Report) -> list[str]:
    header = [
        "horizon",
        "optimizer",
        "tasks",
        "win rate train loss",
        "win rate test loss",
        "speed-up IQM",
        "normalized train loss IQM",
        "diverged runs",
    ]
    rows = []
    for horizon, by_label in summarize(report).items():
        for label, s in by_label.items():
            if not s.compared:
                continue
            rows.append(
                [
                    horizon,
                    label,
                    str(s.compared),
                    _estimate_cell(s.win_rate.get("train_loss")),
                    _estimate_cell(s.win_rate.get("test_loss")),
                    s.speedup_iqm.format(suffix="x"),
                    _estimate_cell(s.normalized_iqm.get("train_loss")),
                    f"{s.diverged_runs}/{s.total_runs}",
                ]
            )
    if not rows:
        return []
    return [
        f"Against {report.reference} per task; value [95% bootstrap interval over tasks] "
        f"(n tasks). Win rate: 1 better, 0.5 tie ({policy.tie_rule()}), 0 worse, averaged; "
        "speed-up IQM over the tasks where the reference's final loss was reached and kept; "
        "normalized = optimizer / reference.",
        "",
        markdown_table(header, rows),
        "",
    ]


def _estimate_cell(estimate: aggregate.Estimate | None) -> str:
    return "-" if estimate is None else estimate.format()


def _grid_point(point: GridPoint, run: RunResult) -> str:
    chosen = [c for c, s in run.selected.items() if s.learning_rate == point.learning_rate]
    mark = f" (chosen by {' and '.join(chosen)})" if chosen else ""
    div = f" ({point.num_diverged} div)" if point.num_diverged else ""
    return (
        f"{format_learning_rate(point.learning_rate)}: {_number(point.train_loss)} / "
        f"{_number(point.valid_loss)}{div}{mark}"
    )


def at_grid_edge(run: RunResult, criterion: str) -> bool:
    """Whether the rate chosen by ``criterion`` is at an end of the run's grid
    (``policy.at_grid_edge``)."""
    grid = [point.learning_rate for point in run.grid]
    return policy.at_grid_edge(grid, run.selected[criterion].learning_rate)


def _learning_rates(run: RunResult) -> str:
    """The chosen rate(s); ``(edge)`` marks one at an end of the grid (the best may lie beyond)."""
    if run.train.learning_rate is None:
        return "-"
    grid = [point.learning_rate for point in run.grid]
    cells = []
    for lr in dict.fromkeys([run.train.learning_rate, run.valid.learning_rate]):
        cells.append(
            format_learning_rate(lr) + (" (edge)" if policy.at_grid_edge(grid, lr) else "")
        )
    return " / ".join(cells)


def _diverged(run: RunResult) -> str:
    cells = {f"{s.num_diverged}/{s.num_seeds}" for s in run.selected.values()}
    if len(cells) == 1:
        return cells.pop()
    return f"{run.train.num_diverged}/{run.num_seeds} / {run.valid.num_diverged}/{run.num_seeds}"


def _marks(comparison: Comparison | None) -> str:
    if comparison is None:
        return "-"
    symbols = {1.0: "+", 0.5: "=", 0.0: "-"}
    return "/".join(
        symbols[comparison.wins[m]] if m in comparison.wins else "." for m, _ in HEADLINE_METRICS
    )


def _steps_cell(comparison: Comparison | None) -> str:
    if comparison is None or comparison.speedup is None:
        return "-"
    steps = comparison.speedup.steps
    return "not reached" if steps is None else str(steps)


def _speedup_cell(comparison: Comparison | None) -> str:
    if comparison is None or comparison.speedup is None:
        return "-"
    return comparison.speedup.format()


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _mean_std(values: np.ndarray | None) -> str:
    if values is None:
        return "-"
    values = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        mean = float(np.mean(values))
        if not math.isfinite(mean):
            return _number(mean)
        return f"{mean:.4g} ± {float(np.std(values)):.2g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
        for row in [header, ["-" * width for width in widths], *rows]
    ]
    return "\n".join(lines)


def _settings_lines(settings: Mapping[str, Any]) -> list[str]:
    lines = []
    if "command" in settings:
        lines += ["Command:", "", "```", settings["command"], "```", ""]
    lines += [f"- {key}: {_setting(value)}" for key, value in settings.items() if key != "command"]
    lines += [
        "",
        "Columns: losses and accuracies after the last step on whole splits, mean ± std over "
        "seeds. A tuned optimizer's learning rate is chosen per column: by final train loss for "
        "the train loss, by final inner-valid loss for valid/test loss and accuracy (the test "
        "split is never used to choose). Steps to the reference's loss and speed-up on seed-mean "
        "training curves smoothed by a trailing moving average; a speed-up only where that loss "
        "was reached and kept to the end. (edge): the chosen rate is at an end of its grid.",
    ]
    return lines


def _setting(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.3g}" for v in value) + "]"
    return str(value)


# --- JSON.


def to_dict(report: Report, plots: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Plain JSON data; non-finite numbers become ``None`` in ``to_json``.

    Each run has ``by_criterion`` (the selection by train and by inner-valid loss, with per-seed
    metrics) and ``metrics_mean``: every metric under its own criterion (as in the table).
    """
    with np.errstate(invalid="ignore", over="ignore"):  # statistics of diverged runs
        tasks = [_task_dict(task, report.reference) for task in report.tasks]
    return {
        "subject": report.subject,
        "description": report.description,
        "settings": dict(report.settings),
        "reference": report.reference,
        "summary": {
            horizon: {label: plain(s) for label, s in by_label.items()}
            for horizon, by_label in summarize(report).items()
        },
        "summary_line": summary_line(report),
        "tasks": tasks,
        "plots": dict(plots or {}),
    }


def to_json(report: Report, plots: Mapping[str, str] | None = None) -> str:
    return json.dumps(finite_or_none(to_dict(report, plots)), indent=2, allow_nan=False)


def plain(value: Any) -> Any:
    """NamedTuples (nested) as dicts, for JSON."""
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {key: plain(item) for key, item in value._asdict().items()}
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def _curve_dict(curves: np.ndarray, window: int) -> dict[str, list]:
    smoothed = smooth(curves, window)
    steps = np.unique(
        np.linspace(0, smoothed.shape[1] - 1, min(MAX_JSON_CURVE_POINTS, smoothed.shape[1]))
        .round()
        .astype(int)
    )
    return {
        "step": steps.tolist(),
        "mean": smoothed.mean(axis=0)[steps].tolist(),
        "std": smoothed.std(axis=0)[steps].tolist(),
    }


def _selection_dict(selection: Selection, window: int) -> dict[str, Any]:
    return {
        "learning_rate": selection.learning_rate,
        "num_diverged": selection.num_diverged,
        "diverged": selection.diverged.tolist(),
        "metrics": {key: values.tolist() for key, values in selection.metrics.items()},
        "metrics_mean": {key: selection.mean(key) for key in selection.metrics},
        "metrics_std": {key: float(np.std(values)) for key, values in selection.metrics.items()},
        "curve": _curve_dict(selection.curves, window),
        "inner_valid_curve": None
        if not selection.valid_curves.size
        else {
            "step": selection.valid_steps.tolist(),
            "mean": selection.valid_curves.mean(axis=0).tolist(),
            "std": selection.valid_curves.std(axis=0).tolist(),
        },
    }


def _run_dict(task: TaskResult, label: str, reference: str) -> dict[str, Any]:
    run = task.runs[label]
    comparison = compare(task, label, reference) if label != reference else None
    speed = comparison.speedup if comparison else None
    metrics = {key for s in run.selected.values() for key in s.metrics}
    return {
        "label": run.label,
        "description": run.description,
        "tuned": run.tuned,
        "learning_rate": {c: s.learning_rate for c, s in run.selected.items()},
        "num_seeds": run.num_seeds,
        "initial_train_loss": run.initial_loss.tolist(),
        "metrics_mean": {key: run.for_metric(key).mean(key) for key in sorted(metrics)},
        "by_criterion": {
            c: _selection_dict(s, task.smoothing_window) for c, s in run.selected.items()
        },
        "vs_reference": None if comparison is None else plain(comparison._replace(speedup=None)),
        "steps_to_reference_loss": None if speed is None else speed.steps,
        "reference_loss_kept": None if speed is None else speed.kept,
        "speedup_over_reference": None if speed is None else speed.value,
        "grid": [point._asdict() for point in run.grid],
        "at_grid_edge": {c: at_grid_edge(run, c) for c in run.selected},
        "compile_seconds": run.compile_seconds,
        "run_seconds": run.run_seconds,
    }


def _task_dict(task: TaskResult, reference: str) -> dict[str, Any]:
    target = next((speedup(task, label, reference) for label in task.runs), None)
    return {
        "task": task.task,
        "num_steps": task.num_steps,
        "horizon": task.horizon,
        "smoothing_window": task.smoothing_window,
        "reference_target_loss": None if target is None else target.target_loss,
        "reference_steps_to_target": None if target is None else target.target_steps,
        "runs": {label: _run_dict(task, label, reference) for label in task.runs},
    }


def finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    return value


# --- Files.


def plot_name(task: TaskResult) -> str:
    """A file-system-safe name for a task at a horizon, e.g. ``mlp_digits_2x``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{task.task}_{horizon_label(task.horizon)}")


def write(report: Report, out_dir: str | os.PathLike, plots: bool = True) -> dict[str, str]:
    """Write ``report.json``, ``report.md`` and (with ``plots``) one PNG per task and horizon.

    Returns the paths written, by kind (``json``, ``markdown``, ``plot:<plot name>``).
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    links = {}
    if plots:
        links = {
            plot_name(task): os.path.basename(
                plot_curves(task, out_dir, report.subject, report.reference)
            )
            for task in report.tasks
        }
    paths = {
        "json": os.path.join(out_dir, "report.json"),
        "markdown": os.path.join(out_dir, "report.md"),
    }
    with open(paths["json"], "w") as file:
        file.write(to_json(report, links))
    with open(paths["markdown"], "w") as file:
        file.write(to_markdown(report, links))
    paths.update({f"plot:{key}": os.path.join(out_dir, path) for key, path in links.items()})
    return paths


def plot_curves(task: TaskResult, out_dir: str, subject: str, reference: str = REFERENCE) -> str:
    """A PNG of mean +- std (over seeds) curves; returns its path.

    Left: smoothed training loss, tuned optimizers at their learning rate chosen by training loss.
    Right (when measured): inner-valid minibatch loss, at the learning rate chosen by inner-valid
    loss. Values above twice the largest initial loss, and non-finite ones, are drawn at that
    ceiling, so diverged runs stay visible without flattening the other curves.
    """
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import

    with_valid = any(run.valid.valid_curves.size for run in task.runs.values())
    figure = Figure(figsize=(11.0 if with_valid else 6.4, 4.2), dpi=100)
    panels = figure.subplots(1, 2 if with_valid else 1, squeeze=False)[0]
    finite_initial = [
        float(np.max(run.initial_loss[np.isfinite(run.initial_loss)]))
        for run in task.runs.values()
        if np.isfinite(run.initial_loss).any()
    ]
    ceiling = 2.0 * max(finite_initial, default=1.0)
    positive = [True] * len(panels)
    for label, run in task.runs.items():
        style = "--" if label == "untrained" else "-"
        width = 2.0 if label == subject else 1.2
        curves = [
            (
                run.train,
                np.arange(run.train.curves.shape[1]),
                smooth(run.train.curves, task.smoothing_window),
            )
        ]
        if with_valid:
            curves.append((run.valid, run.valid.valid_steps, run.valid.valid_curves))
        for index, (selection, steps, values) in enumerate(curves):
            values = np.where(np.isfinite(values), np.minimum(values, ceiling), ceiling)
            mean, std = values.mean(axis=0), values.std(axis=0)
            positive[index] &= bool(np.all(mean > 0))
            lr = "" if selection.learning_rate is None else f", lr={selection.learning_rate:.2g}"
            diverged = selection.num_diverged
            diverged = f", {diverged}/{selection.num_seeds} diverged" if diverged else ""
            (line,) = panels[index].plot(
                steps, mean, style, linewidth=width, label=f"{run.description}{lr}{diverged}"
            )
            panels[index].fill_between(
                steps, mean - std, mean + std, color=line.get_color(), alpha=0.2
            )
    target = next((speedup(task, label, reference) for label in task.runs), None)
    if target is not None:
        panels[0].axhline(target.target_loss, color="gray", linewidth=0.8, linestyle=":")
    panels[0].set_ylabel(f"training loss (moving average over {task.smoothing_window} steps)")
    if with_valid:
        panels[0].set_title("lr chosen by train loss", fontsize=9)
        panels[1].set_title("lr chosen by inner-valid loss", fontsize=9)
        panels[1].set_ylabel("inner-valid loss (one minibatch)")
    for axes, log in zip(panels, positive, strict=True):
        if log:
            axes.set_yscale("log")
        axes.set_xlabel("step")
        axes.legend(fontsize=7)
    figure.suptitle(f"{task.task}, {task.num_steps} steps ({horizon_label(task.horizon)})")
    figure.tight_layout()
    path = os.path.join(out_dir, f"curves_{plot_name(task)}.png")
    figure.savefig(path)
    return path
