"""A report's curves as PNG figures (matplotlib, imported lazily: it is slow to import)."""

from __future__ import annotations

import os
import re

import numpy as np

from meta_train.evaluation.comparison import speedup
from meta_train.evaluation.policy import smooth
from meta_train.evaluation.results import REFERENCE, TaskResult, horizon_label


def plot_name(task: TaskResult) -> str:
    """A file-system-safe name for a task at a horizon, e.g. ``mlp_digits_2x``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{task.task}_{horizon_label(task.horizon)}")


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
