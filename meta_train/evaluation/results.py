"""Frozen results of a held-out evaluation: per-seed numbers, kept as arrays so that every
rendering shows mean +- std over seeds and the count of diverged runs (diverged runs stay in every
mean: a mean that is ``inf`` or ``nan`` says so).

``meta_train.evaluation.evaluate`` builds a ``Report``; ``comparison`` judges it; ``render_*``
render it. A baseline's learning rate is chosen per criterion (``CRITERIA``): each column of a
table compares like with like. "Tuned" only for a grid of at least ``MIN_TUNED_POINTS`` rates.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from meta_train.evaluation import policy
from meta_train.evaluation.contenders import MIN_TUNED_POINTS

if TYPE_CHECKING:
    from meta_train.evaluation.comparison import LabelSummary
    from meta_train.evaluation.contenders import Group
    from meta_train.evaluation.trainer import Outputs

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


def horizon_label(horizon: float) -> str:
    return f"{horizon:g}x"


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
    untuned optimizer). The seconds (wall, and CPU of the process) are those of the compiled
    trainer, which the optimizers of one trainer share (count them once per trainer).
    """

    label: str
    description: str
    initial_loss: np.ndarray
    selected: Mapping[str, Selection]
    grid: tuple[GridPoint, ...] = ()
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    compile_cpu_seconds: float = 0.0
    run_cpu_seconds: float = 0.0

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

    def at_grid_edge(self, criterion: str) -> bool:
        """Whether the rate chosen by ``criterion`` is at an end of the grid
        (``policy.at_grid_edge``)."""
        grid = [point.learning_rate for point in self.grid]
        return policy.at_grid_edge(grid, self.selected[criterion].learning_rate)

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

    The methods are shorthands for the functions of ``comparison`` and ``render_*``.
    """

    subject: str
    description: str
    settings: Mapping[str, Any]
    tasks: tuple[TaskResult, ...]
    reference: str = REFERENCE  # the contender every comparison is against

    @property
    def horizons(self) -> list[float]:
        return sorted({task.horizon for task in self.tasks})

    # Shorthands for the free functions of the modules that judge and render a report (imported
    # here: they import this module).

    def summary(self) -> dict[str, dict[str, LabelSummary]]:
        from meta_train.evaluation.comparison import summarize

        return summarize(self)

    def summary_line(self) -> str:
        from meta_train.evaluation.render_markdown import summary_line

        return summary_line(self)

    def format_table(self, horizon: float) -> str:
        from meta_train.evaluation.render_markdown import format_table

        return format_table(self, horizon)

    def format_console(self) -> str:
        from meta_train.evaluation.render_markdown import format_console

        return format_console(self)

    def to_dict(self) -> dict[str, Any]:
        from meta_train.evaluation.render_json import to_dict

        return to_dict(self)

    def to_json(self) -> str:
        from meta_train.evaluation.render_json import to_json

        return to_json(self)

    def save(self, out_dir: str | os.PathLike, plots: bool = True) -> dict[str, str]:
        from meta_train.evaluation.report import write

        return write(self, out_dir, plots=plots)


def member_results(
    group: Group,
    outputs: Outputs,
    initial_loss: np.ndarray,
    divergence_factor: float,
    valid_steps: np.ndarray,
) -> list[RunResult]:
    """One ``RunResult`` per member of ``group`` from the trainer's ``outputs``: its grid rows
    summarised, its selected row per criterion;
    ``valid_steps``: when the inner-valid curve was measured."""
    diverged = policy.diverged_runs(
        outputs.losses, initial_loss[None], outputs.metrics["train_loss"], divergence_factor
    )
    member_of_row = group.rows()[:, 0].astype(int)

    def selection(row: int, learning_rate: float | None) -> Selection:
        metrics = {key: values[row] for key, values in outputs.metrics.items()}
        valid = (valid_steps, outputs.valid_losses[row])
        return Selection(learning_rate, outputs.losses[row], metrics, diverged[row], *valid)

    results = []
    for index, member in enumerate(group.members):
        rows = np.flatnonzero(member_of_row == index)
        if member.grid:
            chosen = {
                criterion: rows[
                    policy.select_grid_point(outputs.metrics[metric][rows], diverged[rows])
                ]
                for criterion, metric in CRITERIA.items()
            }
            by_row = {
                row: selection(row, member.grid[row - rows[0]]) for row in set(chosen.values())
            }
            selected = {criterion: by_row[row] for criterion, row in chosen.items()}
        else:
            only = selection(rows[0], member.learning_rate)
            selected = dict.fromkeys(CRITERIA, only)
        grid = tuple(
            GridPoint(
                learning_rate=lr,
                valid_loss=float(np.mean(outputs.metrics["inner_valid_loss"][row])),
                train_loss=float(np.mean(outputs.metrics["train_loss"][row])),
                num_diverged=int(diverged[row].sum()),
            )
            for row, lr in zip(rows, member.grid or (), strict=bool(member.grid))
        )
        results.append(
            RunResult(
                label=member.label,
                description=member.description,
                initial_loss=initial_loss,
                selected=selected,
                grid=grid,
                compile_seconds=outputs.compile_seconds,
                run_seconds=outputs.run_seconds,
                compile_cpu_seconds=outputs.compile_cpu_seconds,
                run_cpu_seconds=outputs.run_cpu_seconds,
            )
        )
    return results
