"""A report as Markdown and console text: the headline line, per-horizon tables, the grids."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from meta_train.evaluation import aggregate, policy
from meta_train.evaluation.comparison import Comparison, compare, summarize
from meta_train.evaluation.contenders import format_learning_rate
from meta_train.evaluation.render_plots import plot_name
from meta_train.evaluation.results import (
    COLUMNS,
    HEADLINE_METRICS,
    GridPoint,
    Report,
    RunResult,
    TaskResult,
    criterion_of,
    horizon_label,
)


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
