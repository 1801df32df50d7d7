"""Held-out evaluation reports: the numbers, Markdown and JSON renderings, and loss-curve PNGs.

``meta_train.evaluate`` fills a ``Report``; this module only formats it. Per-seed numbers are kept
as arrays so that every rendering shows mean +- std over seeds and the count of diverged runs
(diverged runs stay in every mean: a mean that is ``inf`` or ``nan`` says so).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

# Metric keys are ``<split>_<metric>``; these are the columns the tables show, in order.
TABLE_METRICS = (
    ("train_loss", "train loss"),
    ("inner_valid_loss", "valid loss"),
    ("inner_valid_accuracy", "valid acc"),
    ("test_loss", "test loss"),
    ("test_accuracy", "test acc"),
)
MAX_JSON_CURVE_POINTS = 200


class GridPoint(NamedTuple):
    """One learning rate of a tuned baseline, summarised over seeds."""

    learning_rate: float
    valid_loss: float  # mean final inner-valid loss over seeds (the selection criterion)
    train_loss: float  # mean final training loss over seeds
    num_diverged: int


@dataclasses.dataclass
class RunResult:
    """One optimizer on one task at one horizon (the selected grid point for tuned baselines).

    ``curves`` is ``[seeds, steps]``: the minibatch training loss at each step, before that step's
    update. ``metrics`` maps ``<split>_<metric>`` (e.g. ``train_loss``, ``test_accuracy``) to
    ``[seeds]`` values measured on the whole split after the last step. The seconds are those of
    the compiled trainer, which tuned baselines share (count them once per trainer).
    """

    label: str
    description: str
    curves: np.ndarray
    initial_loss: np.ndarray
    metrics: dict[str, np.ndarray]
    diverged: np.ndarray
    learning_rate: float | None = None
    grid: tuple[GridPoint, ...] = ()
    steps_to_target: int | None = None
    speedup: float | None = None
    compile_seconds: float = 0.0
    run_seconds: float = 0.0

    @property
    def num_seeds(self) -> int:
        return int(self.curves.shape[0])

    @property
    def num_diverged(self) -> int:
        return int(np.sum(self.diverged))


@dataclasses.dataclass
class TaskResult:
    """Every optimizer on one task at one horizon; ``runs`` is ordered, evaluated optimizer first.

    ``target_loss`` is tuned Adam's smoothed final training loss and ``target_steps`` the steps
    tuned Adam needs to reach it; speed-ups are ``target_steps / steps_to_target``.
    """

    task: str
    num_steps: int
    horizon: float
    runs: dict[str, RunResult]
    smoothing_window: int
    target_loss: float | None = None
    target_steps: int | None = None


@dataclasses.dataclass
class Report:
    """A held-out evaluation: ``subject`` is the label of the evaluated optimizer's runs."""

    subject: str
    description: str
    settings: dict[str, Any]
    tasks: list[TaskResult]
    plots: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def horizons(self) -> list[float]:
        return sorted({task.horizon for task in self.tasks})

    def summary(self) -> dict[str, dict[str, int]]:
        """Per horizon (``"1x"``, ...): tasks where the subject beats tuned Adam, and diverged runs.

        "Beats on loss" compares mean final training loss over seeds (a diverged seed makes the mean
        non-finite, which never beats); "faster" means a speed-up over tuned Adam above 1.
        """
        summary = {}
        for horizon in self.horizons:
            results = [task for task in self.tasks if task.horizon == horizon]
            compared = [task for task in results if "adam" in task.runs]
            beats_loss = sum(
                _beats(task.runs[self.subject], task.runs["adam"]) for task in compared
            )
            faster = sum((task.runs[self.subject].speedup or 0.0) > 1.0 + 1e-9 for task in compared)
            subject_runs = [task.runs[self.subject] for task in results]
            summary[horizon_label(horizon)] = {
                "num_tasks": len(results),
                "compared_with_adam": len(compared),
                "beats_adam_final_train_loss": int(beats_loss),
                "speedup_over_adam_above_1": int(faster),
                "diverged_runs": sum(run.num_diverged for run in subject_runs),
                "total_runs": sum(run.num_seeds for run in subject_runs),
            }
        return summary

    def summary_line(self) -> str:
        """One line: on how many tasks the evaluated optimizer beats tuned Adam, per horizon."""
        parts = []
        for label, counts in self.summary().items():
            if self.subject == "adam" or not counts["compared_with_adam"]:
                parts.append(
                    f"{label}: {counts['num_tasks']} tasks, "
                    f"{counts['diverged_runs']}/{counts['total_runs']} runs diverged"
                )
                continue
            n = counts["compared_with_adam"]
            parts.append(
                f"{label}: beats tuned Adam on final training loss on "
                f"{counts['beats_adam_final_train_loss']}/{n} tasks, speed-up > 1 on "
                f"{counts['speedup_over_adam_above_1']}/{n}, "
                f"{counts['diverged_runs']}/{counts['total_runs']} runs diverged"
            )
        return f"{self.description}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; non-finite numbers become ``null`` (divergence is its own field)."""
        with np.errstate(invalid="ignore", over="ignore"):  # statistics of diverged runs
            tasks = [_task_dict(task) for task in self.tasks]
        return {
            "subject": self.subject,
            "description": self.description,
            "settings": self.settings,
            "summary": self.summary(),
            "summary_line": self.summary_line(),
            "tasks": tasks,
            "plots": self.plots,
        }

    def to_json(self) -> str:
        return json.dumps(_finite_or_none(self.to_dict()), indent=2, allow_nan=False)

    def format_table(self, horizon: float) -> str:
        """A Markdown table of every task and optimizer at one horizon (also the console table)."""
        header = [
            "task",
            "steps",
            "optimizer",
            "lr",
            *(name for _, name in TABLE_METRICS),
            "diverged",
            "steps to Adam loss",
            "speed-up",
        ]
        rows = []
        for task in (task for task in self.tasks if task.horizon == horizon):
            for run in task.runs.values():
                rows.append(
                    [
                        task.task,
                        str(task.num_steps),
                        run.label,
                        "-" if run.learning_rate is None else f"{run.learning_rate:.3g}",
                        *(_mean_std(run.metrics.get(key)) for key, _ in TABLE_METRICS),
                        f"{run.num_diverged}/{run.num_seeds}",
                        _steps_to_target(run, task),
                        "-" if run.speedup is None else f"{run.speedup:.2f}x",
                    ]
                )
        return _markdown_table(header, rows)

    def to_markdown(self) -> str:
        lines = [f"# Held-out evaluation: {self.description}", "", f"**{self.summary_line()}**", ""]
        lines += _settings_lines(self.settings)
        for horizon in self.horizons:
            lines += ["", f"## Horizon {horizon_label(horizon)}", "", self.format_table(horizon)]
            for task in (task for task in self.tasks if task.horizon == horizon):
                key = plot_name(task)
                if key in self.plots:
                    lines += ["", f"![{task.task} at {horizon_label(horizon)}]({self.plots[key]})"]
        lines += ["", "## Learning-rate grids (mean final inner-valid loss, diverged seeds)", ""]
        for task in self.tasks:
            for run in task.runs.values():
                if run.grid:
                    points = ", ".join(
                        f"{'**' if p.learning_rate == run.learning_rate else ''}"
                        f"{p.learning_rate:.3g}: {_number(p.valid_loss)}"
                        f"{f' ({p.num_diverged} div)' if p.num_diverged else ''}"
                        f"{'**' if p.learning_rate == run.learning_rate else ''}"
                        for p in run.grid
                    )
                    lines.append(
                        f"- {task.task} {horizon_label(task.horizon)} {run.label}: {points}"
                    )
        return "\n".join(lines) + "\n"

    def format_console(self) -> str:
        blocks = [f"Horizon {horizon_label(h)}\n{self.format_table(h)}" for h in self.horizons]
        return "\n\n".join([*blocks, self.summary_line()])

    def save(self, out_dir: str | os.PathLike, plots: bool = True) -> dict[str, str]:
        """Write ``report.json``, ``report.md`` and (with ``plots``) one PNG per task and horizon.

        Returns the paths written, by kind.
        """
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        if plots:
            self.plots = {
                plot_name(task): os.path.basename(plot_curves(task, out_dir, self.subject))
                for task in self.tasks
            }
        paths = {
            "json": os.path.join(out_dir, "report.json"),
            "markdown": os.path.join(out_dir, "report.md"),
        }
        with open(paths["json"], "w") as file:
            file.write(self.to_json())
        with open(paths["markdown"], "w") as file:
            file.write(self.to_markdown())
        paths.update({f"plot:{key}": os.path.join(out_dir, p) for key, p in self.plots.items()})
        return paths


def horizon_label(horizon: float) -> str:
    return f"{horizon:g}x"


def plot_name(task: TaskResult) -> str:
    """A file-system-safe name for a task at a horizon, e.g. ``mlp_digits_2x``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{task.task}_{horizon_label(task.horizon)}")


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


def plot_curves(task: TaskResult, out_dir: str, subject: str) -> str:
    """A PNG of mean +- std (over seeds) smoothed training-loss curves; returns its path.

    Values above twice the largest initial loss, and non-finite ones, are drawn at that ceiling, so
    diverged runs stay visible without flattening the other curves.
    """
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import

    figure = Figure(figsize=(6.4, 4.2), dpi=100)
    axes = figure.subplots()
    finite_initial = [
        float(np.max(run.initial_loss[np.isfinite(run.initial_loss)]))
        for run in task.runs.values()
        if np.isfinite(run.initial_loss).any()
    ]
    ceiling = 2.0 * max(finite_initial, default=1.0)
    positive = True
    for label, run in task.runs.items():
        curves = smooth(run.curves, task.smoothing_window)
        curves = np.where(np.isfinite(curves), np.minimum(curves, ceiling), ceiling)
        mean, std = curves.mean(axis=0), curves.std(axis=0)
        positive &= bool(np.all(mean > 0))
        steps = np.arange(curves.shape[1])
        lr = "" if run.learning_rate is None else f", lr={run.learning_rate:.2g}"
        diverged = f", {run.num_diverged}/{run.num_seeds} diverged" if run.num_diverged else ""
        style = "--" if label == "untrained" else "-"
        width = 2.0 if label == subject else 1.2
        (line,) = axes.plot(
            steps, mean, style, linewidth=width, label=f"{run.description}{lr}{diverged}"
        )
        axes.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    if task.target_loss is not None and math.isfinite(task.target_loss):
        axes.axhline(task.target_loss, color="gray", linewidth=0.8, linestyle=":")
    if positive:
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel(f"training loss (moving average over {task.smoothing_window} steps)")
    axes.set_title(f"{task.task}, {task.num_steps} steps ({horizon_label(task.horizon)})")
    axes.legend(fontsize=7)
    figure.tight_layout()
    path = os.path.join(out_dir, f"curves_{plot_name(task)}.png")
    figure.savefig(path)
    return path


def _beats(run: RunResult, adam: RunResult) -> bool:
    ours, theirs = np.mean(run.metrics["train_loss"]), np.mean(adam.metrics["train_loss"])
    return bool(
        np.isfinite(ours) and run.num_diverged == 0 and (ours < theirs or not np.isfinite(theirs))
    )


def _steps_to_target(run: RunResult, task: TaskResult) -> str:
    if task.target_loss is None:
        return "-"
    return "not reached" if run.steps_to_target is None else str(run.steps_to_target)


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _mean_std(values: np.ndarray | None) -> str:
    if values is None:
        return "-"
    values = np.asarray(values, np.float64)
    mean = float(np.mean(values))
    if not math.isfinite(mean):
        return _number(mean)
    return f"{mean:.4g} ± {float(np.std(values)):.2g}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
        for row in [header, ["-" * width for width in widths], *rows]
    ]
    return "\n".join(lines)


def _settings_lines(settings: dict[str, Any]) -> list[str]:
    lines = []
    if "command" in settings:
        lines += ["Command:", "", "```", settings["command"], "```", ""]
    lines += [f"- {key}: {_setting(value)}" for key, value in settings.items() if key != "command"]
    lines += [
        "",
        "Columns: losses and accuracies after the last step on whole splits, mean ± std over "
        "seeds; valid = the inner-valid split (what the learning rates are chosen on), test = the "
        "test split (never used to choose); steps to Adam loss and speed-up on seed-mean training "
        "curves smoothed by a trailing moving average.",
    ]
    return lines


def _setting(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.3g}" for v in value) + "]"
    return str(value)


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


def _run_dict(run: RunResult, window: int) -> dict[str, Any]:
    return {
        "label": run.label,
        "description": run.description,
        "learning_rate": run.learning_rate,
        "num_seeds": run.num_seeds,
        "num_diverged": run.num_diverged,
        "diverged": run.diverged.tolist(),
        "initial_train_loss": run.initial_loss.tolist(),
        "metrics": {key: values.tolist() for key, values in run.metrics.items()},
        "metrics_mean": {key: float(np.mean(values)) for key, values in run.metrics.items()},
        "metrics_std": {key: float(np.std(values)) for key, values in run.metrics.items()},
        "steps_to_adam_loss": run.steps_to_target,
        "speedup_over_adam": run.speedup,
        "grid": [point._asdict() for point in run.grid],
        "curve": _curve_dict(run.curves, window),
        "compile_seconds": run.compile_seconds,
        "run_seconds": run.run_seconds,
    }


def _task_dict(task: TaskResult) -> dict[str, Any]:
    return {
        "task": task.task,
        "num_steps": task.num_steps,
        "horizon": task.horizon,
        "smoothing_window": task.smoothing_window,
        "adam_target_loss": task.target_loss,
        "adam_steps_to_target": task.target_steps,
        "runs": {label: _run_dict(run, task.smoothing_window) for label, run in task.runs.items()},
    }


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(item) for item in value]
    return value
