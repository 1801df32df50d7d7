"""A report as plain JSON data (non-finite numbers become ``null``)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from meta_train.evaluation.comparison import compare, speedup, summarize
from meta_train.evaluation.policy import smooth
from meta_train.evaluation.render_markdown import summary_line
from meta_train.evaluation.results import MAX_JSON_CURVE_POINTS, Report, Selection, TaskResult


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
        "at_grid_edge": {c: run.at_grid_edge(c) for c in run.selected},
        "compile_seconds": run.compile_seconds,
        "run_seconds": run.run_seconds,
        "compile_cpu_seconds": run.compile_cpu_seconds,
        "run_cpu_seconds": run.run_cpu_seconds,
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
